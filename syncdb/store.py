"""The office's shared store: one SQLite database (WAL) in the store folder.

Each schema table ``domain.table`` is the SQLite table ``domain__table``, a
rowid table (store version 2; version 1 kept it WITHOUT ROWID, keyed by ``_key``):

    _key          16-byte keyed blind index (HMAC) of the natural key, in a UNIQUE
                  index: rows are found by it, so no merge ever needs a plaintext
                  key on disk
    <columns>     the values of the columns that are not sensitive
    _sealed       the row's sensitive values, sealed together (store version 4; before,
                  each in its own column, sealed alone): one AEAD over the list of
                  values, bound to the table, the row's blind key and the names of its
                  columns, so no value can be moved to another row or column unseen
                  (Seals.seal_row; ``sealed_columns`` keeps each table's list)
    <col>__bi     blind index of a sensitive ID-number column, for equality look-ups
    _versions     the version (HLC) of each cell, in bytes (hlc.pack_row_versions; JSON
                  text before store version 4, or for what bytes cannot hold): the
                  row's most common one, then the others; a delete's tombstone flagged
    _exists       0 once the row is deleted (kept as a tombstone for late edits)

Beside them: ``frontier`` (the concurrent versions of cells in conflict),
``dominated`` (versions superseded before they arrived), ``conflicts`` (the
queue), ``applied`` (the bundle ledger), ``rejected`` (invalid records) and
``ledger`` (the audit ledger, see audit.py), and ``origin_clock`` (each
community's latest applied stamp: its next bundle's stamps must be later). A sealed value carries its key
id, so ``keys rotate`` can re-encrypt row by row. The frontier, the conflict queue and the checks' cases
seal each value alone, bound to its table, column and row.
"""

from __future__ import annotations

import json
import math
import sqlite3
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import orjson
from cryptography.exceptions import InvalidTag

from . import audit, office
from .bundle import read_json
from .crypto import Keyring, Secret, fresh_nonce
from .errors import SyncdbError
from .files import storage_error
from .i18n import _
from .sql import immediate
from .schema import Domain, Table

SEALED_FORMAT = 1  # one value: format, key id, nonce, ciphertext and tag
SEALED_ROW_FORMAT = 2  # a row's sensitive values: format, key id, how many (a varint), nonce, ciphertext and tag
BUNDLE_CACHE_MIB = 128  # SQLite's page cache while a bundle is applied (Store.bundle_cache)
# Built once: json.dumps with arguments builds an encoder on every call.
_KEY_TEXT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_VALUE_TEXT = json.JSONEncoder(ensure_ascii=False).encode


SQLITE_LEAST, SQLITE_MOST = -2 ** 63, 2 ** 63 - 1  # the whole numbers SQLite keeps


def _key_text(qualified: str, key_values: list) -> bytes:
    """[table, key values] as compact JSON, not ASCII-escaped: what a blind key is made of, so these
    bytes may never change. orjson writes strings, integers, booleans and null byte for byte as
    json does, at a fraction of its cost; floats (json writes their repr) and what orjson refuses
    go through json, a lone surrogate as the bytes of its code point (no stored key holds one: a
    change naming one is rejected, prepare.unkeepable, under a key the merge can still name)."""
    for value in key_values:
        if value.__class__ is float:
            break
    else:
        try:
            return orjson.dumps([qualified, key_values])
        except TypeError:
            pass
    return _KEY_TEXT([qualified, key_values]).encode("utf-8", "surrogatepass")


def value_bytes(value) -> bytes:
    """A cell value as the JSON a seal holds: orjson where it can (a third of sealing's cost was
    json's encoder), the standard encoder for what orjson refuses (integers past 64 bits, NaN)."""
    if value.__class__ is not float or math.isfinite(value):  # orjson writes NaN as null
        try:
            return orjson.dumps(value)
        except TypeError:
            pass
    return _VALUE_TEXT(value).encode()


def value_of(data: bytes):
    """The cell value a seal holds (``value_bytes`` read back; seals of older releases too)."""
    return read_json(data)


