"""A store and a community made with the previous release's schemas upgrade with nothing lost (issue 11).

tests/schemas_previous/ holds the schema files as the previous release shipped
them (huji, shebao, minzheng and liudong version 1, with liudong.rentals).
An office and two communities sync under them; then the office store is
upgraded by its next merge (migrations.open_upgraded) and the communities by
`syncdb community upgrade`, to the shipped schemas. Every record and the open
conflict are compared decrypted, the new columns are empty, and a push made
after the upgrade merges cleanly.
"""

import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from stdnum.cn import ric

from conftest import SECRET, World, snapshot
from syncdb import merge, resolve, workdir
from syncdb.cli import cli
from syncdb.schema import load_domains
from syncdb.store import table_name
from syncdb.workdir_upgrade import upgrade

PREVIOUS = Path(__file__).parent / "schemas_previous"
A, B = "441900003001", "441900003002"


def id_number(birth: str, serial: str) -> str:
    body = f"441900{birth}{serial}"
    return body + ric.calc_check_digit(body + "0")


HEAD = id_number("19700304", "011")  # male: the 17th digit is odd
WIFE = id_number("19720506", "022")
MIGRANT = id_number("19950101", "031")


def rows_of(path: Path, table: str, order: str = "rowid") -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT * FROM [{table}] ORDER BY {order}").fetchall()
    finally:
        conn.close()


def columns_of(path: Path, table: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[1] for row in conn.execute(f"PRAGMA table_info([{table}])")]
    finally:
        conn.close()


@pytest.fixture
def previous(tmp_path):
    folder = tmp_path / "previous-schemas"
    shutil.copytree(PREVIOUS, folder)
    return load_domains(folder)


@pytest.fixture
def synced(tmp_path, previous, monkeypatch):
    """Two communities and their office, synced under the previous schemas, with one open conflict."""
    with monkeypatch.context() as patch:
        patch.setenv("SYNCDB_SCHEMAS", str(tmp_path / "previous-schemas"))  # office init makes the store for them
        world = World(tmp_path, previous, codes=[A, B], community_domains=("huji", "liudong"))
    huji = world.connect(A)
    with huji:
        huji.execute("INSERT INTO households VALUES ('H001', 'family', ?, '东莞市南城街道宏图路8号', ?)", (HEAD, A))
        huji.executemany(
            "INSERT INTO persons (id_number, name, sex, ethnicity, birth_date, household_no, relationship, "
            "marital_status, phone, address, community_code, status) VALUES (?, ?, ?, '01', ?, 'H001', ?, '20', "
            "?, '东莞市南城街道宏图路8号', ?, 'normal')",
            [(HEAD, "陈志强", "1", "1970-03-04", "02", "13800138001", A),
             (WIFE, "林美华", "2", "1972-05-06", "12", "13800138002", A)])
    huji.close()
    liudong = world.connect(A, "liudong.db")
    with liudong:
        liudong.execute("INSERT INTO rentals VALUES ('F001', ?, '陈志强', '宏图路8号302', 3, ?)", (HEAD, A))
        liudong.execute("INSERT INTO migrants (id_number, name, residence_permit, house_id, arrival_date, phone, "
                        "community_code) VALUES (?, '黄小军', 'JZ2024001', 'F001', '2024-03-01', '13900139000', ?)",
                        (MIGRANT, A))
    liudong.close()
    world.push(A)
    world.insert(B, {"id_number": id_number("19800101", "041"), "name": "李四", "sex": "1", "ethnicity": "01",
                     "birth_date": "1980-01-01", "community_code": B, "status": "normal"})
    world.push(B)
    summary = merge.merge(world.store, world.bundles, SECRET, previous)
    assert summary.applied == 2 and not summary.rejected
    # The office and the community rename the wife at once: name is `manual`, so it waits for a person.
    world.sql(A, "UPDATE persons SET name = '林美花' WHERE id_number = ?", (WIFE,))
    resolve.office_edit(world.store, SECRET, previous, [
        {"table": "huji.persons", "key": {"id_number": WIFE}, "cells": {"name": "林梅华"}}])
    world.push(A)
    assert merge.merge(world.store, world.bundles[-1:], SECRET, previous).opened == 1
    return world


def test_a_community_upgrades_with_nothing_lost(synced, previous):
    shipped = load_domains()
    folder = synced.folders[A]
    before = {(db, t): rows_of(folder / db, t) for db, t in
              [("huji.db", "households"), ("huji.db", "persons"), ("liudong.db", "rentals"), ("liudong.db", "migrants")]}
    done = upgrade(folder, shipped)
    assert done.added["huji.persons"] == list(shipped["huji"].tables["persons"].columns)[12:]
    assert done.added["huji.households"] == ["address_code"]
    assert "liudong.rentals" in done.unsynced and "liudong.migrants.residence_permit" in done.unsynced
    assert any(line.startswith("liudong.migrants: sex, birth_date must be filled in its 1 record(s)")
               for line in done.empty_required)
    assert not done.made_databases  # only with create_databases
    for (db, table), rows in before.items():
        after = rows_of(folder / db, table)
        width = len(rows[0])
        assert [row[:width] for row in after] == rows  # every value kept, in its column
        assert all(value is None for row in after for value in row[width:])  # the new columns are empty
    # The rows that no schema names any more are still there to read.
    assert rows_of(folder / "liudong.db", "rentals")[0][:2] == ("F001", HEAD)
    again = upgrade(folder, shipped)
    assert not again.changed and again.captured == ["huji.db", "liudong.db"]


