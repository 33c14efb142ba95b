"""A second, adversarial read of the store object (issue 10): each test failed before its fix."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from conftest import CODES, SECRET, id_number, person
from syncdb import bundle, merge, migrations, office, resolve
from syncdb import conflicts as queue
from syncdb.errors import SyncdbError
from syncdb.store import STORE_VERSION, open_store
from test_store import make_earlier_release


def _held(store) -> sqlite3.Connection:
    """Another connection holding store.db's write lock, as a merge in another process does."""
    conn = sqlite3.connect(store / "store.db", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def _in_thread(target, *args) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run():
        try:
            outcome.append(target(*args))
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            outcome.append(e)
    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_two_people_settling_the_same_conflict_at_once_the_second_is_told_it_is_settled(world, domains):
    """`conflicts resolve` (or `review`) at two desks: each checked that the conflict was open before
    taking the write lock, so the one that waited overrode the other's decision without being told."""
    world.register(CODES[0], person(1, CODES[0]))
    world.both_rename(CODES[0], 1, "王小名", "王晓明")
    with open_store(world.store, SECRET, domains) as store:
        (conflict,) = [c for c in queue.items(store) if c["column"] == "name"]
        office_code = store.office_code

    def settle(keep):
        with open_store(world.store, SECRET, domains, write=True) as store:
            return resolve.settle(store, conflict["id"], keep=keep)

    holder = _held(world.store)  # both desks check the conflict, then wait for the lock
    desks = [_in_thread(settle, keep) for keep in (CODES[0], office_code)]
    time.sleep(1.5)
    holder.execute("ROLLBACK")
    holder.close()
    for thread, _ in desks:
        thread.join(60)
    outcomes = [outcome[0] for _, outcome in desks]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert len(refused) == 1, f"both decisions were applied, the second over the first: {outcomes}"
    assert isinstance(refused[0], SyncdbError) and "meanwhile" in str(refused[0]), refused[0]
    with open_store(world.store, SECRET, domains) as store:
        (edits,) = store.conn.execute("SELECT count(*) FROM received WHERE origin = ?", (office_code,)).fetchone()
        assert edits == 2  # the office's rename, and one resolution: not two
    assert sorted(p.name for p in office.inbox_dir(world.store).iterdir() if p.name.startswith(office_code)) == [
        bundle.file_name(office_code, 1), bundle.file_name(office_code, 2)]  # the refused one left no file


def _make_later_release(store) -> None:
    conn = sqlite3.connect(store / "store.db", isolation_level=None)
    conn.execute(f"PRAGMA user_version = {STORE_VERSION + 1}")
    conn.close()


def test_a_reader_of_a_store_from_a_later_release_is_not_sent_to_merge_which_refuses_it(world, domains):
    """The reader's message said "must be upgraded first ... Run `syncdb merge`", and merge then
    refused the store: a loop nobody can get out of. It says to install the later release."""
    world.register(CODES[0], person(1, CODES[0]))
    _make_later_release(world.store)
    with pytest.raises(SyncdbError) as refused:
        open_store(world.store, SECRET, domains)
    assert "later release" in str(refused.value)
    assert "syncdb merge" not in str(refused.value), str(refused.value)
    with pytest.raises(SyncdbError, match="later release"):
        merge.merge(world.store, [], SECRET, domains)


def test_an_upgrade_that_waited_for_a_later_release_upgrading_meanwhile_never_turns_its_version_back(
        world, domains):
    """Two releases at one office (a new `serve` while an old nightly `merge` runs): the older one
    checked the version before waiting for the write lock, then set its own, older version over
    the later release's and ran its own steps on a store it does not know."""
    for n in range(2):
        world.insert(CODES[0], person(n, CODES[0]))
    world.push(CODES[0])
    merge.merge(world.store, world.bundles, SECRET, domains)
    make_earlier_release(world.store)
    holder = _held(world.store)
    thread, outcome = _in_thread(lambda: migrations.open_upgraded(world.store, SECRET, domains).close())
    backups = world.store / "backups"
    for _ in range(200):  # the backup copy is made before the upgrade waits for the lock
        if backups.is_dir() and any(backups.iterdir()):
            break
        time.sleep(0.05)
    time.sleep(0.5)
    holder.execute(f"PRAGMA user_version = {STORE_VERSION + 1}")  # the later release's upgrade
    holder.execute("COMMIT")
    holder.close()
    thread.join(60)
    conn = sqlite3.connect(world.store / "store.db")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    conn.close()
    assert version == STORE_VERSION + 1, "the later release's store was numbered back to this release's"
    assert isinstance(outcome[0], SyncdbError) and "later release" in str(outcome[0]), outcome


def test_an_upgrade_on_a_disk_too_full_for_its_backup_changes_nothing_and_leaves_no_half_copy(
        tmp_path, domains):
    """The backup copy comes first: a disk that cannot hold it stops the upgrade before the store is
    touched, says what to do, and leaves no partial copy behind to be taken for a good one."""
    from conftest import Community
    from test_full_disk import SmallDisk
    from syncdb import community as community_lib, workdir

    disk = SmallDisk(tmp_path / "office-disk", "24m")
    try:
        store = disk.path / "office"
        migrations.init(store, SECRET)
        folder = tmp_path / "community"
        workdir.create(folder, domains)
        office.enroll(store, CODES[0], community_lib.init(folder, CODES[0], store / "office.pub.json", domains,
                                                          SECRET))
        c = Community(folder, CODES[0], store, domains, SECRET)
        c.add_persons(2000)
        merge.merge(store, [c.export().path], SECRET, domains)
        make_earlier_release(store)
        size = (store / "store.db").stat().st_size
        assert size > 400_000
        before = (store / "store.db").read_bytes()
        disk.fill(leave=size // 4)
        with pytest.raises(SyncdbError, match="free some space") as full:
            merge.merge(store, [], SECRET, domains)
        assert "Traceback" not in str(full.value)
        assert (store / "store.db").read_bytes() == before
        assert not (store / "backups").exists() or not list((store / "backups").iterdir())
        disk.free()
        merge.merge(store, [], SECRET, domains)
        (backup,) = (store / "backups").iterdir()
        assert backup.read_bytes()[:16] == b"SQLite format 3\0"
        with open_store(store, SECRET, domains) as st:
            assert st.conn.execute("SELECT count(*) FROM huji__persons").fetchone() == (2000,)
    finally:
        disk.unmount()


KILL_INSIDE_A_RESOLUTION = """
import os, signal, sys
from conftest import SECRET
from syncdb import resolve
from syncdb.schema import load_domains
from syncdb.store import open_store

store = open_store(sys.argv[1], SECRET, load_domains(None), write=True)
def kill(statement):
    if statement.startswith("INSERT INTO applied"):  # the office bundle written, recorded, merged: not committed
        os.kill(os.getpid(), signal.SIGKILL)
store.conn.set_trace_callback(kill)
resolve.settle(store, int(sys.argv[2]), keep=sys.argv[3])
"""


def test_a_resolution_killed_before_its_commit_leaves_a_file_nothing_reads_and_the_next_one_takes_its_number(
        world, domains):
    """SIGKILL after the office bundle is in the inbox and before the transaction commits: the file
    is an orphan. Nothing lists, merges or serves it; the next resolution takes its number."""
    import os
    import signal
    import subprocess
    import sys

    from syncdb import audit, bundles

    world.register(CODES[0], person(1, CODES[0]))
    world.both_rename(CODES[0], 1, "王小名", "王晓明")
    with open_store(world.store, SECRET, domains) as store:
        (conflict,) = [c for c in queue.items(store) if c["column"] == "name"]
        office_code = store.office_code
    orphan = office.inbox_dir(world.store) / bundle.file_name(office_code, 2)
    killed = subprocess.run([sys.executable, "-c", KILL_INSIDE_A_RESOLUTION, str(world.store), str(conflict["id"]),
                             CODES[0]], cwd=os.path.dirname(__file__), capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert orphan.exists()
    orphan_bytes = orphan.read_bytes()

    summary = merge.merge(world.store, [], SECRET, domains)
    assert summary.applied == 0 and not summary.refused and not summary.held
    assert not [e for e in bundles.listing(world.store, domains) if e.origin == office_code and e.sequence == 2]
    with open_store(world.store, SECRET, domains) as store:
        assert conflict["id"] in [c["id"] for c in queue.items(store)], "the killed resolution was applied"
        assert store.conn.execute("SELECT count(*) FROM received WHERE origin = ?", (office_code,)).fetchone() == (1,)
    with open_store(world.store, SECRET, domains, write=True) as store:
        resolve.settle(store, conflict["id"], keep=office_code)
    assert orphan.read_bytes() != orphan_bytes, "the orphan was kept under the name of a recorded bundle"
    with open_store(world.store, SECRET, domains) as store:
        assert conflict["id"] not in [c["id"] for c in queue.items(store)]
        assert audit.verify(store) >= 1
