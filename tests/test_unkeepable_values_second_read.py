"""Second read of the unkeepable values (prepare.unkeepable): the other ways a lone surrogate or a
whole number past 64 bits, sent by a community's key, reaches SQLite, a printed line or the site.

Each case is a bundle signed with the community's own key, merged for real; the bundle must apply
with the bad record rejected alone, and every line the merge prints must be text a console writes.
"""

import json
import os
import sqlite3
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CODES, SECRET, SYNCDB, World, id_number, person
from mutants import compress, lines_of, signed_bundle
from syncdb import community as community_lib
from syncdb import conflicts, limits, prepare, projection, resolve
from syncdb.errors import SyncdbError
from syncdb.crypto import Keyring, PublicKey
from syncdb.projection import Published
from syncdb.store import open_store
from test_unkeepable_values import MARK, _assistance, _bundle, _merged, _person, _stamp, _stored, street  # noqa: F401


def _applied_alone(street, changes, escapes, jobs=1, rejected=1):
    a = CODES[0]
    summary = _merged(street, [_bundle(street, a, 1, [_person(1, a)] + changes, escapes)], jobs)
    assert (summary.applied, summary.held) == (1, []), summary.lines()
    assert (summary.changes, len(summary.rejected)) == (1, rejected), summary.lines()
    for (why,) in _stored(street, "SELECT why FROM rejected"):
        why.encode("utf-8")
    return summary


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_community_code_with_a_lone_surrogate_rejects_its_record_alone(street, jobs):
    """prepare.refusal quotes the community code it refuses, before unkeepable looks at the values."""
    a = CODES[0]
    _applied_alone(street, [_person(2, a, community_code=MARK)], {1: "\\ud800"}, jobs)


def test_a_column_name_with_a_lone_surrogate_rejects_its_record_alone(street):
    """unkeepable names the field by its name, which may itself hold the surrogate."""
    a = CODES[0]
    _applied_alone(street, [_person(2, a) | {"cells": _person(2, a)["cells"] | {MARK: MARK}}],
                   {1: "\\udc00"})


def test_a_key_named_with_a_lone_surrogate_rejects_its_record_alone(street):
    """prepare.refusal quotes the names of a key that is not the table's."""
    a = CODES[0]
    change = _person(2, a)
    change["key"] = {"id_number": id_number(2), MARK: "1"}
    _applied_alone(street, [change], {1: "\\ud800"})


@pytest.mark.parametrize("column", ["name", "address"])
def test_a_whole_number_past_64_bits_in_a_sensitive_text_column_can_be_published(street, column):
    """The docs: 'a sensitive column keeps any number, sealed as JSON'. The site decrypts it into
    SQLite databases of its own, which take no such number."""
    a = CODES[0]
    summary = _merged(street, [_bundle(street, a, 1, [_person(1, a), _person(2, a, **{column: 2 ** 70})])], 1)
    assert (summary.applied, summary.held) == (1, []), summary.lines()
    masked, plain = [sqlite3.connect(":memory:", isolation_level=None) for _ in range(2)]
    with open_store(street.store, street.secret, street.all_domains) as store:
        Published(masked, plain).update(store)
    assert [str(2 ** 70)] in [[v for v in row if v == str(2 ** 70)] for row in plain.execute("SELECT * FROM 户籍_人员")]


def _rewrite(street, path, code, sequence, changes, old, new, poison=None, more: dict | None = None):
    """``path`` made again with ``old`` written as ``new`` in its payload's lines (not its header), and
    each key of ``more`` as its value."""
    lines = []
    for change in changes:
        line = json.dumps(change, ensure_ascii=False, separators=(",", ":")).replace(old, new)
        for was, now in (more or {}).items():
            line = line.replace(was, now)
        lines.append(line.encode() + b"\n")
    ring = Keyring.load(community_lib.state_dir(street.folders[code]) / "keyring.json", street.secret)
    schemas = {d: {"version": street.all_domains[d].version, "fingerprint": street.all_domains[d].fingerprint}
               for d in sorted({c["table"].split(".")[0] for c in changes})}
    path.write_bytes(signed_bundle(code, sequence, changes, ring, PublicKey.read(street.store / "office.pub.json"),
                                   schemas, poison, stream=compress(lines_of(lines))))