# A row seal's values, one after another: a varint of (size << 2 | kind), then the bytes.
# kind 0: None (size 0); 1: text, UTF-8; 2: a whole number, zigzag, as a varint of its own
# (size 0); 3: anything else (a real number, true or false) as JSON. A byte or two a value,
# where a JSON list took three or four.
_NONE, _TEXT, _WHOLE, _JSON = 0, 1, 2, 3


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = data[at]
        at += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, at
        shift += 7


def values_bytes(values: list) -> bytes:
    """A row seal's list of values as bytes (``bytes_values`` reads them back)."""
    out = []
    for value in values:
        kind = value.__class__
        if value is None:
            out.append(b"\x00")
        elif kind is str:
            raw = value.encode("utf-8")
            out += [_varint(len(raw) << 2 | _TEXT), raw]
        elif kind is int:
            out += [bytes([_WHOLE]), _varint(value << 1 if value >= 0 else (-value << 1) - 1)]
        else:
            raw = value_bytes(value)
            out += [_varint(len(raw) << 2 | _JSON), raw]
    return b"".join(out)


def bytes_values(data: bytes, n: int) -> list:
    """The ``n`` values ``values_bytes`` wrote; ValueError if the bytes are not exactly that."""
    values, at = [], 0
    try:
        for _n in range(n):
            head, at = _read_varint(data, at)
            kind, size = head & 3, head >> 2
            if kind == _NONE:
                values.append(None)
            elif kind == _WHOLE:
                zigzag, at = _read_varint(data, at)
                values.append(zigzag >> 1 if not zigzag & 1 else -((zigzag + 1) >> 1))
            else:
                raw = data[at:at + size]
                if len(raw) != size:
                    raise ValueError
                values.append(raw.decode("utf-8") if kind == _TEXT else value_of(raw))
                at += size
    except (IndexError, UnicodeDecodeError):
        raise ValueError from None
    if at != len(data):
        raise ValueError
    return values


STORE_VERSION = 5  # PRAGMA user_version of a store this release made or upgraded (0: an earlier release)

# The tables this module owns. The other tables of store.db belong to their
# modules (audit: ledger; conflicts: the queue; office: communities, received,
# the office clock; outbound: outbound; bundles: skipped); migrations.py makes
# and upgrades them all, and only the commands that may change the store's
# shape run it (office init, merge, serve, keys rotate).
STORE_TABLES = """
CREATE TABLE IF NOT EXISTS store_columns (tbl TEXT PRIMARY KEY, columns TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sealed_columns (tbl TEXT PRIMARY KEY, columns TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frontier (
    tbl TEXT NOT NULL, key BLOB NOT NULL, col TEXT NOT NULL, version TEXT NOT NULL,
    origin TEXT NOT NULL, value, deleted INTEGER NOT NULL,
    PRIMARY KEY (tbl, key, col, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dominated (
    tbl TEXT NOT NULL, key BLOB NOT NULL, col TEXT NOT NULL, version TEXT NOT NULL,
    PRIMARY KEY (tbl, key, col, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS applied (
    origin TEXT NOT NULL, sequence INTEGER NOT NULL, sha256 TEXT NOT NULL, applied TEXT NOT NULL,
    changes INTEGER NOT NULL, rejected INTEGER NOT NULL, PRIMARY KEY (origin, sequence));
CREATE TABLE IF NOT EXISTS keyring_check (
    one INTEGER PRIMARY KEY CHECK (one = 1), office_key TEXT NOT NULL, mac BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS origin_clock (origin TEXT PRIMARY KEY, hlc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY, origin TEXT NOT NULL, sequence INTEGER NOT NULL, tbl TEXT NOT NULL,
    key BLOB NOT NULL, shown_key TEXT NOT NULL, field TEXT NOT NULL, why TEXT NOT NULL, at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS rejected_by_origin ON rejected (origin, id, at);
CREATE INDEX IF NOT EXISTS applied_sums ON applied (origin, changes, rejected);
"""


