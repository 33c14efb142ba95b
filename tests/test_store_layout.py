"""The records' layout (store version 2): rowid tables whose blind key is a UNIQUE index.

A store made by release 1 kept each record table WITHOUT ROWID, keyed by
``_key``; its next merge copies it to STORE/backups/ and rebuilds each such
table in place, in the upgrade's one transaction, with every row, column and
index kept. The version-1 store is made here by writing release 1's CREATE
statements over a store this release made and merged into.
"""

import sqlite3
from pathlib import Path

import pytest

from conftest import CODES, SECRET, id_number, make_version_3, person, snapshot
from syncdb import audit, merge, migrations
from syncdb.store import STORE_VERSION, open_store, table_name

A, B = CODES[0], CODES[1]
# The side tables whose every row must survive the upgrade byte for byte.
KEPT = ["ledger", "ledger_head", "applied", "received", "conflicts", "frontier", "dominated", "rejected",
        "origin_clock", "outbound", "store_columns"]


def version_1_create(name: str, columns: list[str], id_columns: list[str]) -> list[str]:
    """Release 1's create_sql, as it was: the blind key the primary key of a WITHOUT ROWID table."""
    cols = ["[_key] BLOB PRIMARY KEY"] + [f"[{c}] {kind}".rstrip() for c, kind in columns]
    cols += [f"[{c}__bi] BLOB" for c in id_columns] + ["[_versions] TEXT NOT NULL", "[_exists] INTEGER NOT NULL"]
    sql = [f"CREATE TABLE [{name}] ({', '.join(cols)}) WITHOUT ROWID"]
    sql += [f"CREATE INDEX [{name}_{c}__bi] ON [{name}] ([{c}__bi])" for c in id_columns]
    return sql


def make_version_1(store: Path, domains) -> None:
    """Every record table as release 1 made it, each with its rows (each sensitive value sealed alone,
    as up to store version 3); the store numbered 1. huji.persons also keeps a column no schema
    declares (dropped from a schema file since): kept too."""
    make_version_3(store, domains)
    conn = sqlite3.connect(store / "store.db", isolation_level=None)
    conn.execute("BEGIN")
    for domain in domains.values():
        for table in domain.tables.values():
            name = table_name(table)
            columns = [(c.name, "BLOB" if c.sensitive else "") for c in table.columns.values()]
            conn.execute(f"ALTER TABLE [{name}] RENAME TO [{name}_now]")
            for index in [n for (n,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                    (f"{name}_now",))]:
                conn.execute(f"DROP INDEX [{index}]")
            for statement in version_1_create(name, columns, table.id_columns):
                conn.execute(statement)
            names = ", ".join(["[_key]"] + [f"[{c}]" for c, _kind in columns] + [f"[{c}__bi]" for c in table.id_columns]
                              + ["[_versions]", "[_exists]"])
            conn.execute(f"INSERT INTO [{name}] ({names}) SELECT {names} FROM [{name}_now]")
            conn.execute(f"DROP TABLE [{name}_now]")
    conn.execute("ALTER TABLE huji__persons ADD COLUMN retired TEXT")
    conn.execute("UPDATE huji__persons SET retired = 'kept ' || hex(_key)")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("COMMIT")
    conn.close()


def without_rowid(conn: sqlite3.Connection, name: str) -> bool:
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return sql.rstrip().upper().endswith("WITHOUT ROWID")


def key_index(conn: sqlite3.Connection, name: str) -> list[str]:
    """The UNIQUE indexes over exactly [_key] of a table."""
    return [index for _, index, unique, *_ in conn.execute(f"PRAGMA index_list([{name}])")
            if unique and [c for *_, c in conn.execute(f"PRAGMA index_info([{index}])")] == ["_key"]]


def raw(conn: sqlite3.Connection, name: str) -> list[tuple]:
    """A table's rows as stored (sealed values and all), in a fixed order."""
    return sorted(conn.execute(f"SELECT * FROM [{name}]").fetchall(), key=repr)


def record_tables(domains) -> list[str]:
    return [table_name(t) for d in domains.values() for t in d.tables.values()]


def test_a_new_store_keeps_records_in_rowid_tables_and_an_update_keeps_the_rowid(world, domains):
    world.register(A, person(1, A), person(2, A))
    with open_store(world.store, SECRET, domains) as store:
        conn = store.conn
        assert conn.execute("PRAGMA user_version").fetchone() == (STORE_VERSION,) == (5,)
        for name in record_tables(domains):
            assert not without_rowid(conn, name) and key_index(conn, name) == [f"{name}__key"], name
        indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        # A blind-ID index where the ID number is not the whole key; keyed by it alone, the key index serves.
        assert "shebao__enrolments_id_number__bi" in indexes and "huji__persons_id_number__bi" not in indexes
        key = store.blind_key(store.table("huji.persons"), [id_number(1)])
        (rowid,) = conn.execute("SELECT rowid FROM huji__persons WHERE _key = ?", (key,)).fetchone()
    world.sql(A, "UPDATE persons SET phone = '13900000001' WHERE id_number = ?", (id_number(1),))
    world.push(A)
    assert merge.merge(world.store, world.bundles[-1:], SECRET, domains).changes == 1
    with open_store(world.store, SECRET, domains) as store:
        (found,) = store.conn.execute("SELECT rowid FROM huji__persons WHERE _key = ?", (key,)).fetchone()
        assert found == rowid  # upserted where it was, not deleted and appended
        assert store.read_row(store.table("huji.persons"), key)["phone"] == "13900000001"
        assert store.conn.execute("SELECT count(*) FROM huji__persons").fetchone() == (2,)


