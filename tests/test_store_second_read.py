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