def _counted_as_rekeys(n: int, table: str):
    """The header's counts with ``n`` of ``table``'s updates counted as the rekeys they are."""
    def poison(header):
        ops = header["counts"][table]
        ops["update"] -= n
        ops["rekey"] = n
        return header
    return poison


def _syncdb(street, *args, lang: str | None = "en") -> subprocess.CompletedProcess:
    key_file = street.root / "office.key"
    key_file.write_bytes(b"k" * 32)  # conftest.SECRET's key file
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCDB_PASSPHRASE", "SYNCDB_SCHEMAS")}
    env.update(SYNCDB_KEY_FILE=str(key_file), PYTHONIOENCODING="utf-8")
    env.pop("SYNCDB_LANG", None)
    if lang:
        env["SYNCDB_LANG"] = lang
    return subprocess.run([SYNCDB, *args], env=env, capture_output=True, timeout=120)


def _held_bundle(street, where: str):
    """A bundle whose second change line spells its op, or its table, with a lone surrogate: no change
    (bundle.parse_line), or one more change of a table than the header counts. Either way it is held,
    and the reason quotes the value (bundle._shown)."""
    a = CODES[0]
    changes = [_person(1, a), _person(2, a) | {where: MARK if where == "op" else f"huji.{MARK}"}]
    path = _bundle(street, a, 1, changes)
    # The payload holds the escape where the header's counts name what it stands for.
    _rewrite(street, path, a, 1, changes, MARK, "\\ud800")
    return path


@pytest.mark.parametrize("where", ["op", "table"])
def test_merge_prints_a_held_bundle_whose_reason_quotes_a_lone_surrogate(street, where):
    """The merge committed the other communities' bundles, then failed printing its summary
    (UnicodeEncodeError at click.echo), and did so at every merge while the bundle was held."""
    merged = _syncdb(street, "merge", str(street.store), str(_held_bundle(street, where)))
    assert b"Traceback" not in merged.stderr, merged.stderr.decode("utf-8", "replace")
    assert merged.returncode == 1, (merged.stdout, merged.stderr)
    assert b"\\xed\\xa0\\x80" in merged.stdout, merged.stdout.decode()


@pytest.mark.parametrize("where", ["op", "table"])
def test_status_prints_a_held_bundle_whose_reason_quotes_a_lone_surrogate(street, where):
    path = _held_bundle(street, where)
    _syncdb(street, "merge", str(street.store), str(path))
    status = _syncdb(street, "status", str(street.store))
    assert b"Traceback" not in status.stderr, status.stderr.decode("utf-8", "replace")
    assert status.returncode == 1, (status.stdout, status.stderr)
    assert b"\\xed\\xa0\\x80" in status.stdout, status.stdout.decode()  # the reason, its surrogate escaped
    listed = _syncdb(street, "bundles", "list", str(street.store))
    assert b"Traceback" not in listed.stderr, listed.stderr.decode("utf-8", "replace")
    assert b"\\xed\\xa0\\x80" in listed.stdout, listed.stdout.decode()


def test_a_resolution_typed_in_another_encoding_is_refused_and_changes_nothing(world, tmp_path):
    """`conflicts resolve --value` typed on a GBK terminal while the office's locale is UTF-8: Python
    reads the argument's bytes as lone surrogates (surrogateescape). The office's own change then
    holds text no store keeps."""
    w = world
    a = CODES[0]
    w.register(a, person(7, a))
    assert w.both_rename(a, 7, "办公室7", "社区7").opened == 1
    key_file = tmp_path / "key"
    key_file.write_bytes(b"k" * 32)
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCDB_PASSPHRASE", "SYNCDB_SCHEMAS")}
    env.update(SYNCDB_KEY_FILE=str(key_file), SYNCDB_LANG="en", LC_ALL="C.UTF-8")
    inbox = sorted((w.store / "inbox").iterdir())
    done = subprocess.run([os.fsencode(SYNCDB), b"conflicts", b"resolve", os.fsencode(w.store), b"1", b"--value",
                           "张三".encode("gbk")], env=env, capture_output=True, timeout=120)
    assert b"Traceback" not in done.stderr, done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, (done.stdout, done.stderr)  # a usage error: the option as typed (cli._typed)
    assert b"set the terminal to UTF-8" in done.stderr, done.stderr.decode("utf-8", "replace")
    assert sorted((w.store / "inbox").iterdir()) == inbox
    # The same value typed at `conflicts review`'s prompt reaches resolve itself, which refuses it alike.
    typed = "张三".encode("gbk").decode("utf-8", "surrogateescape")
    with pytest.raises(SyncdbError, match="set the terminal to UTF-8"):
        resolve.resolve_conflict(w.store, SECRET, w.all_domains, 1, value=typed)
    assert sorted((w.store / "inbox").iterdir()) == inbox
    with open_store(w.store, SECRET, w.all_domains) as store:
        assert conflicts.get(store, 1)["status"] == "open"


