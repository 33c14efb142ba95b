"""Change capture inside a community's working databases.

Triggers on every schema table note *which* natural keys changed, and when
by the PC clock, in ``_syncdb_log``; they record no values, so a write costs
one small extra row. At push time the keys in the log are read back and
compared with what was last sent (the shadow in the community state, see
``community.py``): that difference, cell by cell, is the change. Any program
writing through any connection fires the triggers, and a log read twice or a
crash half-way only repeats a comparison, never a change.

When the triggers are gone or the file was replaced by a copy, the log cannot
be trusted; ``needs_full_compare`` says so and the caller compares every row.

A write that changes a natural key (a mistyped ID number corrected) logs
the old key with the new one beside it, so the push can send the correction
as one change (``rekey``) and hold the whole of it back when the new record is
invalid, instead of deleting the old record at the office meanwhile.

Records sync by natural key, so the key must be unique in the working
database: capture adds a unique index on it where the table has none, after
checking that no key is there twice (``duplicate_keys``).
"""

from __future__ import annotations

import json
import sqlite3
import uuid

from .errors import SyncdbError
from .i18n import _, ngettext
from .masks import mask
from .schema import TYPES, Domain, Table

LOG = "_syncdb_log"
META = "_syncdb_meta"
_NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"


def trigger_names(table: Table) -> list[str]:
    """The names of the capture triggers of one table: insert, update, delete, key change."""
    return [f"_syncdb_{table.name}_{op}" for op in ("insert", "update", "delete", "rekey")]


def _key_json(prefix: str, table: Table) -> str:
    # A one-column key is logged as its bare value (the log's key column has no
    # type, so an integer stays an integer): one function call less per write.
    if len(table.key) == 1:
        return f"{prefix}.[{table.key[0]}]"
    return "json_array(" + ", ".join(f"{prefix}.[{k}]" for k in table.key) + ")"


def trigger_sql(table: Table) -> list[str]:
    ins, upd, dele, rekey = trigger_names(table)
    new_key, old_key = _key_json("NEW", table), _key_json("OLD", table)
    key_cols = ", ".join(f"[{k}]" for k in table.key)
    key_moved = " OR ".join(f"OLD.[{k}] IS NOT NEW.[{k}]" for k in table.key)

    def log(key, moved_to="NULL"):
        return (f"INSERT INTO {LOG}(tbl, key, ms, new_key) "
                f"VALUES ('{table.name}', {key}, {_NOW_MS}, {moved_to});")

    return [
        f"CREATE TRIGGER [{ins}] AFTER INSERT ON [{table.name}] BEGIN {log(new_key)} END",
        f"CREATE TRIGGER [{upd}] AFTER UPDATE ON [{table.name}] BEGIN {log(new_key)} END",
        f"CREATE TRIGGER [{dele}] AFTER DELETE ON [{table.name}] BEGIN {log(old_key)} END",
        # A natural key changed: the old key is gone too, and where it went is what lets the
        # push send old key -> new key as one change. Its own trigger keeps the common update
        # to one small row.
        f"CREATE TRIGGER [{rekey}] AFTER UPDATE OF {key_cols} ON [{table.name}] "
        f"WHEN {key_moved} BEGIN {log(old_key, new_key)} END",
    ]


def key_index_name(table: Table) -> str:
    return f"_syncdb_{table.name}_key"


def install(conn: sqlite3.Connection, domain: Domain, skip=(), allow_duplicates: bool = False) -> str:
    """Create the change log, triggers and key indexes (idempotent); return the capture id.

    Tables named in ``skip`` are left alone (a table that is gone is not made
    again here: see ``table_problems``); the others are created if missing.
    The capture id is new whenever the log itself is new, so a state that
    remembers another id knows the file is not the one it last read. A
    natural key held by more than one row raises DuplicateKeys, changing
    nothing, unless ``allow_duplicates`` (a push holds those records back
    instead, and the index is made once they are gone).
    """
    tables = [t for t in domain.tables.values() if t.name not in skip]
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        for table in tables:
            conn.execute(table.create_sql())
            _ensure_unique_key(conn, table, allow_duplicates)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {LOG} (seq INTEGER PRIMARY KEY, "
            "tbl TEXT NOT NULL, key NOT NULL, ms INTEGER NOT NULL, new_key)")
        if "new_key" not in {row[1] for row in conn.execute(f"PRAGMA table_info({LOG})")}:
            conn.execute(f"ALTER TABLE {LOG} ADD COLUMN new_key")  # a log made by an older syncdb
        conn.execute(f"CREATE TABLE IF NOT EXISTS {META} (name TEXT PRIMARY KEY, value TEXT)")
        conn.execute(f"INSERT OR IGNORE INTO {META} VALUES ('capture_id', ?)", (uuid.uuid4().hex,))
        conn.execute(f"INSERT OR IGNORE INTO {META} VALUES ('generation', '0')")
        for table in tables:
            # Made afresh, so a trigger an older syncdb wrote is replaced by today's.
            for name, sql in zip(trigger_names(table), trigger_sql(table)):
                conn.execute(f"DROP TRIGGER IF EXISTS [{name}]")
                conn.execute(sql)
    return meta(conn)["capture_id"]


