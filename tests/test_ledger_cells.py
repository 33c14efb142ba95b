"""The audit ledger names every cell a change moved, not only those it carried.

A change to one cell can make another cell's winner change: when a community withdraws its claim to
a record it registered twice with another community, the other holds it from then on, and its versions
of the record's other cells, kept aside until then, win. The checks after a merge take an update for
the cells the ledger names (`Store.cells_changed_since`, `checks.watched_changes`): a cell moved but
not named was a change they never looked at, and the dashboard did not show it.
"""

from conftest import CODES, SECRET, id_number, person, snapshot
from syncdb import checks, merge, migrations
from syncdb.checks import Check


def _the_record(rows):
    ((_key, cells),) = rows.items()
    return dict(cells[1])


def test_a_change_that_hands_a_record_to_another_community_names_the_cells_it_moved(world, domains):
    w = world
    a, b = CODES[0], CODES[1]
    w.insert(a, person(8, a, phone="13800000001"))
    w.insert(b, person(8, b, phone="13900000002"))
    w.push(a)
    w.push(b)
    merge.merge(w.store, w.bundles, SECRET, domains)
    rows, _conflicts = snapshot(w.store, domains)
    assert _the_record(rows)["community_code"] == a and _the_record(rows)["phone"] == "13800000001"
    with migrations.open_upgraded(w.store, SECRET, domains) as store:
        point = store.change_point()

    w.sql(a, "UPDATE persons SET status = 'moved_out'")  # a lets it go: b's registration holds it now
    w.push(a)
    merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    rows, _conflicts = snapshot(w.store, domains)
    assert _the_record(rows)["community_code"] == b and _the_record(rows)["phone"] == "13900000002"

    with migrations.open_upgraded(w.store, SECRET, domains) as store:
        ((table, changed),) = store.cells_changed_since(point).items()
        (cells,) = changed.values()
        assert table == "huji.persons"
        assert {"status", "community_code", "phone"} <= cells, cells
        # And a check watching the community code looks at the record again after this merge.
        watching = Check(name="watching", title="t", reads=("huji.persons",), subject="person",
                         subjects_of=lambda table, record: [record["id_number"]],
                         find=lambda records, subjects, settings: [],
                         watches={"huji.persons": frozenset({"community_code"})})
        assert checks.watched_changes(store.cells_changed_since(point), watching) == {
            "huji.persons": {store.blind_key(store.table("huji.persons"), [id_number(8)])}}


def test_the_published_record_follows_a_record_handed_to_another_community(world, domains):
    """The refresh writes the cells the ledger says moved: those a change carried and those that moved with
    them. After a claim is withdrawn, both published databases are what a full build of the store makes."""
    import sqlite3

    from syncdb import projection
    from syncdb.store import open_store

    def databases():
        return [sqlite3.connect(":memory:", isolation_level=None) for _ in range(2)]

    def contents(conn):
        tables = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: sorted((repr(tuple(r)) for r in conn.execute(f"SELECT * FROM [{n}]"))) for n in tables}

    w = world
    a, b = CODES[0], CODES[1]
    w.insert(a, person(8, a, phone="13800000001", name="王一"))
    w.insert(b, person(8, b, phone="13900000002", name="王二"))
    w.insert(a, person(9, a))
    w.push(a)
    w.push(b)
    merge.merge(w.store, w.bundles, SECRET, domains)
    published = projection.Published(*databases())
    with open_store(w.store, SECRET, domains) as store:
        published.update(store)
        before = published.point
    w.sql(a, "UPDATE persons SET status = 'moved_out' WHERE id_number = ?", (id_number(8),))
    w.push(a)
    merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    with open_store(w.store, SECRET, domains) as store:
        assert published.update(store) == 1 and not published.built and published.point > before
        masked, plain = databases()
        projection.fill(store, masked, plain)
    assert contents(published.plain) == contents(plain)
    assert contents(published.masked) == contents(masked)
    (row,) = published.plain.execute("SELECT [社区代码], [联系电话] FROM [户籍_人员] WHERE [联系电话] LIKE '139%'")
    assert row == (b, "13900000002")
