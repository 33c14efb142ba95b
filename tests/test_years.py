"""A night costs what it changed, not what the years kept (issue 14: "nothing that slows down as the
years add up").

The office keeps its history for good: the bundles received and applied, the audit ledger, the
records refused, the conflicts closed, the versions set aside. Each routine read of it is counted
here in SQLite's virtual machine steps (a progress handler), on the same store before and after
years of history are written under it: the count may not grow with that history. A read that
goes through a whole history table (as the merge, `syncdb status`, the dashboard and the conflict
list each did) costs hundreds of times more on the aged copy and fails. bench/years.py times the
same duties night after night.
"""

import shutil
import sqlite3

from conftest import CODES, SECRET, id_number, person
from syncdb import audit, bundles, conflicts, merge, migrations, office, pages, status

A = CODES[0]
NIGHTS = 200  # nights of history of each of a hundred communities in the aged copy; the fresh one has 1
STEP = 100  # VM instructions per count


def counted(conn: sqlite3.Connection, work) -> int:
    """SQLite VM steps (in hundreds) ``work()`` makes on ``conn``."""
    steps = [0]

    def count():
        steps[0] += 1
        return 0
    conn.set_progress_handler(count, STEP)
    try:
        work()
    finally:
        try:
            conn.set_progress_handler(None, STEP)
        except sqlite3.ProgrammingError:  # closed by ``work`` (bundles.listing closes its own)
            pass
    return steps[0]


