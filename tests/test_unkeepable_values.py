"""Values no store can keep: a whole number past SQLite's 64 bits, and text holding a lone surrogate.

syncdb never sends either, but a bundle is JSON: another program of the community, or a stolen key,
can write 2**70 for 享受人数 or the escape \\ud800 for a name. Binding such a value to SQLite raised
(OverflowError, UnicodeEncodeError) half way through the bundle: the whole bundle was held, said
"fix the cause and merge again", failed the same way at every merge, and every later bundle of the
community waited behind it. Now the record that carries it is rejected on its own, with its reason,
and the rest of the bundle and the community's next bundles apply (prepare.unkeepable).
"""

import json

import pytest

from conftest import CODES, SECRET, World, person
from mutants import compress, lines_of, signed_bundle
from syncdb import bundle, merge
from syncdb import community as community_lib
from syncdb.crypto import Keyring, PublicKey
from syncdb.store import open_store

MARK = "UNKEEPABLE"  # stands for the hostile value in a change, replaced in its JSON line


def _stamp(n: int, code: str) -> str:
    return f"005000000000{n:03d}.000000.{code}"


def _person(n: int, code: str, **cells) -> dict:
    row = person(n, code, **cells)
    return {"table": "huji.persons", "op": "insert", "key": {"id_number": row.pop("id_number")}, "cells": row,
            "base": {}, "hlc": _stamp(n, code)}


def _assistance(n: int, code: str, number: str, members) -> dict:
    return {"table": "minzheng.assistance", "op": "insert", "key": {"household_no": number, "assistance_type": "1"},
            "cells": {"status": "active", "members": members, "start_date": "2024-01-01", "community_code": code},
            "base": {}, "hlc": _stamp(n, code)}


def _bundle(world: World, code: str, sequence: int, changes: list[dict], escapes: dict[int, str] | None = None):
    """A bundle of ``changes`` signed with the community's own key; in change i of ``escapes`` the JSON
    string "UNKEEPABLE" is written as the escape given (what no syncdb writes)."""
    lines = []
    for i, change in enumerate(changes):
        line = json.dumps(change, ensure_ascii=False, separators=(",", ":"))
        if escapes and i in escapes:
            assert f'"{MARK}"' in line
            line = line.replace(f'"{MARK}"', f'"{escapes[i]}"')
        lines.append(line.encode() + b"\n")
    ring = Keyring.load(community_lib.state_dir(world.folders[code]) / "keyring.json", world.secret)
    schemas = {d: {"version": world.all_domains[d].version, "fingerprint": world.all_domains[d].fingerprint}
               for d in sorted({c["table"].split(".")[0] for c in changes})}
    data = signed_bundle(code, sequence, changes, ring, PublicKey.read(world.store / "office.pub.json"), schemas,
                         stream=compress(lines_of(lines)))
    path = world.root / bundle.file_name(code, sequence)
    path.write_bytes(data)
    return path


def _merged(world: World, paths, jobs: int) -> merge.Summary:
    summary = merge.merge(world.store, paths, SECRET, world.all_domains, jobs=jobs)
    "\n".join(summary.lines()).encode("utf-8")  # what the merge prints is text a console can write
    return summary


def _stored(world: World, sql: str) -> list:
    with open_store(world.store, world.secret, world.all_domains) as store:
        return store.conn.execute(sql).fetchall()


@pytest.fixture
def street(tmp_path, domains) -> World:
    return World(tmp_path, domains, codes=CODES[:1], community_domains=("huji", "minzheng"))


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_whole_number_past_64_bits_rejects_its_record_alone(street, jobs):
    a = CODES[0]
    first = _bundle(street, a, 1, [
        _assistance(1, a, "00300100001", 2 ** 70),
        _assistance(2, a, "00300100002", -(2 ** 63) - 1),
        _assistance(3, a, "00300100003", 2 ** 63 - 1),  # the largest SQLite keeps: kept
        _assistance(4, a, "00300100004", 3)])
    summary = _merged(street, [first], jobs)
    assert (summary.applied, summary.held) == (1, []), summary.lines()
    assert summary.changes == 2 and len(summary.rejected) == 2, summary.lines()
    assert all("/ members / the whole number is beyond those the store keeps" in line for line in summary.rejected)
    assert sorted(_stored(street, "SELECT household_no, members FROM minzheng__assistance")) == [
        ("00300100003", 2 ** 63 - 1), ("00300100004", 3)]
    # An update carrying one is rejected too, and the community's next bundle is not kept waiting.
    update = {"table": "minzheng.assistance", "op": "update", "key": {"household_no": "00300100004",
                                                                      "assistance_type": "1"},
              "cells": {"members": 2 ** 64}, "base": {"members": _stamp(4, a)}, "hlc": _stamp(5, a)}
    summary = _merged(street, [_bundle(street, a, 2, [update, _assistance(6, a, "00300100006", 2)])], jobs)
    assert (summary.applied, summary.changes, len(summary.rejected)) == (1, 1, 1), summary.lines()
    assert sorted(_stored(street, "SELECT household_no, members FROM minzheng__assistance")) == [
        ("00300100003", 2 ** 63 - 1), ("00300100004", 3), ("00300100006", 2)]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_lone_surrogate_rejects_its_record_alone_wherever_it_is(street, jobs):
    a = CODES[0]
    changes = [
        _person(1, a),
        _person(2, a, deregistration_destination=MARK),  # a cell the store keeps as itself
        _person(3, a, name=MARK),  # a sensitive cell, sealed
        _person(4, a) | {"key": {"id_number": MARK}},  # a sensitive key
        _assistance(5, a, MARK, 2),  # a key kept as itself
        _person(6, a, name=MARK),  # a surrogate pair is a character like any other: kept
        {"table": "huji.persons", "op": "delete", "key": {"id_number": MARK}, "cells": {},
         "base": {"name": _stamp(1, a)}, "hlc": _stamp(7, a)},
    ]
    escapes = {1: "\\ud800", 2: "\\udfff", 3: "\\ud83d", 4: "00\\udc00", 5: "居民\\ud83d\\ude00", 6: "\\ud800"}
    summary = _merged(street, [_bundle(street, a, 1, changes, escapes)], jobs)
    assert (summary.applied, summary.held) == (1, []), summary.lines()
    assert summary.changes == 2 and len(summary.rejected) == 5, summary.lines()
    fields = [line.split(" / ")[3] for line in summary.rejected]
    assert sorted(fields) == ["deregistration_destination", "household_no", "id_number", "id_number", "name"]
    assert all("a lone surrogate" in line for line in summary.rejected)
    # The key kept as itself is named by the escape of its bytes, in the summary and in the store.
    assert "/ 00\\xed\\xb0\\x80/1 /" in "\n".join(summary.rejected)
    assert ("00\\xed\\xb0\\x80/1",) in _stored(street, "SELECT shown_key FROM rejected")
    with open_store(street.store, street.secret, street.all_domains) as store:
        cursor = store.conn.execute("SELECT * FROM huji__persons WHERE _exists = 1")
        columns = [d[0] for d in cursor.description]
        names = sorted(store.plain_row(store.tables["huji.persons"], dict(zip(columns, row)))["name"]
                       for row in cursor)
    assert names == ["居民1", "居民😀"]
    # The community's next bundle applies.
    summary = _merged(street, [_bundle(street, a, 2, [_person(8, a)])], jobs)
    assert (summary.applied, summary.changes) == (1, 1), summary.lines()
