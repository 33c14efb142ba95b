"""Store version 4's row seals, read adversarially: a table the schemas left out while the store was
upgraded, a sensitive column a schema no longer declares, the doc's figures, an upgrade killed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import CODES, SECRET, id_number, make_version_3, person, snapshot
from test_row_seals import columns_of, schemas_where
from syncdb import merge, migrations, resolve
from syncdb.schema import load_domains
from syncdb.store import STORE_VERSION, open_store, read_sealed_columns

FORMER_NAME = 'former_name    = { type = "text", label = "曾用名", sensitive = true }'


@pytest.fixture
def street(world):
    for n in range(4):
        world.insert(CODES[0], person(n, CODES[0], former_name=f"Zqx-former-{n}", native_place="110105"))
    world.push(CODES[0])
    merge.merge(world.store, world.bundles, SECRET, world.domains)
    return world


def store_bytes(store: Path) -> bytes:
    """Every byte of store.db and its WAL, after a checkpoint."""
    conn = sqlite3.connect(store / "store.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return b"".join(p.read_bytes() for p in store.iterdir() if p.name.startswith("store.db"))


def test_a_table_the_schemas_left_out_during_the_upgrade_is_sealed_whole_when_it_comes_back(street, domains):
    """A version-3 store upgraded while the schemas folder lacked huji.toml keeps huji's tables in the
    version-3 layout (each value sealed alone, no ``_sealed``). When the schema comes back, the store
    must be upgraded again, not read as if every sensitive value were empty."""
    store = street.store
    before = snapshot(store, domains)
    assert any(dict(cells)["name"] for _exists, cells in before[0].values())
    make_version_3(store, domains)
    without_huji = {name: d for name, d in domains.items() if name != "huji"}
    merge.merge(store, [], SECRET, without_huji)  # the upgrade, huji's tables left as they are
    merge.merge(store, [], SECRET, domains)  # huji back: its tables are brought to the layout now
    assert snapshot(store, domains) == before
    # ... and the next night merges onto them.
    street.sql(CODES[0], "UPDATE persons SET phone = '13911112222' WHERE id_number = ?", (id_number(2),))
    street.push(CODES[0])
    merge.merge(store, street.bundles[-1:], SECRET, domains)
    with open_store(store, SECRET, domains) as st:
        row = st.read_row(st.table("huji.persons"), st.seals.blind_key(st.table("huji.persons"), [id_number(2)]))
        assert row["phone"] == "13911112222" and row["name"]


def test_a_sensitive_column_no_schema_declares_any_more_stays_sealed(street, domains, tmp_path):
    """A column taken out of the schema file was sensitive: its values are kept (nothing is ever
    dropped) but never written in the clear, and they are there again when the column comes back."""
    store = street.store
    before = snapshot(store, domains)
    edited = without_former_name(tmp_path)
    assert "former_name" not in edited["huji"].tables["persons"].columns
    assert b"Zqx-former-" not in store_bytes(store)  # sealed before the edit
    merge.merge(store, [], SECRET, edited)
    assert b"Zqx-former-" not in store_bytes(store)
    with open_store(store, SECRET, edited):
        pass  # current for the edited schemas: nothing left to upgrade
    # An office edit under the edited schemas changes a sensitive value: the row is sealed anew.
    resolve.office_edit(store, SECRET, edited, [
        {"table": "huji.persons", "key": {"id_number": id_number(1)}, "cells": {"phone": "13911112222"}}])
    assert b"Zqx-former-" not in store_bytes(store)
    with open_store(store, SECRET, edited) as st:
        persons = st.table("huji.persons")
        assert st.read_row(persons, st.seals.blind_key(persons, [id_number(1)]))["phone"] == "13911112222"
    # The column back in the schema: its values are where they were.
    merge.merge(store, [], SECRET, domains)
    rows, _conflicts = snapshot(store, domains)
    former = {dict(cells)["former_name"] for _exists, cells in rows.values()}
    assert former == {dict(cells)["former_name"] for _exists, cells in before[0].values()}


def test_docs_merge_says_what_a_sealed_row_costs_and_holds():
    """docs/merge.md's "Sealed rows" gives the bytes a row seal takes as the code makes it: a fixed
    part a row and a byte a short value, the count a varint, the values not JSON."""
    import re

    from syncdb.crypto import Keyring
    from syncdb.store import Seals

    text = (Path(__file__).resolve().parent.parent / "docs" / "merge.md").read_text(encoding="utf-8")
    sealed_rows = text.split("### Sealed rows", 1)[1].split("\n#", 1)[0]
    flat = " ".join(sealed_rows.split())
    assert "(JSON)" not in flat and "how many values (2 bytes)" not in flat
    per_row = int(re.search(r"(\d+) bytes a row", flat).group(1))
    persons = load_domains()["huji"].tables["persons"]
    seals = Seals(Keyring.generate("office", "office"))
    for n in range(1, len(persons.sensitive_columns) + 1):
        values = {c: "x" * 5 if i < n else None for i, c in enumerate(persons.sensitive_columns)}
        # Each short text value: a byte of size and kind, then its 5 bytes.
        assert len(seals.seal_row(persons, values, b"k" * 16)) == per_row + n * (1 + 5)


KILL_INSIDE_THE_UPGRADE = """
import os, signal, sys
from conftest import SECRET
from syncdb import migrations
from syncdb.schema import load_domains

