"""The office's shared store: one SQLite database (WAL) in the store folder.

Each schema table ``domain.table`` is the SQLite table ``domain__table``:

    _key          16-byte keyed blind index (HMAC) of the natural key: rows are
                  found by it, so no merge ever needs a plaintext key on disk
    <columns>     plain values, or for a sensitive column an AEAD-sealed value
    <col>__bi     blind index of a sensitive ID-number column, for equality look-ups
    _versions     JSON: the version (HLC) of each cell; "*" holds the row's most
                  common one, "~" before a version marks a delete's tombstone
    _exists       0 once the row is deleted (kept as a tombstone for late edits)

Beside them: ``frontier`` (the concurrent versions of cells in conflict),
``dominated`` (versions superseded before they arrived), ``conflicts`` (the
queue), ``applied`` (the bundle ledger), ``rejected`` (invalid records) and
``ledger`` (the audit ledger, see audit.py), and ``origin_clock`` (each
community's latest applied stamp: its next bundle's stamps must be later). A sealed value carries its key
id, so ``keys rotate`` can re-encrypt row by row.
"""

from __future__ import annotations

import json
import os
import sqlite3
from functools import cached_property
from pathlib import Path

from cryptography.exceptions import InvalidTag

from .audit import LEDGER_TABLES
from .crypto import Keyring
from .hlc import pack_versions, unpack_versions
from .errors import SyncdbError
from .schema import Domain, Table

SEALED_FORMAT = 1
# Built once: json.dumps with arguments builds an encoder on every call.
_KEY_TEXT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_VALUE_TEXT = json.JSONEncoder(ensure_ascii=False).encode

STORE_TABLES = """
CREATE TABLE IF NOT EXISTS store_columns (tbl TEXT PRIMARY KEY, columns TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frontier (
    tbl TEXT NOT NULL, key BLOB NOT NULL, col TEXT NOT NULL, version TEXT NOT NULL,
    origin TEXT NOT NULL, value, deleted INTEGER NOT NULL,
    PRIMARY KEY (tbl, key, col, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dominated (
    tbl TEXT NOT NULL, key BLOB NOT NULL, col TEXT NOT NULL, version TEXT NOT NULL,
    PRIMARY KEY (tbl, key, col, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, key BLOB NOT NULL, col TEXT NOT NULL,
    kind TEXT NOT NULL, candidates TEXT NOT NULL, winner TEXT NOT NULL, rule TEXT NOT NULL,
    status TEXT NOT NULL, opened TEXT NOT NULL, closed TEXT, note TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS conflicts_open ON conflicts (tbl, key, col) WHERE status = 'open';
CREATE TABLE IF NOT EXISTS applied (
    origin TEXT NOT NULL, sequence INTEGER NOT NULL, sha256 TEXT NOT NULL, applied TEXT NOT NULL,
    changes INTEGER NOT NULL, rejected INTEGER NOT NULL, PRIMARY KEY (origin, sequence));
CREATE TABLE IF NOT EXISTS keyring_check (
    one INTEGER PRIMARY KEY CHECK (one = 1), office_key TEXT NOT NULL, mac BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS origin_clock (origin TEXT PRIMARY KEY, hlc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY, origin TEXT NOT NULL, sequence INTEGER NOT NULL, tbl TEXT NOT NULL,
    key BLOB NOT NULL, shown_key TEXT NOT NULL, field TEXT NOT NULL, why TEXT NOT NULL, at TEXT NOT NULL);
""" + LEDGER_TABLES


def table_name(table: Table) -> str:
    return f"{table.domain}__{table.name}"


def id_columns(table: Table) -> list[str]:
    """Sensitive ID-number columns, which get a blind index for look-ups by ID."""
    return table.id_columns



def write_columns(table: Table) -> list[str]:
    """Every column of a store row, as the merge writes it."""
    return (["_key"] + list(table.columns) + [f"{c}__bi" for c in id_columns(table)]
            + ["_versions", "_exists"])


