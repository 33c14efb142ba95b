"""A record's sensitive values sealed together in one ``_sealed`` (store version 4): a store of
version 3, each value sealed alone, is made so in place with nothing lost; a sealed row cannot be
moved to another row nor its values to other columns unseen; a column a schema makes sensitive, or
no longer sensitive, moves into or out of the seals."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from conftest import CODES, SECRET, id_number, make_version_3, person, snapshot, stored_values
from syncdb import audit, merge, migrations, office
from syncdb.errors import SyncdbError
from syncdb.schema import load_domains
from syncdb.store import STORE_VERSION, Seals, open_store, read_sealed_columns
from test_schema_upgrade import columns_of as table_columns

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
PERSONS = "huji.persons"


def rowids(store_dir: Path) -> dict:
    conn = sqlite3.connect(store_dir / "store.db")
    try:
        return {key: rowid for rowid, key in conn.execute("SELECT rowid, _key FROM huji__persons")}
    finally:
        conn.close()


def columns_of(store_dir: Path, name: str) -> list[str]:
    return table_columns(store_dir / "store.db", name)


@pytest.fixture
def street(world):
    for n in range(6):
        world.insert(CODES[0], person(n, CODES[0], former_name=f"曾用名{n}" if n % 2 else None))
    world.push(CODES[0])
    world.insert(CODES[1], person(1, CODES[1]))  # a duplicate registration: an open conflict
    world.push(CODES[1])
    world.sql(CODES[0], "DELETE FROM persons WHERE id_number = ?", (id_number(4),))
    world.push(CODES[0], confirm_deletes=True)
    merge.merge(world.store, world.bundles, SECRET, world.domains)
    return world


def test_a_version_3_store_has_its_rows_sealed_whole_in_place_with_nothing_lost(street, domains):
    store = street.store
    before = snapshot(store, domains)
    assert before[1], "the sample needs an open conflict"
    make_version_3(store, domains)
    assert "_sealed" not in columns_of(store, "huji__persons") and "name" in columns_of(store, "huji__persons")
    keys = rowids(store)
    with pytest.raises(SyncdbError, match="must be upgraded first"):
        open_store(store, SECRET, domains)

    merge.merge(store, [], SECRET, domains)  # upgrades, after a backup
    (backup,) = (store / "backups").iterdir()
    assert sqlite3.connect(backup).execute("PRAGMA user_version").fetchone() == (3,)
    persons = load_domains()["huji"].tables["persons"]
    held = columns_of(store, "huji__persons")
    assert "_sealed" in held and not set(persons.sensitive_columns) & set(held)
    assert rowids(store) == keys
    assert snapshot(store, domains) == before
    with open_store(store, SECRET, domains) as st:
        assert st.conn.execute("PRAGMA user_version").fetchone() == (STORE_VERSION,)
        assert read_sealed_columns(st.conn)[PERSONS] == persons.sensitive_columns
        assert audit.verify(st) > 0
        # The indexes of the table came through the rebuild.
        indexes = {n for (n,) in st.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'huji__persons'")}
        assert "huji__persons__key" in indexes
    # The next night merges onto the sealed rows as onto any.
    street.sql(CODES[0], "UPDATE persons SET phone = '13911112222' WHERE id_number = ?", (id_number(2),))
    street.push(CODES[0])
    merge.merge(store, street.bundles[-1:], SECRET, domains)
    with open_store(store, SECRET, domains) as st:
        phones = {k: p for k, p in stored_values(st, PERSONS, "phone")}
        assert "13911112222" in phones.values()


def test_a_sealed_row_moved_to_another_row_or_column_list_does_not_open(street, domains):
    store = street.store
    conn = sqlite3.connect(store / "store.db", isolation_level=None)
    (a, sealed_a), (b, sealed_b) = conn.execute(
        "SELECT _key, _sealed FROM huji__persons WHERE _exists = 1 LIMIT 2").fetchall()
    conn.execute("UPDATE huji__persons SET _sealed = ? WHERE _key = ?", (sealed_a, b))
    conn.close()
    with open_store(store, SECRET, domains) as st:
        table = st.table(PERSONS)
        assert st.plain_row(table, {"_key": a, "_sealed": sealed_a})["name"]
        with pytest.raises(InvalidTag):
            st.read_row(table, bytes(b))
        # Its columns in another order: every seal of the table stops opening.
        listed = read_sealed_columns(st.conn)[PERSONS]
        swapped = Seals(st.keyring, {PERSONS: [listed[1], listed[0], *listed[2:]]})
        with pytest.raises(InvalidTag):
            swapped.open_row(table, sealed_a, bytes(a))
        # Fewer values than it holds, said in its header: refused too.
        assert sealed_a[2] > 1  # how many values it holds: a varint, one byte here
        short = sealed_a[:2] + bytes([1]) + sealed_a[3:]
        with pytest.raises(InvalidTag):
            st.seals.open_row(table, short, bytes(a))


def schemas_where(tmp_path: Path, *edits: tuple[str, str]) -> dict:
    folder = tmp_path / "schemas-edited"
    shutil.copytree(SCHEMAS, folder)
    huji = folder / "huji.toml"
    text = huji.read_text(encoding="utf-8")
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    huji.write_text(text, encoding="utf-8")
    return load_domains(folder)


def test_columns_made_sensitive_or_not_since_move_into_and_out_of_the_seals(street, domains, tmp_path):
    store = street.store
    before = snapshot(store, domains)
    edited = schemas_where(
        tmp_path,
        ('native_place   = { type = "text", label = "籍贯", validator = "division_code" }',
         'native_place   = { type = "text", label = "籍贯", validator = "division_code", sensitive = true }'),
        ('former_name    = { type = "text", label = "曾用名", sensitive = true }',
         'former_name    = { type = "text", label = "曾用名" }'))
    with pytest.raises(SyncdbError, match="must be upgraded first"):
        open_store(store, SECRET, edited)
    merge.merge(store, [], SECRET, edited)
    assert snapshot(store, edited) == before  # the same values, wherever they are kept now
    conn = sqlite3.connect(store / "store.db")
    native = conn.execute("SELECT count(*) FROM huji__persons WHERE native_place IS NOT NULL").fetchone()[0]
    former = {v for (v,) in conn.execute("SELECT former_name FROM huji__persons WHERE former_name IS NOT NULL")}
    conn.close()
    assert native == 0  # moved into the seals
    assert former == {"曾用名1", "曾用名3", "曾用名5"}  # copied out, in clear as the schema now says
    with open_store(store, SECRET, edited) as st:
        listed = read_sealed_columns(st.conn)[PERSONS]
        assert "-former_name" in listed and listed[-1] == "native_place"
    # Back as they were: the values move again; the seals made under each list still open.
    merge.merge(store, [], SECRET, domains)
    assert snapshot(store, domains) == before
    with open_store(store, SECRET, domains) as st:
        listed = read_sealed_columns(st.conn)[PERSONS]
        assert listed.count("former_name") == 1 and "-former_name" in listed and "-native_place" in listed
    migrations.open_upgraded(store, SECRET, domains).close()  # nothing left to do: no change
    assert snapshot(store, domains) == before


def test_values_in_the_clear_made_sensitive_leave_no_plaintext_in_the_store_files(world, domains, tmp_path,
                                                                                 monkeypatch):
    """A column a schema makes sensitive: after the upgrade neither store.db nor its WAL holds its old
    values in the clear (the pages they leave are zeroed and written back at once); the backup copied
    before the upgrade keeps them, as the schema had them then. SQLite as Python's Windows build has
    it: freed space is not zeroed unless asked (Debian's is built to)."""
    connect = office.connect

    def as_on_windows(store_dir):
        conn = connect(store_dir)
        conn.execute("PRAGMA secure_delete = 0")
        return conn
    monkeypatch.setattr(office, "connect", as_on_windows)
    places = [f"迁往地明文{n:03d}号" for n in range(40)]
    for n, place in enumerate(places):
        world.insert(CODES[0], person(n, CODES[0], deregistration_destination=place))
    world.push(CODES[0])
    merge.merge(world.store, world.bundles, SECRET, domains)
    assert places[0].encode() in (world.store / "store.db").read_bytes() + _wal(world.store)
    edited = schemas_where(tmp_path, ('deregistration_destination = { type = "text", label = "迁往地" }',
                                      'deregistration_destination = { type = "text", label = "迁往地", sensitive = true }'))
    merge.merge(world.store, [], SECRET, edited)
    raw = (world.store / "store.db").read_bytes() + _wal(world.store)
    assert not [p for p in places if p.encode() in raw]
    with open_store(world.store, SECRET, edited) as st:
        assert sorted(v for _k, v in stored_values(st, PERSONS, "deregistration_destination")) == places


def _wal(store: Path) -> bytes:
    wal = store / "store.db-wal"
    return wal.read_bytes() if wal.exists() else b""