def kill(statement):
    if statement.startswith(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
# The trace callback is set on the store's connection as soon as it is made.
import sqlite3
made = sqlite3.connect
def connect(*args, **kwargs):
    conn = made(*args, **kwargs)
    conn.set_trace_callback(kill)
    return conn
sqlite3.connect = connect
migrations.open_upgraded(sys.argv[1], SECRET, load_domains(None)).close()
"""


@pytest.mark.parametrize("statement", ["ALTER TABLE [huji__persons__sealed] RENAME",
                                       f"PRAGMA user_version = {STORE_VERSION}"])
def test_an_upgrade_killed_before_its_commit_leaves_the_version_3_store_whole(street, domains, statement):
    """SIGKILL inside the upgrade's transaction, after huji.persons is rebuilt (or just before the
    commit): the store is the version-3 store it was, and the next merge upgrades it with nothing lost."""
    import os
    import signal
    import subprocess
    import sys

    store = street.store
    before = snapshot(store, domains)
    make_version_3(store, domains)
    killed = subprocess.run([sys.executable, "-c", KILL_INSIDE_THE_UPGRADE, str(store), statement],
                            cwd=os.path.dirname(__file__), capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    conn = sqlite3.connect(store / "store.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        held = [row[1] for row in conn.execute("PRAGMA table_info(huji__persons)")]
        assert "_sealed" not in held and "name" in held
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'huji__persons__sealed'").fetchone()
    finally:
        conn.close()
    merge.merge(store, [], SECRET, domains)
    assert snapshot(store, domains) == before


def without_former_name(tmp_path: Path) -> dict:
    return schemas_where(tmp_path, (FORMER_NAME + "\n", ""))


def test_values_sealed_alone_by_version_3_in_a_column_no_schema_declared_open_when_it_comes_back(
        street, domains, tmp_path):
    """A version-3 store upgraded while its schema left a sensitive column out keeps that column's
    values as version 3 sealed them, each alone. The column back in the schema, sensitive: its values
    move into the row seals, opened first (they were sealed into them as ciphertext, or stopped the upgrade)."""
    store = street.store
    before = snapshot(store, domains)
    make_version_3(store, domains)
    merge.merge(store, [], SECRET, without_former_name(tmp_path))
    assert "former_name" in columns_of(store, "huji__persons")  # kept, sealed alone as it was
    merge.merge(store, [], SECRET, domains)
    assert snapshot(store, domains) == before
    assert b"Zqx-former-" not in store_bytes(store)


def test_a_column_version_3_sealed_and_a_schema_made_plain_is_opened_by_the_upgrade(street, domains, tmp_path):
    """Version 3 left the sealed values of a column a schema had made plain as they were (the readers
    gave their ciphertext as the value). The upgrade to version 4 opens them into the plain column."""
    store = street.store
    before = snapshot(store, domains)
    make_version_3(store, domains)
    plain = schemas_where(tmp_path, (FORMER_NAME, 'former_name    = { type = "text", label = "曾用名" }'))
    merge.merge(store, [], SECRET, plain)
    rows, _conflicts = snapshot(store, plain)
    assert rows == before[0]


def test_values_sealed_alone_by_version_3_in_a_column_no_schema_declared_are_opened_when_it_comes_back_plain(
        street, domains, tmp_path):
    """The column version 3 sealed and the version-4 upgrade kept while no schema declared it comes
    back in the clear: its values are opened into it (the readers gave their ciphertext as the value)."""
    store = street.store
    before = snapshot(store, domains)
    make_version_3(store, domains)
    merge.merge(store, [], SECRET, without_former_name(tmp_path / "without"))
    plain = schemas_where(tmp_path / "plain", (FORMER_NAME, 'former_name    = { type = "text", label = "曾用名" }'))
    merge.merge(store, [], SECRET, plain)
    rows, _conflicts = snapshot(store, plain)
    assert rows == before[0]


def test_two_processes_upgrading_at_once_read_the_list_of_sealed_columns_the_first_one_wrote(
        street, domains, tmp_path):
    """Two merges start together after a schema makes a column sensitive; the first takes the lock and
    upgrades the store (its row seals hold one more column). The second, opened before that, upgrades
    under the list the store holds now, not the one it read at its start (its seals then looked damaged:
    "restore the store from a backup")."""
    from syncdb.store import opened

    store = street.store
    native = 'native_place   = { type = "text", label = "籍贯", validator = "division_code" }'
    edited = schemas_where(tmp_path, (native, native.replace(" }", ", sensitive = true }")))
    before = snapshot(store, domains)  # (a snapshot under the edited schemas would upgrade the store)
    second = opened(store, SECRET, edited, write=True, ready=lambda st: None)  # opened, not yet upgraded
    try:
        merge.merge(store, [], SECRET, edited)  # the first
        migrations.upgrade(second)
    finally:
        second.conn.close()
    assert snapshot(store, edited) == before


def test_a_new_sensitive_column_is_listed_without_sealing_every_row_again(street, domains, tmp_path):
    """A column added to a schema, sensitive: no record holds a value of it yet, and every seal opens
    under the longer list, so the upgrade lists it and leaves the rows as they are (it opened and
    sealed every row of the table again, in one transaction, for nothing)."""
    store = street.store
    snapshot(store, domains)

    def seals() -> dict:
        conn = sqlite3.connect(store / "store.db")
        try:
            return dict(conn.execute("SELECT _key, _sealed FROM huji__persons"))
        finally:
            conn.close()

    sealed = seals()
    added = schemas_where(tmp_path, (FORMER_NAME, FORMER_NAME + '\nnickname       = { type = "text", label = "别名", '
                                                               'sensitive = true }'))
    merge.merge(store, [], SECRET, added)
    with open_store(store, SECRET, added) as st:
        assert read_sealed_columns(st.conn)["huji.persons"][-1] == "nickname"
    assert seals() == sealed
    rows, _conflicts = snapshot(store, added)
    assert all(dict(cells)["nickname"] is None and dict(cells)["former_name"] for _e, cells in rows.values())