def create_sql(table: Table) -> list[str]:
    cols = ["[_key] BLOB PRIMARY KEY"]
    for c in table.columns.values():
        cols.append(f"[{c.name}] {'BLOB' if c.sensitive else ''}".rstrip())
    for name in id_columns(table):
        cols.append(f"[{name}__bi] BLOB")
    cols += ["[_versions] TEXT NOT NULL", "[_exists] INTEGER NOT NULL"]
    name = table_name(table)
    sql = [f"CREATE TABLE IF NOT EXISTS [{name}] ({', '.join(cols)}) WITHOUT ROWID"]
    for col in id_columns(table):
        sql.append(f"CREATE INDEX IF NOT EXISTS [{name}_{col}__bi] ON [{name}] ([{col}__bi])")
    return sql


class Store:
    """An open store: its connection, keys and schemas, and the value crypto."""

    def __init__(self, conn: sqlite3.Connection, keyring: Keyring, domains: dict[str, Domain],
                 check_only: bool = False):
        self.conn = conn
        self.keyring = keyring
        self.domains = domains
        self.suite = keyring.suite
        self.tables = {t.qualified: t for d in domains.values() for t in d.tables.values()}
        self.office_code = keyring.public.code
        self._sealers: dict = {}  # data key id -> (value prefix, bound AEAD)
        self._openers: dict = {}
        self._aads: dict = {}
        # Both checks only read: a store that fails them is left exactly as it was found.
        _refuse_if_not_a_store(conn)
        check = self._keyring_check()
        if check_only:  # `syncdb status`: the checks on a read-only connection, nothing made
            return
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for statement in STORE_TABLES.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for table in self.tables.values():
                for statement in create_sql(table):
                    conn.execute(statement)
                self._add_new_columns(table)
            conn.execute("INSERT OR IGNORE INTO keyring_check VALUES (1, ?, ?)", check)

    def _keyring_check(self) -> tuple[str, bytes]:
        """The keyring's check value; refuse a keyring that is not the one this store was sealed under.

        The store keeps the office key id and a MAC under the index key from its
        first open; a store from before that is checked against one sealed value.
        """
        conn, ring = self.conn, self.keyring
        mine = (ring.public.id, self.suite.mac(ring.index_key, b"syncdb keyring check"))
        row = None
        if _has_table(conn, "keyring_check"):
            row = conn.execute("SELECT office_key, mac FROM keyring_check").fetchone()
        if row is None:
            if not self._opens_a_sealed_value():
                raise _foreign_keyring(conn, ring, "it does not open the values sealed in it")
        elif row[0] != mine[0]:
            raise _foreign_keyring(conn, ring, f"the store was sealed under office key {row[0]}")
        elif bytes(row[1]) != mine[1]:
            raise _foreign_keyring(conn, ring, "its index key is not the one the store was sealed under")
        return mine

    def _opens_a_sealed_value(self) -> bool:
        """Does the keyring open one sealed value of the store (True when there is none yet)?"""
        for table in self.tables.values():
            if not table.sensitive_columns or not _has_table(self.conn, table_name(table)):
                continue
            column = table.sensitive_columns[0]
            found = self.conn.execute(f"SELECT _key, [{column}] FROM [{table_name(table)}] "
                                      f"WHERE [{column}] IS NOT NULL LIMIT 1").fetchone()
            if found:
                try:
                    self.open(found[1], table, column, bytes(found[0]))
                    return True
                except (InvalidTag, SyncdbError):
                    return False
        return True

    def _add_new_columns(self, table: Table) -> None:
        """A column added to a schema file is added to the store; nothing is ever dropped."""
        name = table_name(table)
        present = {row[1] for row in self.conn.execute(f"PRAGMA table_info([{name}])")}
        for c in (c for c in table.columns.values() if c.name not in present):
            self.conn.execute(f"ALTER TABLE [{name}] ADD COLUMN [{c.name}] {'BLOB' if c.sensitive else ''}")
        # Rows written under another column list: their shared version ("*") never
        # covered a column new since, so mark such columns unset, once.
        non_key = [c for c in table.columns if c not in table.key]
        known = self.conn.execute("SELECT columns FROM store_columns WHERE tbl = ?", (table.qualified,)).fetchone()
        if known and json.loads(known[0]) != non_key:
            before = [c for c in non_key if c in json.loads(known[0])]
            rows = self.conn.execute(f"SELECT _key, _versions FROM [{name}]").fetchall()
            self.conn.executemany(f"UPDATE [{name}] SET _versions = ? WHERE _key = ?", [
                (pack_versions(unpack_versions(text, before), non_key), key) for key, text in rows])
        self.conn.execute("INSERT OR REPLACE INTO store_columns VALUES (?, ?)", (table.qualified, json.dumps(non_key)))
        for col in id_columns(table):
            if f"{col}__bi" not in present:
                self.conn.execute(f"ALTER TABLE [{name}] ADD COLUMN [{col}__bi] BLOB")

    def table(self, qualified: str) -> Table:
        try:
            return self.tables[qualified]
        except KeyError:
            raise SyncdbError(f"table {qualified} is not in the office's schemas; "
                              "add its schema file at the office first") from None

    # Blind indexes: 16 bytes of HMAC under the index key, with a domain-separating label.
    def blind_key(self, table: Table, key_values: list) -> bytes:
        return self._index_mac(b"key|" + _KEY_TEXT([table.qualified, key_values]).encode())[:16]

    def blind_id(self, value) -> bytes | None:
        if value is None:
            return None
        return self._index_mac(b"id|" + str(value).encode())[:16]

    @cached_property
    def _index_mac(self):
        return self.suite.keyed_mac(self.keyring.index_key)

    # Sealed values: format byte, key id byte, nonce, ciphertext+tag; bound to their cell by the AAD.
    def seal(self, value, table: Table, column: str, key: bytes) -> bytes | None:
        if value is None:
            return None
        key_id = self.keyring.data_key_id
        sealer = self._sealers.get(key_id)
        if sealer is None:
            sealer = self._sealers[key_id] = (
                bytes([SEALED_FORMAT, int(key_id)]), self.suite.sealer(self.keyring.data_keys[key_id]))
        prefix, seal = sealer
        nonce = os.urandom(12)
        return prefix + nonce + seal(nonce, _VALUE_TEXT(value).encode(), self._aad(table, column) + key)

    def open(self, sealed, table: Table, column: str, key: bytes):
        if sealed is None:
            return None
        sealed = bytes(sealed)
        if sealed[0] != SEALED_FORMAT:
            raise SyncdbError(f"a sealed value in {table.qualified}.{column} has an unknown format")
        opener = self._openers.get(sealed[1])
        if opener is None:
            data_key = self.keyring.data_keys.get(str(sealed[1]))
            if data_key is None:
                raise SyncdbError(f"a value in {table.qualified}.{column} is sealed under data key "
                                  f"{sealed[1]}, which this keyring does not hold")
            opener = self._openers[sealed[1]] = self.suite.opener(data_key)
        return json.loads(opener(sealed[2:14], sealed[14:], self._aad(table, column) + key))

    def _aad(self, table: Table, column: str) -> bytes:
        try:
            return self._aads[table.qualified, column]
        except KeyError:
            prefix = self._aads[table.qualified, column] = f"{table.qualified}|{column}|".encode()
            return prefix

    def stored(self, table: Table, column: str, value, key: bytes):
        """The value as the store keeps it: sealed if the column is sensitive."""
        return self.seal(value, table, column, key) if table.columns[column].sensitive else value

    def plain(self, table: Table, column: str, value, key: bytes):
        return self.open(value, table, column, key) if table.columns[column].sensitive else value


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _store_file(conn: sqlite3.Connection) -> str:
    return conn.execute("PRAGMA database_list").fetchone()[2] or "the store database"


def _refuse_if_not_a_store(conn: sqlite3.Connection) -> None:
    """Only `office init` creates a store: an emptied or foreign store.db is never silently made anew."""
    if not _has_table(conn, "communities"):
        path = _store_file(conn)
        raise SyncdbError(f"{path} is empty or not an office store; restore it from a backup of the store "
                          f"folder; no table was made in it (only `syncdb office init` creates a store)")


def _foreign_keyring(conn: sqlite3.Connection, ring: Keyring, why: str) -> SyncdbError:
    folder = Path(_store_file(conn)).parent
    return SyncdbError(f"the keyring in {folder} (office {ring.public.code}, key {ring.public.id}) is not this "
                       f"store's: {why}. Put back the store's own keyring.json from your backup; "
                       "nothing was changed")


def mask(value: str | None) -> str:
    """Show enough of a key to find it, not enough to read it: 110105********002X."""
    if value is None:
        return ""
    text = str(value)
    if len(text) >= 15:
        return text[:6] + "*" * (len(text) - 10) + text[-4:]
    if len(text) >= 3:
        return text[0] + "*" * (len(text) - 2) + text[-1]
    return "*" * len(text)