def test_a_store_upgrades_with_nothing_lost_and_keeps_rentals(synced, previous):
    shipped = load_domains()
    store = synced.store
    rows, conflicts = snapshot(store, previous)
    raw_rentals = rows_of(store / "store.db", "liudong__rentals", "_key")
    assert len(conflicts) == 1 and raw_rentals
    upgraded_rows, upgraded_conflicts = snapshot(store, shipped)  # open_upgraded, as the next merge runs it
    assert upgraded_conflicts == conflicts
    assert list((store / "backups").glob("store-v*.db"))  # a store holding records is copied first
    for (table, key), (exists, cells) in rows.items():
        if table == "liudong.rentals":
            continue  # no longer in the schemas: kept as it was, below
        new_exists, new_cells = upgraded_rows[(table, key)]
        new_cells = dict(new_cells)
        assert new_exists == exists
        kept = {c: v for c, v in cells if c in new_cells}
        assert kept == {c: new_cells[c] for c in kept}
        assert all(new_cells[c] is None for c in new_cells if c not in dict(cells))
    # The rentals table and its rows (sealed values and versions) are exactly as they were.
    assert rows_of(store / "store.db", "liudong__rentals", "_key") == raw_rentals
    tables = {t for (t,) in sqlite3.connect(store / "store.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {table_name(t) for d in shipped.values() for t in d.tables.values()} <= tables


def test_a_push_after_the_upgrade_merges_cleanly(synced, previous):
    shipped = load_domains()
    rows, conflicts = snapshot(synced.store, previous)
    folder = synced.folders[A]
    # The community keeps the new 一标三实 domains beside its own two (its schemas folder holds these six).
    kept = {name: shipped[name] for name in ("huji", "liudong", "wangge", "dizhi", "fangwu", "danwei")}
    done = upgrade(folder, kept, create_databases=True)
    assert set(done.made_databases) == {"wangge.db", "dizhi.db", "fangwu.db", "danwei.db"}
    # The office and the community now load the shipped schemas.
    synced.all_domains = shipped
    synced.communities[A].domains = kept
    grid, address = A + "001", A + "000001"
    conn = synced.connect(A, "wangge.db")
    conn.execute("INSERT INTO grids (grid_code, name, community_code) VALUES (?, '宏图网格', ?)", (grid, A))
    conn.close()
    conn = synced.connect(A, "dizhi.db")
    conn.execute("INSERT INTO addresses (address_code, road, door_no, building, room, grid_code, community_code) "
                 "VALUES (?, '宏图路', '8号', '1栋', '302', ?, ?)", (address, grid, A))
    conn.close()
    synced.sql(A, "UPDATE persons SET education = '21', address_code = ? WHERE id_number = ?", (address, HEAD))
    synced.sql(A, "UPDATE households SET address_code = ? WHERE household_no = 'H001'", (address,))
    result = synced.push(A)
    assert result.held == []
    # The upgraded databases' logs are read as usual; only the new ones are compared in full, once.
    assert set(result.full_compares) == {"wangge", "dizhi", "fangwu", "danwei"}
    assert result.counts == {"huji.persons": {"insert": 0, "update": 1, "delete": 0},
                             "huji.households": {"insert": 0, "update": 1, "delete": 0},
                             "wangge.grids": {"insert": 1, "update": 0, "delete": 0},
                             "dizhi.addresses": {"insert": 1, "update": 0, "delete": 0}}
    summary = merge.merge(synced.store, synced.bundles[-1:], SECRET, shipped)
    assert (summary.applied, summary.rejected, summary.held, summary.opened) == (1, [], [], 0)
    after, after_conflicts = snapshot(synced.store, shipped)
    assert after_conflicts == conflicts  # the open conflict waits for a person, as before
    head = dict(after[("huji.persons", next(k for (t, k), (_, cells) in after.items()
                                             if t == "huji.persons" and dict(cells)["id_number"] == HEAD))][1])
    assert (head["name"], head["education"], head["address_code"]) == ("陈志强", "21", address)
    assert sum(1 for t, _ in after if t in ("wangge.grids", "dizhi.addresses")) == 2


def test_the_upgrade_command(synced):
    runner = CliRunner()
    result = runner.invoke(cli, ["community", "upgrade", str(synced.folders[B])])
    assert result.exit_code == 0, result.output
    assert "huji.persons: added former_name, native_place, education" in result.output
    assert "Change capture set up afresh in huji.db, liudong.db" in result.output
    again = runner.invoke(cli, ["community", "upgrade", str(synced.folders[B])])
    assert "already match the schemas; nothing to add" in again.output
    missing = runner.invoke(cli, ["community", "upgrade", str(synced.root / "bundles")])
    assert missing.exit_code == 1 and "holds no working database" in missing.output