def table_problems(conn: sqlite3.Connection, domain: Domain) -> dict[str, str]:
    """What keeps each table of a working database from syncing: {table name: why}.

    A table that is missing, or that lacks a column the schema declares. Empty
    when every table matches.
    """
    problems = {}
    for table in domain.tables.values():
        present = {row[1].lower() for row in conn.execute(f"PRAGMA table_info([{table.name}])")}
        if not present:
            problems[table.name] = _("table '{table}' is missing").format(table=table.name)
            continue
        missing = [c for c in table.columns if c.lower() not in present]
        if missing:
            adds = "; ".join(f"ALTER TABLE {table.name} ADD COLUMN {c} {TYPES[table.columns[c].type]}"
                             for c in missing)
            problems[table.name] = ngettext("table '{table}' has no column {columns} (add it: {adds})",
                                            "table '{table}' has no column {columns} (add them: {adds})",
                                            len(missing)).format(table=table.name, columns=", ".join(missing),
                                                                 adds=adds)
    return problems


def table_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute(f"PRAGMA table_info([{name}])").fetchone() is not None


def key_is_unique(conn: sqlite3.Connection, table: Table) -> bool:
    """Whether SQLite itself keeps the natural key unique: a unique index (or the
    primary key) over the key columns or some of them, for every row."""
    key = {k.lower() for k in table.key}
    info = list(conn.execute(f"PRAGMA table_info([{table.name}])"))
    pk = [row for row in info if row[5]]
    if len(pk) == 1 and pk[0][2].upper() == "INTEGER" and pk[0][1].lower() in key:
        return True  # INTEGER PRIMARY KEY: the rowid itself, listed by no index
    for __, name, unique, __, partial in conn.execute(f"PRAGMA index_list([{table.name}])"):
        if not unique or partial:
            continue
        columns = [row[2] for row in conn.execute(f"PRAGMA index_info([{name}])")]
        if columns and None not in columns and {c.lower() for c in columns} <= key:
            return True
    return False


def duplicate_keys(conn: sqlite3.Connection, table: Table, limit: int | None = None) -> list[tuple[list, int]]:
    """Natural keys held by more than one row, with how many: [(key values, rows)]."""
    cols = ", ".join(f"[{k}]" for k in table.key)
    sql = f"SELECT {cols}, count(*) FROM [{table.name}] GROUP BY {cols} HAVING count(*) > 1 ORDER BY {cols}"
    if limit:
        sql += f" LIMIT {int(limit)}"
    return [(list(row[:-1]), row[-1]) for row in conn.execute(sql)]


class DuplicateKeys(SyncdbError):
    """A table's natural key is held by more than one row, so capture cannot make it unique."""

    def __init__(self, table: Table, duplicates: list[tuple[list, int]], where: str):
        self.table, self.duplicates = table, duplicates
        super().__init__(_(
            "{where}: in table '{table}', {duplicates}. syncdb sends "
            "each record by its natural key ({key}), so one of those rows would never "
            "reach the office. Keep one row per key (correct or delete the others), then run the "
            "command again; nothing was changed").format(
            where=where, table=table.name, duplicates=shown_duplicates(table, duplicates), key=", ".join(table.key)))


def shown_duplicates(table: Table, duplicates: list[tuple[list, int]], most: int = 5) -> str:
    def shown(values):
        return " / ".join(mask(v) if table.columns[k].sensitive else str(v)
                          for k, v in zip(table.key, values))

    listed = ", ".join(_("{key} ({rows} rows)").format(key=shown(values), rows=n) for values, n in duplicates[:most])
    if len(duplicates) > most:
        return _("the natural key ({key}) is not unique: {listed} and {more} more").format(
            key=", ".join(table.key), listed=listed, more=len(duplicates) - most)
    return _("the natural key ({key}) is not unique: {listed}").format(key=", ".join(table.key), listed=listed)


