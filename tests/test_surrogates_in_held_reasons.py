"""A held bundle's reason that quotes its header's schema names (bundle.schema_mismatch): a header signed
with a community's key may spell a domain, a schema version or a fingerprint with a JSON escape of a lone
surrogate. `syncdb merge` escapes the reason it prints (bundle.utf8); `syncdb status` and `bundles list`
work the reason out again from the inbox file, and must print it too."""

import json
import os
import subprocess

import pytest

from conftest import CODES, SYNCDB
from mutants import compress, lines_of, signed_bundle
from syncdb import community as community_lib
from syncdb.crypto import Keyring, PublicKey
from test_unkeepable_values import MARK, _person, street  # noqa: F401
from test_unkeepable_values_second_read import _syncdb


def _poisoned(where: str):
    def poison(header):
        if where == "domain":
            header["counts"] = {f"huji{MARK}.persons": ops for ops in header["counts"].values()}
            header["schemas"] = {f"huji{MARK}": header["schemas"]["huji"]}
        elif where == "version":  # quoted when the fingerprints differ
            header["schemas"]["huji"] = {"version": MARK, "fingerprint": "0"}
        else:
            header["schemas"]["huji"][where] = MARK
        return json.dumps(header, sort_keys=True, separators=(",", ":")).replace(MARK, "\\ud800").encode()
    return poison


@pytest.mark.parametrize("where", ["fingerprint", "version", "domain"])
def test_status_and_bundles_list_print_a_schema_mismatch_quoting_a_lone_surrogate(street, where):  # noqa: F811
    a = CODES[0]
    changes = [_person(1, a)]
    ring = Keyring.load(community_lib.state_dir(street.folders[a]) / "keyring.json", street.secret)
    schemas = {"huji": {"version": street.all_domains["huji"].version,
                        "fingerprint": street.all_domains["huji"].fingerprint}}
    path = street.root / "held.bundle"
    path.write_bytes(signed_bundle(a, 1, changes, ring, PublicKey.read(street.store / "office.pub.json"), schemas,
                                   _poisoned(where), stream=compress(lines_of(changes))))
    merged = _syncdb(street, "merge", str(street.store), str(path))
    assert merged.returncode == 1 and b"\\xed\\xa0\\x80" in merged.stdout, (merged.stdout, merged.stderr)
    for command in (["status"], ["bundles", "list"]):
        shown = _syncdb(street, *command, str(street.store))
        assert b"Traceback" not in shown.stderr, (command, shown.stderr.decode("utf-8", "replace"))
        assert b"\\xed\\xa0\\x80" in shown.stdout + shown.stderr, (command, shown.stdout, shown.stderr)


def test_a_skip_by_a_name_typed_in_another_encoding_is_refused_and_changes_nothing(street):  # noqa: F811
    a = CODES[0]
    changes = [_person(1, a)]
    ring = Keyring.load(community_lib.state_dir(street.folders[a]) / "keyring.json", street.secret)
    path = street.root / "held.bundle"
    path.write_bytes(signed_bundle(a, 1, changes, ring, PublicKey.read(street.store / "office.pub.json"),
                                   {"huji": {"version": 1, "fingerprint": "0"}}, stream=compress(lines_of(changes))))
    assert _syncdb(street, "merge", str(street.store), str(path)).returncode == 1  # held: another schema
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCDB_PASSPHRASE", "SYNCDB_SCHEMAS", "SYNCDB_LANG")}
    env.update(SYNCDB_KEY_FILE=str(street.root / "office.key"), LC_ALL="C.UTF-8", LANGUAGE="en")
    done = subprocess.run([os.fsencode(SYNCDB), b"bundles", b"skip", os.fsencode(street.store), a.encode(), b"1",
                           b"--reason", b"damaged", b"--by", "王芳".encode("gbk")], env=env, capture_output=True,
                          timeout=120)
    assert b"Traceback" not in done.stderr, done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2 and b"set the terminal to UTF-8" in done.stderr, (done.stdout, done.stderr)
    listed = _syncdb(street, "bundles", "list", str(street.store))
    assert b"held" in listed.stdout and b"skipped" not in listed.stdout, listed.stdout


