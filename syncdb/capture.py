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
"""

from __future__ import annotations

import json
import sqlite3
import uuid

from .schema import Domain, Table

LOG = "_syncdb_log"
META = "_syncdb_meta"
_NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"


def _trigger_names(table: Table) -> list[str]:
    return [f"_syncdb_{table.name}_{op}" for op in ("insert", "update", "delete", "rekey")]


def _key_json(prefix: str, table: Table) -> str:
    # A one-column key is logged as its bare value (the log's key column has no
    # type, so an integer stays an integer): one function call less per write.
    if len(table.key) == 1:
        return f"{prefix}.[{table.key[0]}]"
    return "json_array(" + ", ".join(f"{prefix}.[{k}]" for k in table.key) + ")"


def trigger_sql(table: Table) -> list[str]:
    ins, upd, dele, rekey = _trigger_names(table)
    new_key, old_key = _key_json("NEW", table), _key_json("OLD", table)
    key_cols = ", ".join(f"[{k}]" for k in table.key)
    key_moved = " OR ".join(f"OLD.[{k}] IS NOT NEW.[{k}]" for k in table.key)

    def log(key):
        return f"INSERT INTO {LOG}(tbl, key, ms) VALUES ('{table.name}', {key}, {_NOW_MS});"

    return [
        f"CREATE TRIGGER IF NOT EXISTS [{ins}] AFTER INSERT ON [{table.name}] BEGIN {log(new_key)} END",
        f"CREATE TRIGGER IF NOT EXISTS [{upd}] AFTER UPDATE ON [{table.name}] BEGIN {log(new_key)} END",
        f"CREATE TRIGGER IF NOT EXISTS [{dele}] AFTER DELETE ON [{table.name}] BEGIN {log(old_key)} END",
        # A natural key changed: the old key is gone too. Its own trigger keeps the
        # common update to one small row.
        f"CREATE TRIGGER IF NOT EXISTS [{rekey}] AFTER UPDATE OF {key_cols} ON [{table.name}] "
        f"WHEN {key_moved} BEGIN {log(old_key)} END",
    ]


def install(conn: sqlite3.Connection, domain: Domain) -> str:
    """Create the change log and triggers (idempotent); return the capture id.

    The capture id is new whenever the log itself is new, so a state that
    remembers another id knows the file is not the one it last read.
    """
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        for table in domain.tables.values():
            conn.execute(table.create_sql())
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {LOG} (seq INTEGER PRIMARY KEY, "
            "tbl TEXT NOT NULL, key NOT NULL, ms INTEGER NOT NULL)")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {META} (name TEXT PRIMARY KEY, value TEXT)")
        conn.execute(f"INSERT OR IGNORE INTO {META} VALUES ('capture_id', ?)", (uuid.uuid4().hex,))
        conn.execute(f"INSERT OR IGNORE INTO {META} VALUES ('generation', '0')")
        for table in domain.tables.values():
            for sql in trigger_sql(table):
                conn.execute(sql)
    return meta(conn)["capture_id"]


def meta(conn: sqlite3.Connection) -> dict[str, str]:
    try:
        return dict(conn.execute(f"SELECT name, value FROM {META}"))
    except sqlite3.OperationalError:
        return {}


def missing_triggers(conn: sqlite3.Connection, domain: Domain) -> list[str]:
    present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    return [name for table in domain.tables.values() for name in _trigger_names(table) if name not in present]


def needs_full_compare(conn: sqlite3.Connection, domain: Domain, expected: dict | None) -> str | None:
    """Why the log cannot be trusted for this database, or None if it can.

    ``expected`` is what the community state remembers of this database
    (capture id and generation) after the last push, or None before the first.
    """
    if expected is None:
        return "first push from this database"
    missing = missing_triggers(conn, domain)
    if missing:
        return f"capture triggers were dropped ({', '.join(missing[:3])}{'…' if len(missing) > 3 else ''})"
    current = meta(conn)
    if current.get("capture_id") != expected.get("capture_id"):
        return "the database file was replaced (its capture id changed)"
    if current.get("generation") != str(expected.get("generation")):
        return "the database file was replaced by an older or newer copy (its generation changed)"
    return None


def logged_keys(conn: sqlite3.Connection, domain: Domain) -> tuple[int, dict[str, dict[str, int]]]:
    """Keys named in the log since it was last cleared: {table: {key_json: latest ms}}, and the last seq."""
    keys: dict[str, dict[str, int]] = {name: {} for name in domain.tables}
    last = 0
    for seq, tbl, key, ms in conn.execute(f"SELECT seq, tbl, key, ms FROM {LOG} ORDER BY seq"):
        last = seq
        if tbl not in keys:
            continue  # a table no longer in the schema
        # The shadow's form of a key: JSON of the list of key values.
        values = [key] if len(domain.tables[tbl].key) == 1 else json.loads(key)
        k = json.dumps(values, ensure_ascii=False)
        keys[tbl][k] = max(ms, keys[tbl].get(k, ms))
    return last, keys


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
