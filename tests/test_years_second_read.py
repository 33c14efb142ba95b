"""Second read of "the years' history no longer read by a night" (issue 14): what a merge looks up
of a batch's records must hold on every SQLite an office runs, and give the store the same whatever
the bundles' history."""

import importlib
import itertools
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CODES, SECRET, World, id_number, person, snapshot
from syncdb import bundles, merge, migrations, office, pages, status
from syncdb.state import outbox_dir


# SQLite before 3.32 (still the system library of long-supported server distributions, which a
# Python built there uses) allows 999 parameters in one statement; later ones 32,766.
OLD_SQLITE = """
import sqlite3, sys
_connect = sqlite3.connect

def connect(*args, **kwargs):
    conn = _connect(*args, **kwargs)
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    return conn

sqlite3.connect = connect
from syncdb.cli import cli
sys.argv[0] = "syncdb"
cli()
"""


def test_a_full_batch_of_one_table_merges_on_an_sqlite_of_999_parameters(office_world, make_community,
                                                                          syncdb_env, tmp_path):
    """A batch holds 500 changes; looking up the versions set aside of its 500 records must not
    pass both tables' keys in one statement (1,002 parameters), or a community's first load stops."""
    a = make_community()
    a.add_persons(500)
    a.export()
    merged = subprocess.run([sys.executable, "-c", OLD_SQLITE, "merge", str(office_world.store),
                             str(outbox_dir(a.path)), "--jobs", "1"],
                            env=syncdb_env, capture_output=True, text=True, timeout=120)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    conn = sqlite3.connect(office_world.store / "store.db")
    try:
        assert conn.execute("SELECT count(*) FROM huji__persons").fetchone() == (500,)
    finally:
        conn.close()


