"""A held bundle's reason that quotes its header's schema names (bundle.schema_mismatch): a header signed
with a community's key may spell a domain, a schema version or a fingerprint with a JSON escape of a lone
surrogate. `syncdb merge` escapes the reason it prints (bundle.utf8); `syncdb status` and `bundles list`
work the reason out again from the inbox file, and must print it too."""

import json

import pytest

from conftest import CODES
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
