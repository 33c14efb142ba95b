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
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from stdnum.cn import ric

from conftest import SECRET, World, snapshot
from syncdb import merge, resolve, workdir
from syncdb.cli import cli
from syncdb.errors import SyncdbError
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


# -- minzheng version 2: 低保 and 特困 per household (issue 11) -----------------------------------

CHILD = id_number("20000101", "051")  # male
ELDER = id_number("19400101", "061")  # male, lives alone
LONER = id_number("19600101", "071")  # male, registered with no household number
ADDRESS = "东莞市南城街道宏图路8号"
# The per-person rows version 1 allowed: (id_number, benefit_type, status, amount, start, end).
BENEFITS_V1 = [
    (HEAD, "dibao", "active", 800.0, "2020-01-01", None),
    (WIFE, "dibao", "active", 800.0, "2020-03-01", None),
    (CHILD, "dibao", "active", 800.0, "2021-01-01", None),  # one amount for the household
    (ELDER, "tekun", "active", 1500.0, "2019-05-01", None),
    (ELDER, "elderly", "active", 200.0, "2020-01-01", None),  # person-level: stays
    (LONER, "dibao", "active", 900.0, "2022-01-01", None),  # no household: stays, reported
    (HEAD, "veteran", "active", 1200.0, "2015-01-01", None),  # 优抚: kept, counted
]
MOVED = {(HEAD, "dibao"), (WIFE, "dibao"), (CHILD, "dibao"), (ELDER, "tekun")}