def test_the_sums_of_all_the_years_read_covering_indexes_only(world):
    """The sync page's and status's sums over every bundle and refused record of the years read an
    index holding what they sum (applied_sums, rejected_by_origin), never the rows themselves: SQLite's
    steps barely tell the two apart (tests/test_years.py), the pages read from disk do."""
    world.register(CODES[0], person(1, CODES[0]))
    with migrations.open_upgraded(world.store, SECRET, world.all_domains) as store:
        statements = []
        store.conn.set_trace_callback(statements.append)
        try:
            pages.sync_status(store, world.store)
            status._rejected(store.conn, world.store, {}, {}, status.Report("x"))
        finally:
            store.conn.set_trace_callback(None)
        sums = [s for s in statements if ("sum(" in s or "count(" in s) and ("applied" in s or "rejected" in s)]
        assert len(sums) >= 2, statements
        for sql in sums:
            plan = [row[-1] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
            reads = [p for p in plan if p.startswith(("SCAN", "SEARCH"))]
            assert reads and all("COVERING INDEX" in p for p in reads), (sql, plan)


def _years_bench():
    """bench/years.py, imported as its own script imports it (beside bench/city.py)."""
    bench = Path(__file__).resolve().parent.parent / "bench"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    return importlib.import_module("years")


def test_the_years_bench_stops_when_a_nights_bundle_is_held(tmp_path, domains):
    """A night whose bundle the merge holds (here a gap: bundle 2 never came) merged nothing of that
    community: the bench says so and stops, rather than time the night as if merged."""
    years = _years_bench()
    w = World(tmp_path, domains, secret=years.SECRET)
    a = CODES[0]
    w.register(a, person(1, a))
    row = person(2, a)
    later = w.signed_bundle(a, [{"table": "huji.persons", "op": "insert", "key": {"id_number": row.pop("id_number")},
                                 "cells": row, "base": {}, "hlc": f"001900000000000.000000.{a}"}], sequence=3)
    merge.merge(w.store, [later], years.SECRET, domains)  # received, held behind the missing bundle 2
    with pytest.raises(SystemExit, match="did not apply cleanly"):
        years.timed_merge(w.store, domains)


def test_the_years_bench_times_status_with_the_record_rules_checked(tmp_path, domains):
    """The nightly `syncdb status` runs with SYNCDB_KEY_FILE set, so with the keyring, and checks the
    record rules over every record: the bench's status duty does the same."""
    years = _years_bench()
    w = World(tmp_path, domains, secret=years.SECRET)
    w.register(CODES[0], person(1, CODES[0]))
    report = years.office_status(w.store, domains, office.load_keyring(w.store, years.SECRET))
    (rules,) = [lines for heading, lines in report.sections if heading.startswith("Record rules")]
    assert not any("not checked" in line for line in rules), rules


@pytest.mark.parametrize("batch", [1, 500])
def test_a_record_with_versions_kept_aside_merges_alike_in_every_order_and_batch(world, domains, monkeypatch, batch):
    """A community's bundle looks up the versions kept aside of its batch's records only: a record
    registered by two communities (a duplicate registration, opened then closed by a move), edited on
    both sides before and after, and a record the office corrected, give one store and one set of open
    conflicts in every arrival order, with a batch of one change (each look-up its own) or of all."""
    w = world
    a, b = CODES[0], CODES[1]
    w.freeze_empty_store()
    w.insert(a, person(5, a))
    w.insert(a, person(6, a))
    w.sql(a, "UPDATE persons SET phone = '13900000501' WHERE id_number = ?", (id_number(5),))
    w.push(a)
    # The office corrects the other resident's phone, built on a's version: where the office's bundle
    # arrives first, a's version is set aside for good before it arrives (``dominated``).
    w.office_edit(6, "0769-22000006")
    w.insert(b, person(5, b))  # registered here too: a duplicate registration
    w.push(b)
    w.sql(a, "UPDATE persons SET phone = '13900000502' WHERE id_number = ?", (id_number(5),))
    w.sql(a, "UPDATE persons SET status = 'moved_out' WHERE id_number = ?", (id_number(5),))
    w.sql(a, "UPDATE persons SET name = '改名' WHERE id_number = ?", (id_number(6),))
    w.push(a)
    w.sql(b, "UPDATE persons SET phone = '13900000503', name = '新名' WHERE id_number = ?", (id_number(5),))
    w.push(b)
    w.sql(a, "UPDATE persons SET phone = '13900000504' WHERE id_number = ?", (id_number(5),))  # kept aside: b holds
    w.push(a)
    assert len(w.bundles) == 6
    monkeypatch.setattr(merge._Merger, "BATCH", batch)
    orders = list(itertools.permutations(w.bundles))
    orders = [orders[0], orders[-1], *random.Random(14).sample(orders[1:-1], 10)]
    results, kept = [], set()
    for i, order in enumerate(orders):
        store = w.merge_in_order(order, f"order-{i}")
        results.append(snapshot(store, domains))
        conn = sqlite3.connect(store / "store.db")
        kept |= {side for side in ("frontier", "dominated")
                 if conn.execute(f"SELECT count(*) FROM {side}").fetchone()[0]}
        conn.close()
    assert kept == {"frontier", "dominated"}  # the history does leave versions kept aside, and set aside for good
    assert all(r == results[0] for r in results[1:])


def _listing_as_before(store_dir, domains, code, everything):
    """bundles.listing as it read every bundle of the years (before store version 5), for comparison."""
    conn = bundles.read_only(store_dir)
    try:
        skipped = {(o, s) for o, s in conn.execute("SELECT origin, sequence FROM skipped")}
        where = "WHERE a.origin = ?" if code else ""
        rows = conn.execute(
            "SELECT a.origin, a.sequence, r.file, r.received, a.applied, a.changes FROM applied a "
            f"LEFT JOIN received r ON r.origin = a.origin AND r.sequence = a.sequence {where} "
            "ORDER BY a.origin, a.sequence", (code,) if code else ()).fetchall()
    finally:
        conn.close()
    latest = {origin: sequence for origin, sequence, *_ in rows}
    return [(origin, sequence, name, applied) for origin, sequence, name, _received, applied, _changes in rows
            if everything or (origin, sequence) in skipped or latest[origin] == sequence]


def test_bundles_list_shows_what_it_showed_when_it_read_every_bundle(world, domains):
    """Each community's last bundle and the bundles skipped (one never received: in ``applied`` and
    not in ``received``), with --everything and --code, as before the years' reads were cut."""
    a, b = CODES[0], CODES[1]
    for n in range(3):
        assert world.register(a, person(10 + n, a)).applied == 1
    for n in range(4):
        world.insert(b, person(20 + n, b))
        world.push(b)
    lost = world.bundles[-3]  # b's bundle 2 never reaches the office
    merge.merge(world.store, [p for p in world.bundles[-4:] if p != lost], SECRET, domains)
    bundles.skip(world.store, SECRET, domains, b, 2, "the PC was replaced", who="test")
    merge.merge(world.store, [], SECRET, domains)
    for code in (None, a, b, CODES[2]):
        for everything in (False, True):
            shown = [(e.origin, e.sequence, e.file, e.applied)
                     for e in bundles.listing(world.store, domains, code=code, everything=everything)]
            assert shown == _listing_as_before(world.store, domains, code, everything), (code, everything)
    assert [(e.origin, e.sequence, e.state) for e in bundles.listing(world.store, domains)] == [
        (a, 3, "applied"), (b, 2, "skipped"), (b, 4, "applied")]