@pytest.mark.skipif(os.name == "nt", reason="Windows names files in UTF-16: no name there is undecodable")
def test_a_damaged_bundle_in_a_folder_named_in_another_encoding_is_refused_and_the_rest_merged(street):  # noqa: F811
    from test_unkeepable_values import _bundle
    a = CODES[0]
    good = os.fsencode(_bundle(street, a, 1, [_person(1, a)]))
    folder = os.path.join(os.fsencode(street.root), "社区一".encode("gbk"))
    os.mkdir(folder)
    os.rename(good, os.path.join(folder, os.path.basename(good)))
    with open(os.path.join(folder, b"damaged.bundle"), "wb") as f:
        f.write(b"not a bundle" * 8)
    (street.root / "office.key").write_bytes(b"k" * 32)
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCDB_PASSPHRASE", "SYNCDB_SCHEMAS", "PYTHONIOENCODING")}
    env.update(SYNCDB_KEY_FILE=str(street.root / "office.key"), LC_ALL="C.UTF-8", SYNCDB_LANG="en")
    merged = subprocess.run([os.fsencode(SYNCDB), b"merge", os.fsencode(street.store), folder], env=env,
                            capture_output=True, timeout=120)
    assert b"Traceback" not in merged.stderr, merged.stderr.decode("utf-8", "replace")
    assert merged.returncode == 1 and b"refused damaged.bundle" in merged.stdout, (merged.stdout, merged.stderr)
    assert b"1 applied" in merged.stdout, merged.stdout
    assert len(list((street.store / "quarantine").glob("*.reason.json"))) == 1


@pytest.mark.parametrize("args", [
    [b"bundles", b"skip", b"STORE", b"441900003001", b"1", b"--reason", "损坏".encode("gbk")],
    [b"checks", b"dismiss", b"STORE", b"1", b"--reason", b"ok", b"--by", "王芳".encode("gbk")],
    [b"checks", b"confirm", b"STORE", b"1", b"--reason", "核实".encode("gbk")],
    [b"conflicts", b"resolve", b"STORE", b"1", b"--value", "张三".encode("gbk")],
    [b"office", b"enroll", b"STORE", b"441900003009", b"PUBKEY", b"--name", "岗贝社区".encode("gbk")],
    [b"users", b"add", b"STORE", "王芳".encode("gbk"), b"--password", b"long enough"],
    [b"users", b"add", b"STORE", b"wangfang", b"--password", "密码很长很长".encode("gbk")],
], ids=["skip-reason", "dismiss-by", "confirm-reason", "resolve-value", "enroll-name", "user-name", "password"])
def test_text_typed_in_another_encoding_is_a_usage_error_that_says_what_to_do(street, args):  # noqa: F811
    """A name, reason or value typed on a GBK terminal where the locale is UTF-8 reaches Python as lone
    surrogates: each command refuses it as it reads its options (cli._typed), before it writes anything."""
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCDB_PASSPHRASE", "SYNCDB_SCHEMAS", "SYNCDB_LANG")}
    env.update(SYNCDB_KEY_FILE=str(street.root / "office.key"), LC_ALL="C.UTF-8", LANGUAGE="en")
    pubkey = street.store / "office.pub.json"
    args = [os.fsencode(street.store) if a == b"STORE" else os.fsencode(pubkey) if a == b"PUBKEY" else a
            for a in args]
    before = sorted(p.name for p in street.store.iterdir())
    done = subprocess.run([os.fsencode(SYNCDB), *args], env=env, capture_output=True, timeout=120)
    assert b"Traceback" not in done.stderr, done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2 and b"set the terminal to UTF-8" in done.stderr, (done.stdout, done.stderr)
    assert sorted(p.name for p in street.store.iterdir()) == before