@pytest.fixture
def with_dibao(tmp_path, previous, monkeypatch):
    """One community keeping 户籍 and 民政 under the previous schemas, its per-person 低保 at the office."""
    with monkeypatch.context() as patch:
        patch.setenv("SYNCDB_SCHEMAS", str(tmp_path / "previous-schemas"))
        world = World(tmp_path, previous, codes=[A], community_domains=("huji", "minzheng"))
    huji = world.connect(A)
    with huji:
        huji.executemany("INSERT INTO households VALUES (?, 'family', ?, ?, ?)",
                         [("H001", HEAD, ADDRESS, A), ("H002", ELDER, ADDRESS, A)])
        huji.executemany(
            "INSERT INTO persons (id_number, name, sex, ethnicity, birth_date, household_no, relationship, "
            "address, community_code, status) VALUES (?, ?, '1', '01', ?, ?, ?, ?, ?, 'normal')",
            [(HEAD, "陈志强", "1970-03-04", "H001", "02", ADDRESS, A),
             (CHILD, "陈浩", "2000-01-01", "H001", "20", ADDRESS, A),
             (ELDER, "王伯", "1940-01-01", "H002", "02", ADDRESS, A),
             (LONER, "李明", "1960-01-01", None, None, ADDRESS, A)])
        huji.execute("INSERT INTO persons (id_number, name, sex, ethnicity, birth_date, household_no, relationship, "
                     "address, community_code, status) VALUES (?, '林美华', '2', '01', '1972-05-06', 'H001', '12', "
                     "?, ?, 'normal')", (WIFE, ADDRESS, A))
    huji.close()
    minzheng = world.connect(A, "minzheng.db")
    with minzheng:
        minzheng.executemany("INSERT INTO benefits VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [row + (A,) for row in BENEFITS_V1])
    minzheng.close()
    world.push(A)
    summary = merge.merge(world.store, world.bundles, SECRET, previous)
    assert summary.applied == 1 and not summary.rejected
    return world


def test_per_person_dibao_becomes_household_records_and_nothing_is_dropped(with_dibao):
    shipped = load_domains()
    folder = with_dibao.folders[A]
    done = upgrade(folder, {d: shipped[d] for d in ("huji", "minzheng")})
    assert done.moved_rows == 4 and done.changed
    assert rows_of(folder / "minzheng.db", "assistance") == [
        ("H001", "1", "active", 800.0, 3, "2020-01-01", None, A),
        ("H002", "2", "active", 1500.0, 1, "2019-05-01", None, A)]
    left = {r[:2] for r in rows_of(folder / "minzheng.db", "benefits")}
    assert left == {(ELDER, "elderly"), (LONER, "dibao"), (HEAD, "veteran")}
    # Every row of version 1 is still per person, or counted in its household's record.
    assert len(left) + sum(r[4] for r in rows_of(folder / "minzheng.db", "assistance")) == len(BENEFITS_V1)
    notes = "\n".join(done.assistance)
    assert "4 per-person 低保/特困 record(s) of minzheng.benefits moved into 2 household record(s)" in notes
    assert f"1 低保/特困 record(s) left per person ({LONER[:6]}" in notes and "no household in huji.db" in notes
    assert "1 优抚 (veteran) record(s) kept as they were" in notes
    again = upgrade(folder, {d: shipped[d] for d in ("huji", "minzheng")})
    assert again.moved_rows == 0 and not again.changed
    assert len(rows_of(folder / "minzheng.db", "assistance")) == 2


def test_a_failed_move_leaves_every_row_per_person(with_dibao):
    """The household records and the deletions are one transaction: a write failing half-way (here
    the community's own trigger refusing the second household) leaves minzheng.db as it was."""
    shipped = load_domains()
    folder = with_dibao.folders[A]
    conn = with_dibao.connect(A, "minzheng.db")
    conn.execute(shipped["minzheng"].tables["assistance"].create_sql())
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON assistance WHEN NEW.household_no = 'H002' "
                 "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    conn.close()
    before = rows_of(folder / "minzheng.db", "benefits")
    with pytest.raises(SyncdbError, match="upgraded whole or not at all"):
        upgrade(folder, {d: shipped[d] for d in ("huji", "minzheng")})
    assert rows_of(folder / "minzheng.db", "benefits") == before
    assert rows_of(folder / "minzheng.db", "assistance") == []


def test_after_the_next_push_the_store_holds_the_household_records(with_dibao, previous):
    """The office takes the deletions too, though 'dibao' is no benefit_type code now (merge judged a
    deletion's codes and rejected them, so the per-person rows stayed in the store beside the household's)."""
    shipped = load_domains()
    kept = {d: shipped[d] for d in ("huji", "minzheng")}
    before, _ = snapshot(with_dibao.store, previous)
    old = {(dict(cells)["id_number"], dict(cells)["benefit_type"]): dict(cells)
           for (table, _), (exists, cells) in before.items() if table == "minzheng.benefits" and exists}
    assert set(old) == {row[:2] for row in BENEFITS_V1}
    upgrade(with_dibao.folders[A], kept)
    with_dibao.all_domains, with_dibao.communities[A].domains = shipped, kept
    result = with_dibao.push(A)
    assert result.held == [] and result.deletes_held == []
    assert result.counts == {"minzheng.benefits": {"insert": 0, "update": 0, "delete": 4},
                             "minzheng.assistance": {"insert": 2, "update": 0, "delete": 0}}
    summary = merge.merge(with_dibao.store, with_dibao.bundles[-1:], SECRET, shipped)
    assert (summary.applied, summary.rejected, summary.held, summary.opened) == (1, [], [], 0)
    after, _ = snapshot(with_dibao.store, shipped)
    live = {t: [dict(cells) for (table, _), (exists, cells) in after.items() if table == t and exists]
            for t in ("minzheng.benefits", "minzheng.assistance", "huji.persons")}
    households = {p["id_number"]: p["household_no"] for p in live["huji.persons"]}
    assistance = {(a["household_no"], a["assistance_type"]): a for a in live["minzheng.assistance"]}
    assert {k: (a["monthly_amount"], a["members"], a["status"]) for k, a in assistance.items()} == {
        ("H001", "1"): (800.0, 3, "active"), ("H002", "2"): (1500.0, 1, "active")}
    still = {(b["id_number"], b["benefit_type"]) for b in live["minzheng.benefits"]}
    assert still == set(old) - MOVED
    # Every per-person row the office held is still there, or counted in its household's record.
    kinds = {"dibao": "1", "tekun": "2"}
    for key in set(old) - still:
        assert key in MOVED and (households[key[0]], kinds[key[1]]) in assistance
    counted = Counter((households[i], kinds[t]) for i, t in set(old) - still)
    assert counted == {k: a["members"] for k, a in assistance.items()}
    assert {k: v for k, v in old.items() if k in still} == {
        (b["id_number"], b["benefit_type"]): b for b in live["minzheng.benefits"]}
