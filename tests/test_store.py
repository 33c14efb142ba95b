"""The store object: readers never write or wait; an upgrade keeps everything; the store says
what changed; a resolution and a merge open each bundle once."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import CODES, SECRET, id_number, person, snapshot
from syncdb import audit, bundle, merge, office, publishdb, resolve
from syncdb import conflicts as queue
from syncdb.cli import cli
from syncdb.errors import SyncdbError
from syncdb.projection import MASKED_DB
from syncdb.store import STORE_VERSION, open_store

PERSONS_PATH = "户籍_人员"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def write_transaction_held(store: Path, seconds: float):
    """Another process holds a write transaction on store.db (as a long merge does) for ``seconds``."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "conn.execute(\"INSERT INTO origin_clock VALUES ('held', 'by another writer')\")\n"
        "print('held', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "conn.execute('ROLLBACK')\n"), str(store / "store.db"), str(seconds)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        yield
        assert time.monotonic() - started < seconds, "the readers finished only after the writer let go"
    finally:
        holder.kill()
        holder.wait()


def test_readers_answer_at_once_and_write_nothing_while_another_connection_holds_a_write_transaction(
        office_world, make_community, publisher, syncdb_env, syncdb_secret, domains):
    store = office_world.store
    a, b = make_community(CODES[0]), make_community(CODES[1])
    a.add_persons(4)
    b.next_person = 2  # b registers two of a's residents as well: conflicts in the queue
    b.add_persons(3)
    summary = merge.merge(store, [a.export().path, b.export().path], syncdb_secret, domains)
    assert summary.opened
    site = publisher(store)
    clerk = site.sign_in("lilei")
    runner = CliRunner()
    with write_transaction_held(store, seconds=10):
        before = digest(store / "store.db")
        for args in (["conflicts", "list"], ["export"], ["audit", "verify"]):
            argv = [*args, str(store)] + (["huji.persons"] if args == ["export"] else [])
            started = time.monotonic()
            result = runner.invoke(cli, argv, env=syncdb_env, catch_exceptions=False)
            took = time.monotonic() - started
            assert result.exit_code == 0, (argv, result.output)
            assert took < 1.0, f"{' '.join(args)} took {took:.2f} s"
            assert digest(store / "store.db") == before, f"{' '.join(args)} wrote to store.db"
        for path in ("/-/conflicts", "/-/sync", f"/{MASKED_DB}/{PERSONS_PATH}"):
            started = time.monotonic()
            page = clerk.get(site.url + path, timeout=10)
            took = time.monotonic() - started
            assert page.status_code == 200, (path, page.text[:300])
            assert took < 1.0, f"{path} took {took:.2f} s"
            assert digest(store / "store.db") == before, f"{path} wrote to store.db"


def test_a_read_only_store_refuses_every_write(world, domains):
    world.register(CODES[0], person(1, CODES[0]))
    with open_store(world.store, SECRET, domains) as store:
        assert store.read_only
        with pytest.raises(sqlite3.OperationalError, match="readonly|query_only|read-only|attempt to write"):
            store.conn.execute("DELETE FROM conflicts")
        with pytest.raises(sqlite3.OperationalError):
            store.conn.execute("CREATE TEMP TABLE scratch (x)")  # query_only: not even in memory


def make_earlier_release(store: Path) -> None:
    """Turn a store into one as the release before this one left it: unnumbered, without the columns
    added since, and with publish's page-view log (one view, chained the old way) inside store.db."""
    keyring = office.load_keyring(store, SECRET)
    key = keyring.suite.derive(keyring.index_key, b"", b"syncdb page views")
    at, actor, page = "2026-11-29T10:00:00", "wangfang", "/renkou_mingwen/huji_persons"
    mac = keyring.suite.mac(key, b"\0" * 32 + json.dumps([at, actor, page], ensure_ascii=False).encode())
    conn = sqlite3.connect(store / "store.db", isolation_level=None)
    conn.execute("PRAGMA user_version = 0")
    conn.execute("ALTER TABLE received DROP COLUMN changes")
    conn.execute("ALTER TABLE communities DROP COLUMN name")
    conn.execute("CREATE TABLE page_views (id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, "
                 "page TEXT NOT NULL, mac BLOB NOT NULL)")
    conn.execute("INSERT INTO page_views VALUES (1, ?, ?, ?, ?)", (at, actor, page, mac))
    conn.close()


def test_a_store_from_the_earlier_release_is_upgraded_by_the_next_merge_after_a_backup_with_nothing_lost(
        world, domains):
    for n in range(3):
        world.insert(CODES[0], person(n, CODES[0]))
    world.push(CODES[0])
    world.insert(CODES[1], person(1, CODES[1]))  # a duplicate registration: an open conflict
    world.push(CODES[1])
    merge.merge(world.store, world.bundles, SECRET, domains)
    before = snapshot(world.store, domains)
    assert before[1], "the sample needs an open conflict"
    make_earlier_release(world.store)
    old = digest(world.store / "store.db")

    # A reader says what to do, and leaves the store as it found it.
    with pytest.raises(SyncdbError, match=r"must be upgraded first.*syncdb merge"):
        open_store(world.store, SECRET, domains)
    assert digest(world.store / "store.db") == old

    merge.merge(world.store, [], SECRET, domains)
    (backup,) = (world.store / "backups").iterdir()
    kept = sqlite3.connect(backup)
    assert kept.execute("PRAGMA user_version").fetchone() == (0,)
    assert kept.execute("SELECT count(*) FROM page_views").fetchone() == (1,)
    kept.close()
    with open_store(world.store, SECRET, domains) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone() == (STORE_VERSION,)
        assert not store.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'page_views'").fetchone()
        assert audit.verify(store) == 4
        assert publishdb.verify_views(store) == 1  # carried to publish.db, its chain unbroken
    assert snapshot(world.store, domains) == before
    merge.merge(world.store, [], SECRET, domains)  # upgraded once: no second backup
    assert len(list((world.store / "backups").iterdir())) == 1


def test_a_domain_added_since_the_last_merge_reads_as_empty_until_the_next_merge_makes_it(world, domains):
    world.register(CODES[0], person(1, CODES[0]))
    store_db = world.store / "store.db"
    conn = sqlite3.connect(store_db)
    conn.execute("DROP TABLE shebao__enrolments")
    conn.execute("DELETE FROM store_columns WHERE tbl LIKE 'shebao.%'")
    conn.commit()
    conn.close()
    before = digest(store_db)
    with open_store(world.store, SECRET, domains) as store:
        assert store.conn.execute("SELECT count(*) FROM shebao__enrolments").fetchone() == (0,)
    assert digest(store_db) == before
    merge.merge(world.store, [], SECRET, domains)
    assert sqlite3.connect(store_db).execute(
        "SELECT count(*) FROM sqlite_master WHERE name = 'shebao__enrolments'").fetchone() == (1,)


def test_the_store_says_which_records_changed_since_a_point(world, domains):
    world.register(CODES[0], person(1, CODES[0]), person(2, CODES[0]))
    with open_store(world.store, SECRET, domains) as store:
        point = store.change_point()
        assert store.changed_since(point) == {}
    world.sql(CODES[0], "UPDATE persons SET phone = '13900000001' WHERE id_number = ?", (id_number(2),))
    world.insert(CODES[0], person(3, CODES[0]))
    world.push(CODES[0])
    merge.merge(world.store, world.bundles[-1:], SECRET, domains)
    with open_store(world.store, SECRET, domains) as store:
        table = store.table("huji.persons")
        assert store.changed_since(point) == {
            "huji.persons": {store.blind_key(table, [id_number(2)]), store.blind_key(table, [id_number(3)])}}
        assert store.changed_since(store.change_point()) == {}


@contextmanager
def opened_files(folder: Path):
    """Every file under ``folder`` this process opens meanwhile, as (path, mode) (Python's audit hook)."""
    seen: list[tuple[str, str]] = []
    active = [True]
    root = str(folder)

    def hook(event, args):
        if active[0] and event == "open" and isinstance(args[0], str) and args[0].startswith(root):
            seen.append((args[0], args[1] or "r"))
    sys.addaudithook(hook)  # hooks cannot be removed: this one goes quiet instead
    try:
        yield seen
    finally:
        active[0] = False


def test_a_merge_opens_each_inbox_bundle_once(world, domains):
    for n, code in enumerate(CODES):
        world.insert(code, person(n, code))
        world.push(code)
        world.insert(code, person(10 + n, code))
        world.push(code)
    for path in world.bundles:
        assert office.receive(world.store, path.read_bytes()).status == "accepted"
    with opened_files(office.inbox_dir(world.store)) as seen:
        summary = merge.merge(world.store, [], SECRET, domains)
    assert summary.applied == len(world.bundles) == 2 * len(CODES)
    read = [path for path, mode in seen if "r" in mode and path.endswith(".bundle")]
    assert sorted(read) == sorted(str(office.inbox_dir(world.store) / p.name) for p in world.bundles)


def test_a_resolution_is_merged_in_process_and_never_reads_its_bundle_back(world, domains):
    world.register(CODES[0], person(1, CODES[0]))
    world.both_rename(CODES[0], 1, "王小名", "王晓明")
    with open_store(world.store, SECRET, domains) as store:
        (conflict,) = [c for c in queue.items(store) if c["column"] == "name"]
    with opened_files(world.store) as seen, open_store(world.store, SECRET, domains, write=True) as store:
        summary = resolve.settle(store, conflict["id"], keep=CODES[0])
    assert summary.applied == 1 and summary.closed >= 1
    bundles_read = [p for p, mode in seen if p.endswith(".bundle") and "r" in mode and "w" not in mode
                    and "+" not in mode]
    assert bundles_read == []
    assert not [p for p in office.inbox_dir(world.store).iterdir() if p.name.startswith(".")], "a temporary file"
    with open_store(world.store, SECRET, domains) as store:
        assert store.conn.execute("SELECT count(*) FROM received r JOIN applied a USING (origin, sequence) "
                                  "WHERE origin = ?", (store.office_code,)).fetchone() == (2,)


def test_a_resolution_the_merge_refuses_leaves_nothing_behind(world, domains):
    """A rule of the office's own refusing a resolution: no bundle, no ledger entry, the conflict open."""
    world.register(CODES[0], person(1, CODES[0]))
    world.both_rename(CODES[0], 1, "王小名", "王晓明")
    inbox_before = sorted(p.name for p in office.inbox_dir(world.store).iterdir())
    with open_store(world.store, SECRET, domains, write=True) as store:
        (conflict,) = [c for c in queue.items(store) if c["column"] == "name"]
        ledger_before = store.change_point()
        with pytest.raises(SyncdbError, match="refused the resolution"):
            resolve.apply_edits(store, [{"table": "huji.persons", "key": {"id_number": id_number(1)},
                                         "cells": {"sex": "X"}}],  # not a sex code: rejected by the merge
                                refused="the merge refused the resolution")
        assert store.change_point() == ledger_before
    assert sorted(p.name for p in office.inbox_dir(world.store).iterdir()) == inbox_before
    with open_store(world.store, SECRET, domains) as store:
        assert conflict["id"] in [c["id"] for c in queue.items(store)]


def test_only_the_migrating_commands_change_the_stores_shape():
    """office init, merge, serve and keys rotate open the store through migrations; nothing else does."""
    root = Path(__file__).resolve().parent.parent / "syncdb"
    callers = {path.name for path in root.glob("*.py")
               if "open_upgraded(" in path.read_text(encoding="utf-8") or "migrations.init(" in path.read_text(
                   encoding="utf-8")}
    # migrations.py itself; merge; serve (server.py, at start); keys rotate; office init (cli.py), and the demo,
    # which runs office init.
    assert callers == {"migrations.py", "merge.py", "server.py", "keys.py", "cli.py", "demo.py"}


def test_bundle_reader_parses_the_header_once_and_reads_again_without_reopening(world, domains):
    world.insert(CODES[0], person(1, CODES[0]))
    path = world.push(CODES[0]).path
    keyring = office.load_keyring(world.store, SECRET)
    conn = office.connect(world.store)
    key = {CODES[0]: office.signer_keys(conn, keyring.public)[CODES[0]]}
    conn.close()
    with opened_files(path.parent) as seen, bundle.Reader(path) as reader:
        assert reader.verify(key.get).origin == CODES[0]
        first = list(reader.changes(keyring))
        assert reader.verify(key.get).sequence == 1 and list(reader.changes(keyring)) == first
    assert [p for p, _ in seen] == [str(path)]
