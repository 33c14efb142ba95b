"""merge --jobs: worker processes prepare the changes, one process writes; the store ends the same."""

import os
import sqlite3
import zlib

import pytest

from conftest import CODES, SECRET, id_number, person, snapshot
from syncdb import merge, migrations, office, prepare
from syncdb.errors import SyncdbError
from syncdb.store import table_name


@pytest.fixture
def pooled(monkeypatch):
    """Workers for every bundle, however small (a real merge keeps small bundles in one process)."""
    monkeypatch.setattr(merge._Pool, "SMALL", 0)
    monkeypatch.setattr(prepare, "CHUNK", 7)  # several chunks per bundle, handed back in order


def plain_state(store, domains):
    """What a merge leaves besides the decrypted rows: versions, blind indexes, ledger, rejections."""
    st_ = migrations.open_upgraded(store, SECRET, domains)
    try:
        rows = {}
        for table in st_.tables.values():
            cursor = st_.conn.execute(f"SELECT * FROM [{table_name(table)}]")
            names = [d[0] for d in cursor.description]
            for found in cursor:
                record = dict(zip(names, found))
                rows[table.qualified, record["_key"]] = {
                    c: v for c, v in record.items() if not (c in table.columns and table.columns[c].sensitive)}
        ledger = [(bundle, origin, changes, zlib.decompress(body)) for bundle, origin, changes, body in
                  st_.conn.execute("SELECT bundle, origin, changes, body FROM ledger ORDER BY id")]
        rejected = st_.conn.execute("SELECT origin, sequence, tbl, key, shown_key, field, why FROM rejected "
                                    "ORDER BY id").fetchall()
        frontier = st_.conn.execute("SELECT * FROM frontier ORDER BY tbl, key, col, version").fetchall()
        return rows, [(b, o, c, sorted(body.split(b"\n"))) for b, o, c, body in ledger], rejected, frontier
    finally:
        st_.conn.close()


def history(w):
    """Bundles with inserts, updates, deletes, a rejected record, a duplicate registration and an office edit."""
    a, b, c = CODES
    for n in range(30):
        w.insert(a, person(n, a))
    for n in range(25, 40):
        w.insert(b, person(n, b))  # 25..29 registered in two communities: duplicate registrations
    w.push(a)
    w.push(b)
    w.sql(a, "UPDATE persons SET phone = '13800000000' WHERE id_number < ?", (id_number(10),))
    w.sql(a, "DELETE FROM persons WHERE id_number = ?", (id_number(3),))
    w.sql(b, "UPDATE persons SET status = 'moved_out' WHERE id_number = ?", (id_number(26),))
    w.insert(c, person(50, c))
    for code in CODES:
        w.push(code, confirm_deletes=True)
    w.office_edit(12, "0769-22000012")
    # Records the office rejects though the community sent them: a code it does not know, a change
    # stamped by another community, an insert filed under another community's code.
    odd = [person(60, a, ethnicity="57"), person(61, a), person(62, a, community_code=b)]
    w.bundles.append(w.signed_bundle(a, [
        {"table": "huji.persons", "op": "insert", "key": {"id_number": row.pop("id_number")}, "cells": row,
         "base": {}, "hlc": f"005000000000000.00000{n}.{b if n == 1 else a}"} for n, row in enumerate(odd)],
        sequence=3))


def test_a_jobs_merge_equals_a_one_process_merge(world, domains, pooled):
    w = world
    history(w)
    w.freeze_empty_store()
    one = w.fresh_store("one")
    pooled_store = w.fresh_store("pooled")
    for path in w.bundles:
        merge.merge(one, [path], SECRET, w.all_domains, jobs=1)
    summary = None
    for path in w.bundles:
        summary = merge.merge(pooled_store, [path], SECRET, w.all_domains, jobs=2)
    assert summary is not None
    rows, conflicts = snapshot(one, domains)
    assert rows and conflicts  # the duplicate registrations
    assert snapshot(pooled_store, domains) == (rows, conflicts)
    state = plain_state(one, domains)
    assert state[2]  # the rejected record
    assert plain_state(pooled_store, domains) == state


def test_a_jobs_merge_of_many_bundles_at_once_equals_one_process(world, domains, pooled):
    w = world
    history(w)
    w.freeze_empty_store()
    one, pooled_store = w.fresh_store("one"), w.fresh_store("pooled")
    merge.merge(one, w.bundles, SECRET, w.all_domains, jobs=1)
    merge.merge(pooled_store, w.bundles, SECRET, w.all_domains, jobs=2)
    assert snapshot(pooled_store, domains) == snapshot(one, domains)
    assert plain_state(pooled_store, domains) == plain_state(one, domains)


def pushed_into_a_fresh_store(w, persons: int, name: str):
    """One community's first push of ``persons`` residents, and an empty store to merge it into, with
    that store's snapshot before the merge."""
    for n in range(persons):
        w.insert(CODES[0], person(n, CODES[0]))
    w.push(CODES[0])
    w.freeze_empty_store()
    store = w.fresh_store(name)
    return store, snapshot(store, w.all_domains)


def _dying_chunk(*args):
    os._exit(3)  # a worker killed while it prepares (out of memory, a signal)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the stand-in worker is inherited through fork")
def test_a_worker_that_dies_fails_the_merge_and_changes_nothing(world, domains, pooled, monkeypatch):
    w = world
    store, before = pushed_into_a_fresh_store(w, 20, "dying")
    monkeypatch.setattr(prepare, "prepare_chunk", _dying_chunk)
    with pytest.raises(SyncdbError) as failed:
        merge.merge(store, w.bundles, SECRET, w.all_domains, jobs=2)
    message = str(failed.value)
    assert "worker process" in message and "--jobs 1" in message and f"syncdb merge {store}" in message
    assert snapshot(store, domains) == before
    conn = sqlite3.connect(office.store_file(store))
    assert conn.execute("SELECT count(*) FROM applied").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM received").fetchone() == (1,)  # still in the inbox
    conn.close()
    monkeypatch.undo()
    again = merge.merge(store, [], SECRET, w.all_domains, jobs=1)
    assert again.applied == 1 and again.changes == 20
    assert snapshot(store, domains) == snapshot(w.merge_in_order(w.bundles, "one"), domains)


def test_the_default_jobs_keep_within_a_containers_cpu_quota(tmp_path):
    """A container given 1.5 CPUs of a 32-core host: one worker's worth, not 32 (cgroup v2 and v1)."""
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert prepare.quota_cores(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert prepare.quota_cores(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert prepare.quota_cores(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert prepare.quota_cores(v1) is None
    assert prepare.quota_cores(tmp_path / "none") is None
    # This machine's own default stays within its cores and quota, and at least one.
    quota = prepare.quota_cores()
    assert 1 <= prepare.default_jobs() <= max(1, int(quota if quota is not None else os.cpu_count()))