@pytest.mark.parametrize("new", [MARK, 2 ** 70, -(2 ** 63) - 1])
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_rekey_to_an_unkeepable_key_rejects_its_record_alone_and_keeps_the_old_one(street, new, jobs):
    a = CODES[0]
    first = _merged(street, [_bundle(street, a, 1, [_assistance(1, a, "00300100001", 2)])], jobs)
    assert (first.applied, first.changes) == (1, 1), first.lines()
    rekey = {"table": "minzheng.assistance", "op": "rekey",
             "key": {"household_no": "00300100001", "assistance_type": "1"},
             "new_key": {"household_no": new, "assistance_type": "1"},
             "cells": {}, "base": {"members": _stamp(1, a)}, "hlc": _stamp(2, a)}
    changes = [rekey, _assistance(3, a, "00300100003", 2)]
    path = _bundle(street, a, 2, changes)
    _rewrite(street, path, a, 2, changes, f'"{MARK}"', '"\\udfff"', _counted_as_rekeys(1, "minzheng.assistance"))
    summary = _merged(street, [path], jobs)
    assert (summary.applied, summary.held, summary.changes, len(summary.rejected)) == (1, [], 1, 1), \
        summary.lines()
    assert sorted(_stored(street, "SELECT household_no FROM minzheng__assistance WHERE _exists = 1")) == [
        ("00300100001",), ("00300100003",)]


def test_worker_processes_reject_the_same_records_as_one_process(tmp_path, domains):
    """test_unkeepable_values runs its bundles with jobs=2, but a bundle under merge._Pool.SMALL
    (1,000) changes is prepared in the merging process: no worker ever saw those values. Here the
    bundle is large enough for the workers (prepare.Workers), and one unkeepable value of each kind
    sits in a chunk a worker prepares."""
    a = CODES[0]
    outcomes = []
    for jobs in (1, 2):
        world = World(tmp_path / str(jobs), domains, codes=CODES[:1], community_domains=("huji", "minzheng"))
        changes = [_assistance(n, a, f"0030010{n:04d}", 2) | {"hlc": f"00500000000{n:04d}.000000.{a}"}
                   for n in range(1, 1201)]
        changes[700]["cells"]["members"] = 2 ** 64
        changes[900]["key"]["household_no"] = MARK
        changes[1100]["cells"]["status"] = MARK
        summary = _merged(world, [_bundle(world, a, 1, changes, {900: "\\ud800", 1100: "x\\udc80"})], jobs)
        assert (summary.applied, summary.changes, len(summary.rejected)) == (1, 1197, 3), summary.lines()
        outcomes.append((summary.rejected, _stored(world, "SELECT household_no, members FROM minzheng__assistance "
                                                          "ORDER BY household_no"),
                         _stored(world, "SELECT shown_key, field FROM rejected ORDER BY id")))
    assert outcomes[0] == outcomes[1]


KEYS = [["110105198001010219"], ["居民😀/1"], ["a\"b\\\\c\u2028"], [2 ** 63 - 1], [-(2 ** 63)], [2 ** 70], [1.5], [1e300],
        [-0.0], [None], [True], ["00300100001", 7], ["x", 0.1]]