def _ensure_unique_key(conn: sqlite3.Connection, table: Table, allow_duplicates: bool = False) -> None:
    # Chosen over refusing the table: the owner of the data need not edit their program's
    # schema, and from now on a second row with the same key fails in the program that
    # writes it, in front of the worker, instead of never reaching the office unseen.
    # The check first, so the index is never the thing that fails.
    if key_is_unique(conn, table):
        return
    duplicates = duplicate_keys(conn, table, limit=6)
    if duplicates and allow_duplicates:
        return
    if duplicates:
        raise DuplicateKeys(table, duplicates, f"{table.domain}.db")
    cols = ", ".join(f"[{k}]" for k in table.key)
    conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS [{key_index_name(table)}] ON [{table.name}] ({cols})")


def meta(conn: sqlite3.Connection) -> dict[str, str]:
    try:
        return dict(conn.execute(f"SELECT name, value FROM {META}"))
    except sqlite3.OperationalError:
        return {}


def missing_triggers(conn: sqlite3.Connection, domain: Domain) -> list[str]:
    present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    return [name for table in domain.tables.values() for name in trigger_names(table) if name not in present]


def needs_full_compare(conn: sqlite3.Connection, domain: Domain, expected: dict | None) -> str | None:
    """Why the log cannot be trusted for this database, or None if it can.

    ``expected`` is what the community state remembers of this database
    (capture id and generation) after the last push, or None before the first.
    """
    if expected is None:
        return _("first push from this database")
    missing = missing_triggers(conn, domain)
    if missing:
        return _("capture triggers were dropped ({triggers})").format(
            triggers=", ".join(missing[:3]) + ("…" if len(missing) > 3 else ""))
    current = meta(conn)
    if current.get("capture_id") != expected.get("capture_id"):
        return _("the database file was replaced (its capture id changed)")
    if current.get("generation") != str(expected.get("generation")):
        return _("the database file was replaced by an older or newer copy (its generation changed)")
    if not {"new_key"} <= {row[1] for row in conn.execute(f"PRAGMA table_info({LOG})")}:
        return _("its change capture was set up by an older syncdb")
    loose = [t.name for t in domain.tables.values() if not key_is_unique(conn, t)]
    if loose:
        # Without the index a second row with the same key may have come in unseen.
        return _("the unique index on the natural key of {tables} was dropped").format(tables=", ".join(loose))
    return None


def logged_keys(conn: sqlite3.Connection, domain: Domain) -> tuple[int, dict[str, dict[str, int]], list]:
    """What the log names since it was last cleared.

    Returns the last seq; {table: {key_json: latest ms}}; and the key changes
    in the order they were made, as (table, old key_json, new key_json, ms).
    """
    keys: dict[str, dict[str, int]] = {name: {} for name in domain.tables}
    moves = []
    last = 0
    for seq, tbl, key, ms, new_key in conn.execute(f"SELECT seq, tbl, key, ms, new_key FROM {LOG} ORDER BY seq"):
        last = seq
        if tbl not in keys:
            continue  # a table no longer in the schema
        k = _logged_key_json(domain.tables[tbl], key)
        keys[tbl][k] = max(ms, keys[tbl].get(k, ms))
        if new_key is not None:
            moves.append((tbl, k, _logged_key_json(domain.tables[tbl], new_key), ms))
    return last, keys, moves


def _logged_key_json(table: Table, logged) -> str:
    # The shadow's form of a key: JSON of the list of key values.
    values = [logged] if len(table.key) == 1 else json.loads(logged)
    return json.dumps(values, ensure_ascii=False)


def read_row(conn: sqlite3.Connection, table: Table, key: list) -> dict | None:
    where = " AND ".join(f"[{k}] IS ?" for k in table.key)
    cols = ", ".join(f"[{c}]" for c in table.columns)
    cursor = conn.execute(f"SELECT {cols} FROM [{table.name}] WHERE {where}", key)
    row = cursor.fetchone()
    return None if row is None else dict(zip(table.columns, row))


def all_rows(conn: sqlite3.Connection, table: Table):
    """Every row as (key_json, row dict), for a full comparison."""
    cols = list(table.columns)
    select = ", ".join(f"[{c}]" for c in cols)
    for values in conn.execute(f"SELECT {select} FROM [{table.name}]"):
        row = dict(zip(cols, values))
        yield key_json(table, row), row


def key_json(table: Table, row: dict) -> str:
    return json.dumps([row[k] for k in table.key], ensure_ascii=False)


def clear_log(conn: sqlite3.Connection, up_to_seq: int, generation: int) -> None:
    """Drop the log entries a push has taken, and mark the file with the new generation."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"DELETE FROM {LOG} WHERE seq <= ?", (up_to_seq,))
        conn.execute(f"UPDATE {META} SET value = ? WHERE name = 'generation'", (str(generation),))