@pytest.fixture
def version_1(world, domains):
    """A store release 1 left: records, a tombstone, open conflicts with their frontiers, the ledger."""
    world.register(A, *[person(n, A) for n in range(1, 6)])
    world.register(B, person(1, B))  # registered in two communities at once: an open conflict
    world.both_rename(A, 2, at_office="居民二", at_community="居民贰")  # manual: queued for a person
    world.sql(A, "DELETE FROM persons WHERE id_number = ?", (id_number(5),))
    world.push(A, confirm_deletes=True)
    merge.merge(world.store, world.bundles[-1:], SECRET, domains)
    before = snapshot(world.store, domains)
    assert len(before[1]) >= 2, "the sample needs open conflicts"
    make_version_1(world.store, domains)
    return world, before


def test_a_version_1_store_is_rebuilt_in_place_by_the_next_merge_with_nothing_lost(version_1, domains):
    world, before = version_1
    conn = sqlite3.connect(world.store / "store.db")
    assert without_rowid(conn, "huji__persons")
    kept = {name: raw(conn, name) for name in KEPT + record_tables(domains)}
    assert len(kept["huji__persons"]) == 5 and kept["frontier"] and kept["ledger"]
    conn.close()

    merge.merge(world.store, [], SECRET, domains)

    (backup,) = (world.store / "backups").glob("store-v1-*.db")
    old = sqlite3.connect(backup)
    assert old.execute("PRAGMA user_version").fetchone() == (1,) and without_rowid(old, "huji__persons")
    assert raw(old, "huji__persons") == kept["huji__persons"]
    old.close()
    with open_store(world.store, SECRET, domains) as store:
        conn = store.conn
        assert conn.execute("PRAGMA user_version").fetchone() == (STORE_VERSION,)
        for name in record_tables(domains):
            assert not without_rowid(conn, name) and key_index(conn, name) == [f"{name}__key"], name
        assert {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                           "AND tbl_name = 'huji__persons'")} >= {"huji__persons__key"}
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'huji__persons_id_number__bi'").fetchone() is None
        for name in KEPT:
            assert raw(conn, name) == kept[name], name  # every row, byte for byte
        # The records: every row, its values sealed anew together (store version 4; the snapshot below
        # compares them), its blind key, blind IDs, tombstone and the column no schema declares as they were.
        for name in record_tables(domains):
            assert len(raw(conn, name)) == len(kept[name]), name
        assert sorted(conn.execute("SELECT _key, _exists, retired FROM huji__persons").fetchall()) == sorted(
            (row[0], row[-2], row[-1]) for row in kept["huji__persons"])
        assert conn.execute("SELECT count(*) FROM huji__persons WHERE retired LIKE 'kept %'").fetchone() == (5,)
        assert audit.verify(store) == conn.execute("SELECT sum(changes) FROM applied").fetchone()[0]
        (plan,) = [row[-1] for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM shebao__enrolments WHERE id_number__bi = ?", (b"x" * 16,))]
        assert "id_number__bi" in plan
    assert snapshot(world.store, domains) == before

    # Merges go on: an update of a stored record, a new one, and the duplicate closing by itself.
    world.sql(A, "UPDATE persons SET phone = '13900000003' WHERE id_number = ?", (id_number(3),))
    world.insert(A, person(9, A))
    world.push(A)
    world.sql(B, "UPDATE persons SET status = 'moved_out' WHERE id_number = ?", (id_number(1),))
    world.push(B)
    summary = merge.merge(world.store, world.bundles[-2:], SECRET, domains)
    assert summary.applied == 2 and not summary.rejected and summary.closed >= 1
    with open_store(world.store, SECRET, domains) as store:
        table = store.table("huji.persons")
        assert store.read_row(table, store.blind_key(table, [id_number(3)]))["phone"] == "13900000003"
        assert store.conn.execute("SELECT count(*) FROM huji__persons").fetchone() == (6,)
        assert audit.verify(store) > 0


def test_an_upgrade_that_fails_midway_leaves_the_version_1_store_as_it_was(version_1, domains):
    world, _ = version_1
    conn = sqlite3.connect(world.store / "store.db", isolation_level=None)
    before = {name: raw(conn, name) for name in record_tables(domains)}
    # The last table rebuilt cannot be: the earlier ones, already rebuilt, must come back as they were.
    last = record_tables(domains)[-1]
    conn.execute(f"CREATE VIEW [{last}__rowid] AS SELECT 1")
    conn.close()
    with pytest.raises(Exception, match="already exists"):
        migrations.open_upgraded(world.store, SECRET, domains)
    conn = sqlite3.connect(world.store / "store.db")
    assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    assert all(without_rowid(conn, name) for name in record_tables(domains))
    assert {name: raw(conn, name) for name in record_tables(domains)} == before
    conn.close()