def table_name(table: Table) -> str:
    return f"{table.domain}__{table.name}"


def key_index_sql(table: Table) -> str:
    """The UNIQUE index of a record table's blind key: records are found, and upserted, by it."""
    name = table_name(table)
    return f"CREATE UNIQUE INDEX IF NOT EXISTS [{name}__key] ON [{name}] ([_key])"


def id_columns(table: Table) -> list[str]:
    """Sensitive ID-number columns, which get a blind index for look-ups by ID."""
    return table.id_columns



def clear_columns(table: Table) -> list[str]:
    """The columns a record table keeps a column of its own for: those that are not sensitive."""
    return [c.name for c in table.columns.values() if not c.sensitive]


def write_columns(table: Table) -> list[str]:
    """Every column of a store row, as the merge writes it."""
    return (["_key"] + clear_columns(table) + ["_sealed"] + [f"{c}__bi" for c in id_columns(table)]
            + ["_versions", "_exists"])


def create_sql(table: Table) -> list[str]:
    """The table of a schema table's records and its indexes (the table first: the TEMP stand-in's)."""
    cols = ["[_key] BLOB NOT NULL"]
    for c in clear_columns(table):
        cols.append(f"[{c}]")
    cols.append("[_sealed] BLOB")
    for name in id_columns(table):
        cols.append(f"[{name}__bi] BLOB")
    cols += ["[_versions] TEXT NOT NULL", "[_exists] INTEGER NOT NULL"]
    name = table_name(table)
    # A rowid table, its blind key in a UNIQUE index: a new record is appended at the table's end and
    # only the small index takes the random blind keys. Keyed by them (WITHOUT ROWID), whole rows
    # landed on random pages of the whole table, and a first load cost more the more the store
    # held (bench/layout.py).
    sql = [f"CREATE TABLE IF NOT EXISTS [{name}] ({', '.join(cols)})", key_index_sql(table)]
    for col in id_columns(table):
        if tuple(table.key) != (col,):  # keyed by the ID number alone: the blind key's index finds it
            sql.append(f"CREATE INDEX IF NOT EXISTS [{name}_{col}__bi] ON [{name}] ([{col}__bi])")
    return sql


def redundant_index_names(table: Table) -> list[str]:
    """The blind-ID indexes store version 3 no longer makes: over the ID number that is the table's whole key
    (1.3 MiB of 50,000 residents), whose records the blind key's UNIQUE index finds."""
    return [f"{table_name(table)}_{col}__bi" for col in id_columns(table) if tuple(table.key) == (col,)]