def age(store_dir, nights: int) -> None:
    """History under the store's present, written with SQL: a hundred other communities enrolled, their
    bundles received and applied, ``nights`` each, and as many ledger entries dated years ago (ids below the
    chain's, so the chain goes on), records refused (by one community, and one long ago by another),
    conflicts closed and versions set aside."""
    conn = sqlite3.connect(store_dir / "store.db", isolation_level=None)
    old = "2021-03-01T02:00:00"
    conn.execute("BEGIN")
    bundles_of = [(f"4419000039{n % 100:02d}", n // 100 + 1) for n in range(100 * nights)]
    conn.executemany("INSERT INTO communities (code, public_key, key_id, enrolled, name) "
                     "SELECT ?, public_key, key_id, ?, NULL FROM communities WHERE code = ?",
                     ((f"4419000039{n:02d}", old, A) for n in range(100)))
    conn.executemany("INSERT INTO received (origin, sequence, sha256, file, received, changes) "
                     "VALUES (?, ?, 'x', ?, ?, 3)", ((o, s, f"{o}-{s}.bundle", old) for o, s in bundles_of))
    conn.executemany("INSERT INTO applied (origin, sequence, sha256, applied, changes, rejected) "
                     "VALUES (?, ?, 'x', ?, 3, 1)", ((o, s, old) for o, s in bundles_of))
    conn.executemany("INSERT INTO ledger (id, at, bundle, origin, changes, body, mac) VALUES (?, ?, ?, ?, 1, ?, ?)",
                     ((-n - 1, old, f"{o}-{s}.bundle", o, b"\0" * 300, b"m" * 32) for n, (o, s) in enumerate(bundles_of)))
    conn.executemany("INSERT INTO rejected (origin, sequence, tbl, key, shown_key, field, why, at) "
                     "VALUES (?, ?, 'huji.persons', ?, 'x', 'name', 'why', ?)",
                     ((o if n == 0 else A, s, n.to_bytes(16, "big"), old) for n, (o, s) in enumerate(bundles_of)))
    conn.executemany("INSERT INTO conflicts (tbl, key, col, kind, candidates, winner, rule, status, opened, closed) "
                     "VALUES ('huji.persons', ?, 'name', 'manual', '[]', '', 'manual', 'closed', ?, ?)",
                     ((n.to_bytes(16, "big"), old, old) for n in range(len(bundles_of))))
    for side in ("frontier", "dominated"):
        extra = ", origin, value, deleted" if side == "frontier" else ""
        values = ", 'x', NULL, 0" if side == "frontier" else ""
        conn.executemany(f"INSERT INTO {side} (tbl, key, col, version{extra}) VALUES ('huji.persons', ?, 'name', ?{values})",
                         ((n.to_bytes(16, "big"), f"v{n}") for n in range(len(bundles_of))))
    conn.execute("COMMIT")
    conn.close()


def two_stores(world, tmp_path):
    """The office after its first nights with a hundred communities' first night under it, and a
    copy with their two hundred nights: the same communities, only more history."""
    aged = tmp_path / "aged-office"
    shutil.copytree(world.store, aged)
    age(world.store, 1)
    age(aged, NIGHTS)
    return world.store, aged


def each(stores, domains, read) -> tuple[int, int]:
    """Steps of ``read(store, store_dir)`` on the fresh store and on the aged one."""
    out = []
    for store_dir in stores:
        with migrations.open_upgraded(store_dir, SECRET, domains) as store:
            out.append(counted(store.conn, lambda: read(store, store_dir)))
    return tuple(out)


def bounded(fresh: int, aged: int) -> bool:
    return aged <= fresh * 1.5 + 20


def test_routine_reads_of_the_history_do_not_grow_with_it(world, tmp_path, monkeypatch):
    world.register(A, person(1, A), person(2, A))
    world.register(CODES[1], person(3, CODES[1]))
    world.sql(A, "UPDATE persons SET phone = '13900000001' WHERE id_number = ?", (id_number(1),))
    world.push(A)  # the night's bundle, received below and waiting
    stores = two_stores(world, tmp_path)
    for store_dir in stores:
        assert office.receive(store_dir, world.bundles[-1].read_bytes()).status == "accepted"
    recent = "2026-01-01T00:00:00"
    reads = {
        "the merge's queue of bundles not applied": lambda st, d: office.not_applied(st.conn, "sequence, file"),
        "bundles held (status, bundles list)": lambda st, d: bundles.held(st.conn, d, st.domains),
        "the open conflicts": lambda st, d: conflicts.items(st),
        "the dashboard's recent changes": lambda st, d: list(audit.changes_after(st, recent)),
        "status's communities": lambda st, d: status._communities(st.conn, {}, 0, status.Report("x")),
    }
    for what, read in reads.items():
        fresh, aged = each(stores, world.all_domains, read)
        assert bounded(fresh, aged), f"{what}: {fresh} hundred VM steps fresh, {aged} aged"
    # `syncdb bundles list`: each community's last bundle and what waits (through its own connection).
    steps = []
    for store_dir in stores:
        conn = bundles.read_only(store_dir)
        monkeypatch.setattr(bundles, "read_only", lambda _folder, conn=conn: conn)
        steps.append(counted(conn, lambda: bundles.listing(store_dir, world.all_domains)))
        monkeypatch.undo()
    assert bounded(*steps), f"bundles list: {steps[0]} hundred VM steps fresh, {steps[1]} aged"
    # Two reads sum up all the years, each through an index of a few bytes an entry, under so many VM
    # steps an entry (they read the history's rows, one look-up each, and status read the refused
    # records' whole table backwards for each community):
    # - the sync page's changes and rejected records of each community, over its bundles: about 6
    #   (reading each community's received bundles again for their last, about 15);
    # - `syncdb status`'s refused records of each community, and its latest few by the same index:
    #   about 14 (without the index, 24).
    history = 100 * NIGHTS
    for what, read, per_entry in (
        ("the sync page", lambda st, d: pages.sync_status(st, d), 10),
        ("status's refused records", lambda st, d: status._rejected(st.conn, d, {}, {}, status.Report("x")), 17),
    ):
        fresh, aged = each(stores, world.all_domains, read)
        assert aged - fresh <= history * per_entry / STEP, f"{what}: {fresh} hundred VM steps fresh, {aged} aged"
    # The night's merge itself: the bundle waiting in each inbox, applied alike.
    steps = []
    for store_dir in stores:
        with migrations.open_upgraded(store_dir, SECRET, world.all_domains) as store:
            summary = merge.Summary()
            steps.append(counted(store.conn, lambda: merge.apply_inbox(store, store_dir, summary)))
            assert summary.applied == 1 and summary.changes == 1, summary.lines()
    assert bounded(*steps), f"the night's merge: {steps[0]} hundred VM steps fresh, {steps[1]} aged"


def test_the_dashboard_reads_the_changes_since_a_time_even_with_a_clock_set_back(world, tmp_path):
    """Entries are found by the time index from the first at or after the time on, and one written
    under a clock set back (an earlier time after a later one) is still left out."""
    world.register(A, person(1, A))
    world.register(A, person(2, A))
    world.register(A, person(3, A))
    conn = sqlite3.connect(world.store / "store.db", isolation_level=None)
    ids = [i for (i,) in conn.execute("SELECT id FROM ledger ORDER BY id")]
    assert len(ids) == 3
    for i, at in zip(ids, ("2026-05-01T00:00:00", "2026-06-01T00:00:00", "2026-04-01T00:00:00")):
        conn.execute("UPDATE ledger SET at = ? WHERE id = ?", (at, i))
    conn.close()
    with migrations.open_upgraded(world.store, SECRET, world.all_domains) as store:
        def keys(at):
            return [change["key"] for _origin, change in audit.changes_after(store, at)]
        first, second, third = keys("2026-03-01T00:00:00")  # each bundle's one resident, in the ledger's order
        assert keys("2026-05-01T00:00:00") == [first, second]  # the third's clock was set back
        assert keys("2026-05-15T00:00:00") == [second]
        assert list(audit.changes_after(store, "2026-07-01T00:00:00")) == []


def test_an_earlier_store_gets_the_history_indexes(world):
    """A store of version 4 (the release before) is brought up with the indexes by the next merge."""
    world.register(A, person(1, A))
    conn = sqlite3.connect(world.store / "store.db", isolation_level=None)
    conn.execute("DROP INDEX ledger_by_time")
    conn.execute("DROP INDEX rejected_by_origin")
    conn.execute("DROP INDEX applied_sums")
    conn.execute("PRAGMA user_version = 4")
    conn.close()
    merge.merge(world.store, [], SECRET, world.all_domains)
    conn = sqlite3.connect(world.store / "store.db")
    names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ledger_by_time", "rejected_by_origin", "applied_sums"} <= names
    assert conn.execute("PRAGMA user_version").fetchone() == (5,)
    conn.close()
