"""Second read of the upgrade's VACUUM (values in the clear a schema makes sensitive leave no copy on
disk): a version-3 store upgraded under a schema that makes a column sensitive at the same time, and
a store another process is reading while the upgrade writes it anew."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import CODES, SECRET, make_version_3, person, stored_values
from syncdb import merge, migrations, office
from syncdb.store import open_store
from test_row_seals import schemas_where

PERSONS = "huji.persons"
PLAIN = ('deregistration_destination = { type = "text", label = "迁往地" }',
         'deregistration_destination = { type = "text", label = "迁往地", sensitive = true }')


def _as_on_windows(monkeypatch, busy_ms: int | None = None):
    """office.connect as SQLite is built for Python on Windows: freed space is not zeroed."""
    connect = office.connect

    def as_on_windows(store_dir):
        conn = connect(store_dir)
        conn.execute("PRAGMA secure_delete = 0")
        if busy_ms is not None:
            conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
        return conn
    monkeypatch.setattr(office, "connect", as_on_windows)


def _places(world, domains) -> list[str]:
    places = [f"迁往地明文{n:03d}号" for n in range(40)]
    for n, place in enumerate(places):
        world.insert(CODES[0], person(n, CODES[0], deregistration_destination=place))
    world.push(CODES[0])
    merge.merge(world.store, world.bundles, SECRET, domains)
    return places


def _on_disk(store: Path) -> bytes:
    wal = store / "store.db-wal"
    return (store / "store.db").read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_a_version_3_store_upgraded_while_a_column_is_made_sensitive_keeps_no_plaintext(world, domains, tmp_path,
                                                                                       monkeypatch):
    """Store version 3 to 4 under a schema that also makes a column in the clear sensitive (a release
    shipping the row seals and a schema edit together): the table is made anew and the old one dropped,
    its pages, with every value of the column in the clear, left free in store.db."""
    _as_on_windows(monkeypatch)
    places = _places(world, domains)
    make_version_3(world.store, domains)
    assert places[0].encode() in _on_disk(world.store)
    edited = schemas_where(tmp_path, PLAIN)
    merge.merge(world.store, [], SECRET, edited)
    assert not [p for p in places if p.encode() in _on_disk(world.store)]
    with open_store(world.store, SECRET, edited) as st:
        assert sorted(v for _k, v in stored_values(st, PERSONS, "deregistration_destination")) == places


READER = """
import sqlite3, sys, time
conn = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
print("reading", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_store_read_by_another_process_during_the_upgrade_is_reported_not_left_silently(world, domains, tmp_path,
                                                                                        monkeypatch, caplog):
    """publish reading the store (a build or refresh holds a read transaction) while a merge upgrades it:
    the VACUUM runs, but the WAL cannot be copied back nor emptied, so store.db keeps its old pages, the
    values in the clear among them. The merge waited and said nothing; it must say so, as for a VACUUM
    that cannot run."""
    _as_on_windows(monkeypatch, busy_ms=300)
    places = _places(world, domains)
    edited = schemas_where(tmp_path, PLAIN)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(world.store / "store.db"), "20"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "reading"
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="syncdb.migrations"):
            merge.merge(world.store, [], SECRET, edited)
        assert time.monotonic() - started < 15
        left = [p for p in places if p.encode() in (world.store / "store.db").read_bytes()]
        warned = [r.getMessage() for r in caplog.records if r.name == "syncdb.migrations"]
        assert not left or any("old copies" in m and "syncdb merge" in m for m in warned), (len(left), warned)
    finally:
        reader.kill()
        reader.wait()


KILLED_AT_THE_VACUUM = """
import os, signal, sqlite3, sys
from conftest import SECRET
from syncdb import migrations
from syncdb.schema import load_domains

def kill(statement):
    if statement.startswith("VACUUM"):
        os.kill(os.getpid(), signal.SIGKILL)
made = sqlite3.connect
def connect(*args, **kwargs):  # SQLite as Python's Windows build has it, and SIGKILL as the VACUUM starts
    conn = made(*args, **kwargs)
    conn.execute("PRAGMA secure_delete = 0")
    conn.set_trace_callback(kill)
    return conn
sqlite3.connect = connect
migrations.open_upgraded(sys.argv[1], SECRET, load_domains(sys.argv[2])).close()
"""


def test_an_upgrade_killed_at_its_vacuum_has_the_next_merge_clear_the_old_copies(world, domains, tmp_path,
                                                                                monkeypatch):
    """The upgrade that moved values in the clear into the seals commits, then the process is killed
    (SIGKILL, power lost) while it writes store.db anew, which on a big store takes minutes: the store
    is version 4 and the next merge does not upgrade it, so nothing ever cleared the copies, and nobody
    was told. The next merge must finish it."""
    _as_on_windows(monkeypatch)
    places = _places(world, domains)
    edited = schemas_where(tmp_path, PLAIN)
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_THE_VACUUM, str(world.store),
                             str(tmp_path / "schemas-edited")],
                            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p for p in places if p.encode() in _on_disk(world.store)]
    merge.merge(world.store, [], SECRET, edited)
    assert not [p for p in places if p.encode() in _on_disk(world.store)]
    with open_store(world.store, SECRET, edited) as st:
        assert sorted(v for _k, v in stored_values(st, PERSONS, "deregistration_destination")) == places