class Store:
    """An open store: its connection, keys and schemas, and the value crypto.

    Open one with ``open_store`` (read-only unless asked) or, in the commands
    that may change the store's shape, ``migrations.open_upgraded``; use it as a
    context manager, or ``close()`` it. Opening only reads: the checks below
    leave a store that fails them exactly as it was found.
    """

    def __init__(self, conn: sqlite3.Connection, keyring: Keyring, domains: dict[str, Domain],
                 read_only: bool = False):
        self.conn = conn
        self.keyring = keyring
        self.domains = domains
        self.read_only = read_only
        self.suite = keyring.suite
        self.tables = {t.qualified: t for d in domains.values() for t in d.tables.values()}
        self.office_code = keyring.public.code
        _refuse_if_not_a_store(conn)
        self.seals = Seals(keyring, read_sealed_columns(conn))
        self.keyring_check = self._keyring_check()

    def stand_in_missing_tables(self) -> None:
        """Empty TEMP tables (in memory, never in store.db) for the schema tables the store has not
        made yet (a domain added since the last merge): they read as holding no record."""
        for table in self.tables.values():
            if not _has_table(self.conn, table_name(table)):
                self.conn.execute(create_sql(table)[0].replace("CREATE TABLE IF NOT EXISTS",
                                                               "CREATE TEMP TABLE", 1))

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def bundle_cache(self) -> Iterator[None]:
        """SQLite's page cache at BUNDLE_CACHE_MIB while a bundle is applied, then as it was.

        A community's first load changes pages all over the blind-key indexes; with SQLite's
        default 2 MiB cache they were written to the WAL again and again before the commit
        (bench/layout.py). Given back after the bundle, so a long-running ``serve`` keeps little.
        """
        (before,) = self.conn.execute("PRAGMA cache_size").fetchone()
        self.conn.execute(f"PRAGMA cache_size = {-BUNDLE_CACHE_MIB * 1024}")
        try:
            yield
        finally:
            self.conn.execute(f"PRAGMA cache_size = {before}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE): committed if the block ends, rolled back if it raises."""
        with immediate(self.conn) as conn:
            yield conn

    @property
    def folder(self) -> Path:
        return Path(_store_file(self.conn)).parent

    def behind(self) -> str | None:
        """Why this store must be upgraded before these schemas can use it, or None.

        Only the migrating commands upgrade a store (migrations.py); every
        other command asks first and says which command to run.
        """
        (version,) = self.conn.execute("PRAGMA user_version").fetchone()
        if version > STORE_VERSION:
            return _("it was made by a later release of syncdb (store version {version}, this one knows "
                     "{known}); install that release at the office").format(version=version, known=STORE_VERSION)
        if version < STORE_VERSION:
            return _("it was made by an earlier release of syncdb")
        known = dict(self.conn.execute("SELECT tbl, columns FROM store_columns"))
        for table in self.tables.values():
            # A table not made yet reads as empty (stand_in_missing_tables); one made under
            # other columns must be brought to the schema's first.
            if table.qualified in known and known[table.qualified] != json.dumps(table.non_key):
                return _("the schema of {table} has columns the store's copy of it lacks").format(table=table.qualified)
            if table.qualified in known and table.qualified not in self.seals.row_columns:
                # Left out of the schemas when the store was upgraded to version 4: still in the layout
                # of version 3 (each value sealed alone), which would read as empty.
                return _("it was made by an earlier release of syncdb")
            # A sealed column no schema declares any more stays sealed (never written in the clear).
            if table.qualified in known and set(table.sensitive_columns) != {
                    c for c in self.seals.sealed(table) if c in table.columns}:
                return _("the schema of {table} makes other columns sensitive than the store seals").format(
                    table=table.qualified)
        return None

    def unmade_tables(self) -> list[str]:
        """The schema tables the store has not made yet (the next migrating command makes them)."""
        known = {t for (t,) in self.conn.execute("SELECT tbl FROM store_columns")}
        return [t for t in self.tables if t not in known]

    def require_current(self) -> None:
        why = self.behind()
        if why:
            folder = self.folder
            (version,) = self.conn.execute("PRAGMA user_version").fetchone()
            if version > STORE_VERSION:  # no merge of this release can help: it refuses such a store too
                raise SyncdbError(_("the store in {folder} cannot be opened by this release: {why}; "
                                    "nothing was changed").format(folder=folder, why=why))
            raise SyncdbError(_("the store in {folder} must be upgraded first: {why}. Run `syncdb merge {folder}` "
                                "(it keeps a backup copy of the store first, and loses nothing), then run this "
                                "again").format(folder=folder, why=why))

    # What changed: the audit ledger records every change the store applies, in order.
    def change_point(self) -> int:
        """A point in the store's history: the changes applied after it are ``changed_since`` it."""
        (point,) = self.conn.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchone()
        return point

    def change_mark(self, point: int) -> bytes | None:
        """What tells this store's history up to ``point`` from another's: the MAC of the ledger's entry
        there, chained over every entry before it (None at 0, or where the ledger has no such entry). A
        backup put back and merged past the point has the point again, in another history."""
        found = self.conn.execute("SELECT mac FROM ledger WHERE id = ?", (point,)).fetchone()
        return bytes(found[0]) if found else None

    def changed_since(self, point: int, between=None) -> dict[str, set[bytes]]:
        """Table -> the blind keys of the records changed after ``point`` (a ``change_point()``).

        ``between()``, if given, is called before each of the ledger's rows is read (one a bundle, tens
        of thousands of changes after a first load): it may raise to stop a read of many seconds."""
        return {table: set(keys) for table, keys in self.cells_changed_since(point, between).items()}

    def cells_changed_since(self, point: int, between=None) -> dict[str, dict[bytes, frozenset | None]]:
        """Table -> blind key -> the columns changed after ``point``, or None where the record came,
        went or changed its key (an insert, a delete, a rekey: every column counts as changed).
        ``between`` as for ``changed_since``."""
        changed: dict[str, dict[bytes, frozenset | None]] = {}
        # One set for each list of cells: a night moving the same column of a million records would
        # otherwise hold a set of its own for each (3.5 times what the keys take, 580 MB at 1.84 million).
        shared: dict[frozenset, frozenset] = {}
        for (body,) in self.conn.execute("SELECT body FROM ledger WHERE id > ? ORDER BY id", (point,)):
            if between is not None:
                between()
            for _hlc, table, key, op, *detail in audit.lines(body):  # audit.FIELDS, the detail optional
                if not key:  # a bundle skipped by hand: no record
                    continue
                keys = changed.setdefault(table, {})
                key = bytes.fromhex(key)
                cells = ((detail and detail[0]) or {}).get("cells") if op == "update" else None
                if cells is None or key in keys and keys[key] is None:
                    keys[key] = None
                else:
                    cells = frozenset(cells) | keys.get(key, frozenset())
                    keys[key] = shared.setdefault(cells, cells)
        return changed

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
                raise _foreign_keyring(conn, ring, _("it does not open the values sealed in it"))
        elif row[0] != mine[0]:
            raise _foreign_keyring(conn, ring, _("the store was sealed under office key {key}").format(key=row[0]))
        elif bytes(row[1]) != mine[1]:
            raise _foreign_keyring(conn, ring, _("its index key is not the one the store was sealed under"))
        return mine

    def _opens_a_sealed_value(self) -> bool:
        """Does the keyring open one sealed value of the store (True when there is none yet)?"""
        for table in self.tables.values():
            if not table.sensitive_columns or not _has_table(self.conn, table_name(table)):
                continue
            held = _columns_of(self.conn, table_name(table))
            # A store of version 3 or before seals each value in its own column.
            column = "_sealed" if "_sealed" in held else table.sensitive_columns[0]
            if column not in held:
                continue
            found = self.conn.execute(f"SELECT _key, [{column}] FROM [{table_name(table)}] "
                                      f"WHERE [{column}] IS NOT NULL LIMIT 1").fetchone()
            if found:
                try:
                    if column == "_sealed":
                        self.seals.open_row(table, found[1], bytes(found[0]))
                    else:
                        self.open(found[1], table, column, bytes(found[0]))
                    return True
                except (InvalidTag, SyncdbError):
                    return False
        return True

    def table(self, qualified: str) -> Table:
        try:
            return self.tables[qualified]
        except KeyError:
            raise SyncdbError(_("table {table} is not in the office's schemas; "
                                "add its schema file at the office first").format(table=qualified)) from None

    # The values' cryptography (Seals), here for every caller that holds a store.
    def blind_key(self, table: Table, key_values: list) -> bytes:
        return self.seals.blind_key(table, key_values)

    def blind_id(self, value) -> bytes | None:
        return self.seals.blind_id(value)

    def seal(self, value, table: Table, column: str, key: bytes) -> bytes | None:
        return self.seals.seal(value, table, column, key)

    def open(self, sealed, table: Table, column: str, key: bytes):
        return self.seals.open(sealed, table, column, key)

    def stored(self, table: Table, column: str, value, key: bytes):
        """The value as the store keeps it: sealed if the column is sensitive."""
        return self.seals.stored(table, column, value, key)

    def plain(self, table: Table, column: str, value, key: bytes):
        return self.seals.plain(table, column, value, key)

    # A record table's rows: the sensitive values in one seal (``_sealed``).
    def plain_row(self, table: Table, row: dict, key: bytes | None = None, with_seal: bool = False) -> dict:
        """A record row as read (``SELECT *``: column -> stored value) with its sensitive values in
        plaintext instead of ``_sealed``: every schema column is there, None when it holds nothing.
        ``with_seal``: ``_sealed`` kept beside them (the merge writes it back while no sensitive
        value of the row changes)."""
        plain = dict(row)
        sealed = plain.get("_sealed") if with_seal else plain.pop("_sealed", None)
        opened = self.seals.open_row(table, sealed, bytes(plain["_key"]) if key is None else key)
        for column in table.sensitive_columns:
            plain[column] = opened.get(column)
        for column, value in opened.items():
            if column not in table.columns:  # a sealed column the schema no longer declares: kept sealed
                plain[column] = value
        return plain

    def read_row(self, table: Table, key: bytes) -> dict | None:
        """The record with this blind key (``plain_row``), or None."""
        cursor = self.conn.execute(f"SELECT * FROM [{table_name(table)}] WHERE _key = ?", (key,))
        found = cursor.fetchone()
        if found is None:
            return None
        return self.plain_row(table, dict(zip([d[0] for d in cursor.description], found)), key)

    def read_cells(self, table: Table, key: bytes, columns: list[str]) -> list | None:
        """Some columns of the record with this blind key, in plaintext, or None when there is no such record."""
        cells = Cells(table, columns)
        found = self.conn.execute(f"SELECT {cells.sql} FROM [{table_name(table)}] WHERE _key = ?", (key,)).fetchone()
        return None if found is None else cells.values(self.seals, key, found)


class Cells:
    """Some columns of a record table, read: ``sql`` is the select list (the plain columns, then the
    row's seal if any asked column is sensitive); ``values(seals, key, row)`` the plaintext values,
    in ``columns``' order, of a row selected by it (more may follow them in the row)."""

    def __init__(self, table: Table, columns: list[str]):
        self.table, self.columns = table, list(columns)
        plain = [c for c in self.columns if not table.columns[c].sensitive]
        self.sealed = len(plain) < len(self.columns)
        self.width = len(plain) + self.sealed  # the row's values that are these columns'
        self.sql = ", ".join([f"[{c}]" for c in plain] + (["[_sealed]"] if self.sealed else []))
        self._at = {c: i for i, c in enumerate(plain)}

    def values(self, seals: "Seals", key: bytes, row, open_seal: bool = True) -> list:
        """Without ``open_seal`` the row's seal stays shut and its sensitive cells read None (for a caller
        that uses only the plain ones)."""
        if not self.sealed:
            return list(row[:self.width])
        if not open_seal:
            return [row[self._at[c]] if c in self._at else None for c in self.columns]
        opened = seals.open_row(self.table, row[self.width - 1], key)
        at = self._at
        return [row[at[c]] if c in at else opened.get(c) for c in self.columns]


def read_sealed_columns(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Table -> the columns its rows' seals hold, in order (``sealed_columns``; none before store version 4)."""
    if not _has_table(conn, "sealed_columns"):
        return {}
    return {tbl: json.loads(columns) for tbl, columns in conn.execute("SELECT tbl, columns FROM sealed_columns")}


def _columns_of(conn: sqlite3.Connection, name: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info([{name}])")}


class Seals:
    """The store's value cryptography, which needs the keyring and no database: blind indexes and
    sealed values. The merge's worker processes (prepare.py) hold one each.

    ``row_columns``: table -> the columns of its rows' seals, in their order (``sealed_columns``):
    a new sensitive column is added at the end; one no longer sensitive keeps its place, marked
    "-" (its values were copied out to a column of their own, and new seals leave it empty), so
    every seal ever made still opens. A table not listed seals its sensitive columns in schema order.
    """

    def __init__(self, keyring: Keyring, row_columns: dict[str, list[str]] | None = None):
        self.keyring = keyring
        self.suite = keyring.suite
        self.row_columns = dict(row_columns or {})
        self._sealers: dict = {}  # data key id -> its bound AEAD
        self._openers: dict = {}
        self._aads: dict = {}
        self._row_aads: dict = {}
        self._slots: dict = {}

    def slots(self, table: Table) -> list[str | None]:
        """The columns a row seal of ``table`` holds, in order; None for a place no longer used."""
        slots = self._slots.get(table.qualified)
        if slots is None:
            listed = self.row_columns.get(table.qualified)
            if listed is None:
                listed = table.sensitive_columns
            slots = self._slots[table.qualified] = [None if c.startswith("-") else c for c in listed]
        return slots

    def sealed(self, table: Table) -> list[str]:
        """The columns ``table``'s row seals hold now."""
        return [c for c in self.slots(table) if c is not None]

    def set_row_columns(self, qualified: str, columns: list[str]) -> None:
        self.row_columns[qualified] = list(columns)
        self._slots.pop(qualified, None)
        self._row_aads = {k: v for k, v in self._row_aads.items() if k[0] != qualified}

    def _row_aad(self, table: Table, n: int) -> bytes:
        """What binds a row seal of ``n`` values: the table and its first ``n`` places' columns (the blind
        key follows)."""
        try:
            return self._row_aads[table.qualified, n]
        except KeyError:
            listed = self.row_columns.get(table.qualified, table.sensitive_columns)
            names = ",".join(c.lstrip("-") for c in listed[:n])
            aad = self._row_aads[table.qualified, n] = f"row|{table.qualified}|{names}|".encode()
            return aad

    def seal_row(self, table: Table, values, key: bytes) -> bytes | None:
        """The sensitive values of a row (``values``: column -> plaintext), sealed together; None
        when it has none. The trailing empty places are left out."""
        row = [values.get(c) if c is not None else None for c in self.slots(table)]
        n = len(row)
        while n and row[n - 1] is None:
            n -= 1
        if not n:
            return None
        key_id = self.keyring.data_key_id
        header = bytes([SEALED_ROW_FORMAT, int(key_id)]) + _varint(n)
        nonce = fresh_nonce()
        aad = header + self._row_aad(table, n) + key
        return header + nonce + self._sealer(key_id)(nonce, values_bytes(row[:n]), aad)

    def open_row(self, table: Table, sealed, key: bytes) -> dict:
        """Column -> plaintext of a row seal (``seal_row``); {} for None."""
        if sealed is None:
            return {}
        sealed = bytes(sealed)
        slots = self.slots(table)
        try:
            if sealed[0] != SEALED_ROW_FORMAT:
                raise ValueError
            n, at = _read_varint(sealed, 2)
        except (IndexError, ValueError):
            raise SyncdbError(_("a sealed row in {table} has an unknown format; restore the store from a backup")
                              .format(table=table.qualified)) from None
        if n > len(slots):
            raise SyncdbError(_("a sealed row in {table} holds more values than the store lists columns for; "
                                "restore the store from a backup").format(table=table.qualified))
        opener = self._opener(sealed[1], table, "_sealed")
        plain = opener(sealed[at:at + 12], sealed[at + 12:], sealed[:at] + self._row_aad(table, n) + key)
        try:
            values = bytes_values(plain, n)
        except ValueError:
            raise SyncdbError(_("a sealed row in {table} is damaged; restore the store from a backup").format(
                table=table.qualified)) from None
        return {c: v for c, v in zip(slots, values) if c is not None}

    def _sealer(self, key_id: str):
        """The AEAD under data key ``key_id``, its key schedule made once."""
        sealer = self._sealers.get(key_id)
        if sealer is None:
            sealer = self._sealers[key_id] = self.suite.sealer(self.keyring.data_keys[key_id])
        return sealer

    def _opener(self, key_byte: int, table: Table, column: str):
        opener = self._openers.get(key_byte)
        if opener is None:
            data_key = self.keyring.data_keys.get(str(key_byte))
            if data_key is None:
                raise SyncdbError(_("a value in {table}.{column} is sealed under data key "
                                    "{key}, which this keyring does not hold").format(
                    table=table.qualified, column=column, key=key_byte))
            opener = self._openers[key_byte] = self.suite.opener(data_key)
        return opener

    # Blind indexes: 16 bytes of HMAC under the index key, with a domain-separating label.
    def blind_key(self, table: Table, key_values: list) -> bytes:
        return self._index_mac(b"key|" + _key_text(table.qualified, key_values))[:16]

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
        nonce = fresh_nonce()
        return (bytes([SEALED_FORMAT, int(key_id)]) + nonce
                + self._sealer(key_id)(nonce, value_bytes(value), self._aad(table, column) + key))

    def open(self, sealed, table: Table, column: str, key: bytes):
        if sealed is None:
            return None
        sealed = bytes(sealed)
        if sealed[0] != SEALED_FORMAT:
            raise SyncdbError(_("a sealed value in {table}.{column} has an unknown format").format(
                table=table.qualified, column=column))
        opener = self._opener(sealed[1], table, column)
        return value_of(opener(sealed[2:14], sealed[14:], self._aad(table, column) + key))

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


def open_store(store_dir, secret: Secret | Keyring, domains: dict[str, Domain], *, write: bool = False) -> Store:
    """The store in ``store_dir``, read-only unless ``write``.

    A read-only store is opened with ``mode=ro`` and ``query_only``: it never
    writes to store.db and, the store being in WAL mode, never waits for a
    merge that is writing. A store that must be upgraded first is refused
    with the command that does it (see migrations.py).
    """
    def ready(store: Store) -> None:
        store.require_current()
        store.stand_in_missing_tables()
        if not write:
            store.conn.execute("PRAGMA query_only = 1")
    return opened(store_dir, secret, domains, write=write, ready=ready)


def opened(store_dir, secret: Secret | Keyring, domains: dict[str, Domain], *, write: bool,
           ready: Callable[[Store], None]) -> Store:
    """The store, its keyring checked, then ``ready(store)`` (open_store's checks, or migrations'
    upgrade); on any failure the connection is closed and nothing was written."""
    store_dir = Path(store_dir)
    office.store_file(store_dir)  # a folder that is no store is named as such, before any passphrase
    # The keyring next: a wrong passphrase or key file is refused before the store is opened.
    keyring = secret if isinstance(secret, Keyring) else office.load_keyring(store_dir, secret)
    conn = office.connect(store_dir) if write else connect_read_only(store_dir)
    try:
        store = Store(conn, keyring, domains, read_only=not write)
        ready(store)
        return store
    except sqlite3.Error as e:
        conn.close()
        raise storage_error(e, store_dir) from None
    except BaseException:
        conn.close()
        raise


def connect_read_only(store_dir) -> sqlite3.Connection:
    """store.db, opened so that nothing can be written to it (``open_store`` adds ``query_only``)."""
    path = office.store_file(store_dir)
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as e:
        raise storage_error(e, store_dir) from None
    return conn


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _store_file(conn: sqlite3.Connection) -> str:
    return conn.execute("PRAGMA database_list").fetchone()[2] or _("the store database")


def _refuse_if_not_a_store(conn: sqlite3.Connection) -> None:
    """Only `office init` creates a store: an emptied or foreign store.db is never silently made anew."""
    try:
        found = _has_table(conn, "communities")
    except sqlite3.DatabaseError as e:
        if "not a database" not in str(e):
            raise
        found = False
    if not found:
        path = _store_file(conn)
        raise SyncdbError(_("{path} is empty or not an office store; restore it from a backup of the store "
                            "folder; no table was made in it (only `syncdb office init` creates a store)").format(
            path=path))


def _foreign_keyring(conn: sqlite3.Connection, ring: Keyring, why: str) -> SyncdbError:
    folder = Path(_store_file(conn)).parent
    return SyncdbError(_("the keyring in {folder} (office {code}, key {key}) is not this "
                         "store's: {why}. Put back the store's own keyring.json from your backup; "
                         "nothing was changed").format(folder=folder, code=ring.public.code, key=ring.public.id,
                                                       why=why))