def test_blind_keys_of_ordinary_keys_are_the_json_of_the_first_release(street):
    """A blind key may never change (store._key_text): every ordinary key still gives HMAC of the
    compact, not ASCII-escaped JSON the standard encoder writes, whichever encoder now writes it. A key
    with a lone surrogate gives bytes no UTF-8 text encodes to, so it names no real record."""
    with open_store(street.store, street.secret, street.all_domains) as store:
        mac = store.seals.suite.keyed_mac(store.keyring.index_key)
        table = store.table("huji.persons")
        for values in KEYS:
            text = json.dumps([table.qualified, values], ensure_ascii=False, separators=(",", ":")).encode()
            assert store.blind_key(table, values) == mac(b"key|" + text)[:16], values
        hostile = store.blind_key(table, ["00\udc00"])
        raw = json.dumps([table.qualified, ["00\udc00"]], ensure_ascii=False, separators=(",", ":"))
        with pytest.raises(UnicodeDecodeError):
            raw.encode("utf-8", "surrogatepass").decode("utf-8")
        assert hostile == mac(b"key|" + raw.encode("utf-8", "surrogatepass"))[:16]


def test_merge_says_in_chinese_which_value_the_store_cannot_keep(street):
    """The two reasons of prepare.unkeepable, as `syncdb merge` prints them by default (Chinese)."""
    a = CODES[0]
    path = _bundle(street, a, 1, [_assistance(1, a, "00300100001", 2 ** 70), _person(2, a, name=MARK)],
                   {1: "\\ud800"})
    merged = _syncdb(street, "merge", str(street.store), str(path), lang="zh_CN")
    out = merged.stdout.decode("utf-8")
    assert merged.returncode == 1, out + merged.stderr.decode("utf-8", "replace")
    assert "members / 该整数超出存储库能保存的范围（-9,223,372,036,854,775,808 至 9,223,372,036,854,775,807）" in out, out
    assert "name / 文本中含有 UTF-8 无法表示的字符" in out, out


@pytest.mark.parametrize("jobs", [1, 2])
def test_nan_in_a_column_the_store_keeps_as_itself_rejects_its_record_alone(street, jobs):
    """The JSON reader takes NaN (json.loads; orjson refuses it), a text column takes any JSON value,
    and SQLite keeps NaN as NULL: the record was applied, its version saying the cell was set, the
    store holding nothing, a sensitive column's seal NaN. syncdb never writes NaN (SQLite has none to
    export); Infinity, which a REAL cell can hold, is kept."""
    a = CODES[0]
    changes = [_person(1, a, deregistration_destination="NAN_HERE"),
               _person(2, a, deregistration_destination="INF_HERE"),
               _person(3, a, former_name="NAN_HERE"),
               _person(4, a)]
    path = _bundle(street, a, 1, changes)
    _rewrite(street, path, a, 1, changes, '"NAN_HERE"', "NaN", more={'"INF_HERE"': "-Infinity"})
    summary = _merged(street, [path], jobs)
    assert (summary.applied, summary.changes, len(summary.rejected)) == (1, 3, 1), summary.lines()
    assert "/ deregistration_destination / " in summary.rejected[0], summary.rejected
    assert sorted(_stored(street, "SELECT deregistration_destination FROM huji__persons"),
                  key=repr) == sorted([(None,), (None,), (float("-inf"),)], key=repr)


_VALUES = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(min_value=-(2 ** 80), max_value=2 ** 80) | st.sampled_from(
                        [2 ** 63 - 1, 2 ** 63, -(2 ** 63), -(2 ** 63) - 1, 10 ** 15 - 1, 10 ** 15, -(10 ** 15)]),
                    st.text(max_size=40), st.text(alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010),
                                                  max_size=6))


@settings(max_examples=400, deadline=None)
@given(key=st.dictionaries(st.sampled_from(["household_no", "assistance_type"]), _VALUES, min_size=1),
       cells=st.dictionaries(st.sampled_from(["members", "status", "monthly_amount", "x"]), _VALUES),
       max_value=st.sampled_from([16, 63, 64, 100, 4096]))
def test_the_fast_path_passes_nothing_the_measured_checks_would_find(domains, key, cells, max_value):
    """prepare._surely_fine skips limits.oversized and prepare.unkeepable: whatever it passes, they find nothing."""
    table = domains["minzheng"].tables["assistance"]
    change = {"key": key, "cells": cells}
    if prepare._surely_fine(change, max_value):
        assert limits.oversized(change, max_value) == [] and prepare.unkeepable(table, change) == []
