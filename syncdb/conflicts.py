"""The conflict queue: the one module that reads and writes the ``conflicts`` table.

A conflict is one cell of one record whose frontier holds versions the
rules could not settle (docs/merge.md). The merge opens, updates and closes
them; ``conflicts list|show|review|resolve``, the publish page and ``status``
read them; ``keys rotate`` re-seals them. Candidates keep a sensitive value
sealed, as hex of the store's sealed bytes, so the queue holds no plaintext;
what people see is decrypted in memory only.
"""

from __future__ import annotations

import json
import sqlite3
import time

from . import meanings
from .errors import SyncdbError
from .i18n import N_, _
from .masks import mask
from .store import Store, open_store

TABLES = """
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, key BLOB NOT NULL, col TEXT NOT NULL,
    kind TEXT NOT NULL, candidates TEXT NOT NULL, winner TEXT NOT NULL, rule TEXT NOT NULL,
    status TEXT NOT NULL, opened TEXT NOT NULL, closed TEXT, note TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS conflicts_open ON conflicts (tbl, key, col) WHERE status = 'open';
"""

COLUMNS = "id, tbl, key, col, kind, candidates, winner, rule, status, opened, closed, note"
STATUSES = {"open": N_("open"), "closed": N_("closed")}  # the stored word, and what a person reads for it


# ---------------------------------------------------------------- the merge's side

def open_records(store: Store) -> set[tuple[str, bytes]]:
    """(table, blind key) of every record with an open conflict."""
    return {(t, bytes(k)) for t, k in store.conn.execute("SELECT tbl, key FROM conflicts WHERE status = 'open'")}


def open_columns(store: Store, tbl: str, key: bytes) -> set[str]:
    return {c for (c,) in store.conn.execute(
        "SELECT col FROM conflicts WHERE tbl = ? AND key = ? AND status = 'open'", (tbl, key))}


def sealed_candidates(store: Store, table, col: str, key: bytes, frontier) -> str:
    """The candidates as the queue keeps them: each value as the store would (sealed if sensitive)."""
    return json.dumps([{
        "version": c.version, "origin": c.origin, "deleted": c.deleted,
        "value": _sealed_text(store.stored(table, col, c.value, key)),
    } for c in frontier], ensure_ascii=False)


def open_or_update(store: Store, table, key: bytes, col: str, frontier, decision, already_open: bool) -> bool:
    """Queue the cell (or bring its open conflict up to date); True if a conflict was opened."""
    candidates = sealed_candidates(store, table, col, key, frontier)
    if already_open:
        store.conn.execute(
            "UPDATE conflicts SET candidates = ?, winner = ?, rule = ?, kind = ? "
            "WHERE tbl = ? AND key = ? AND col = ? AND status = 'open'",
            (candidates, decision.winner.version, decision.rule, decision.kind, table.qualified, key, col))
        return False
    store.conn.execute(
        "INSERT INTO conflicts (tbl, key, col, kind, candidates, winner, rule, status, opened) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?)",
        (table.qualified, key, col, decision.kind, candidates, decision.winner.version,
         decision.rule, _now()))
    return True


def close(store: Store, tbl: str, key: bytes, col: str, note: str) -> int:
    """Close the cell's open conflict, if any; return how many were closed."""
    return store.conn.execute(
        "UPDATE conflicts SET status = 'closed', closed = ?, note = ? "
        "WHERE tbl = ? AND key = ? AND col = ? AND status = 'open'",
        (_now(), note, tbl, key, col)).rowcount


def _sealed_text(value):
    return value.hex() if isinstance(value, bytes) else value


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# ---------------------------------------------------------------- reading the queue

def items(store: Store, include_closed: bool = False) -> list[dict]:
    """The queue (open conflicts, or all), decrypted in memory."""
    # The open ones through their partial index, then sorted: ORDER BY id would read every conflict
    # the years have closed to find them.
    where = "ORDER BY id" if include_closed else "WHERE status = 'open' ORDER BY +id"
    return [_item(store, row) for row in store.conn.execute(f"SELECT {COLUMNS} FROM conflicts {where}")
            if _in_schemas(store, row[1], row[3])]


def open_ids(store: Store, records: set[tuple[str, bytes]]) -> set[int]:
    """Ids of the open conflicts on these records, (table, blind key) each: the person page's."""
    found: set[int] = set()
    for tbl, key in records:
        found |= {cid for (cid,) in store.conn.execute(
            "SELECT id FROM conflicts WHERE tbl = ? AND key = ? AND status = 'open'", (tbl, key))}
    return found


def get(store: Store, conflict_id: int) -> dict:
    """One conflict as its queue entry says, decrypted; refused if there is none."""
    row = store.conn.execute(f"SELECT {COLUMNS} FROM conflicts WHERE id = ?", (conflict_id,)).fetchone()
    if row is None:
        raise SyncdbError(_("there is no conflict #{id}; see `syncdb conflicts list`").format(id=conflict_id))
    item = _item(store, row)
    item["key"] = bytes(row[2])
    return item


def show(store: Store, conflict_id: int) -> dict:
    """One conflict in full: its candidates, and the record's other cells as the store holds them now."""
    item = get(store, conflict_id)
    table, key = store.table(item["table"]), item.pop("key")
    found = store.read_row(table, key)
    cells = found or {}
    item["label"] = table.columns[item["column"]].label
    domain, column = store.domains[table.domain], table.columns[item["column"]]
    for c in item["candidates"]:
        c["shown"] = meanings.shown(domain, column, c["value"])  # 2 女性, 正常: codes read as words
    item["record_cells"] = [
        {"column": c, "label": table.columns[c].label, "value": value,
         "shown": meanings.shown(domain, table.columns[c], value)}
        for c, value in ((c, cells.get(c)) for c in table.columns)] if found else []
    item["others_open"] = [
        {"id": cid, "column": col} for cid, col in store.conn.execute(
            "SELECT id, col FROM conflicts WHERE tbl = ? AND key = ? AND status = 'open' AND id != ? ORDER BY id",
            (item["table"], key, conflict_id))]
    return item


def _in_schemas(store: Store, tbl: str, col: str) -> bool:
    """Is the conflict's cell still in the office's schemas? (A table or column a schema dropped keeps
    its records and conflicts in the store; the queue shows them again if the schema brings it back.)"""
    return tbl in store.tables and col in store.tables[tbl].columns


def _item(store: Store, row) -> dict:
    cid, tbl, key, col, kind, candidates, winner, rule, status, opened, closed, note = row
    if not _in_schemas(store, tbl, col):
        raise SyncdbError(_("conflict #{id} is on {table}.{column}, which the office's schemas no longer have; "
                            "it stays in the store as it is: bring the column back to its schema to settle it").format(
            id=cid, table=tbl, column=col))
    table = store.table(tbl)
    key = bytes(key)
    sealed = table.columns[col].sensitive
    return {
        "id": cid, "table": tbl, "record": record_label(store, table, key), "column": col, "kind": kind,
        "status": status, "rule": rule, "winner": winner, "opened": opened, "closed": closed, "note": note,
        "candidates": [{
            "origin": c["origin"], "version": c["version"], "deleted": c["deleted"],
            "value": store.plain(table, col, bytes.fromhex(c["value"]) if sealed and c["value"] is not None
                                 else c["value"], key),
        } for c in json.loads(candidates)],
    }


def record_label(store: Store, table, key: bytes) -> str:
    """The record's key as people may see it: ID numbers masked, other key columns as they are."""
    values = store.read_cells(table, key, table.key)
    if values is None:
        return key.hex()
    return "/".join(mask(v) if table.columns[k].sensitive else str(v) for k, v in zip(table.key, values))


def signature(store: Store) -> tuple[int, int]:
    """(open conflicts, highest id): changes whenever the queue moves."""
    return store.conn.execute("SELECT count(*), coalesce(max(id), 0) FROM conflicts WHERE status = 'open'").fetchone()


def open_by_kind(conn: sqlite3.Connection) -> list[tuple[str, int, str]]:
    """(kind, open conflicts, oldest opened) per kind, from any connection to the store."""
    return conn.execute("SELECT kind, count(*), min(opened) FROM conflicts WHERE status = 'open' "
                        "GROUP BY kind ORDER BY kind").fetchall()


# ---------------------------------------------------------------- key rotation

def data_keys_used(conn: sqlite3.Connection, sensitive: dict[str, set]) -> set[int]:
    """The data key ids the queue's sealed candidates are sealed under (``sensitive``: table -> columns)."""
    used = set()
    for tbl, col, candidates in conn.execute("SELECT tbl, col, candidates FROM conflicts"):
        if col in sensitive.get(tbl, ()):
            used |= {bytes.fromhex(c["value"])[1] for c in json.loads(candidates) if c.get("value")}
    return used


def reseal(store: Store, current: int, reseal_value) -> int:
    """Seal every sensitive candidate again under data key ``current``, in one transaction;
    ``reseal_value(sealed, table, column, key)`` gives the value sealed anew. Return how many."""
    n = 0
    with store.transaction() as conn:
        for cid, tbl, key, col, candidates in conn.execute(
                "SELECT id, tbl, key, col, candidates FROM conflicts").fetchall():
            table = store.tables.get(tbl)
            if table is None or not table.columns[col].sensitive:
                continue
            entries = json.loads(candidates)
            stale = [e for e in entries if e["value"] is not None and bytes.fromhex(e["value"])[1] != current]
            for entry in stale:
                entry["value"] = reseal_value(bytes.fromhex(entry["value"]), table, col, bytes(key)).hex()
            if stale:
                conn.execute("UPDATE conflicts SET candidates = ? WHERE id = ?", (json.dumps(entries), cid))
                n += len(stale)
    return n


def needs_reseal(store: Store, current: int) -> bool:
    """Does any sensitive candidate still carry another data key than ``current``?"""
    sensitive = {tbl: set(t.sensitive_columns) for tbl, t in store.tables.items()}
    return bool(data_keys_used(store.conn, sensitive) - {current})


# ---------------------------------------------------------------- for a caller holding a folder

def list_conflicts(store_dir, secret, domains, include_closed: bool = False) -> list[dict]:
    """``items`` of the store in ``store_dir``, opened read-only for the purpose."""
    with open_store(store_dir, secret, domains) as store:
        return items(store, include_closed)


def show_conflict(store_dir, secret, domains, conflict_id: int) -> dict:
    """``show`` of the store in ``store_dir``, opened read-only for the purpose."""
    with open_store(store_dir, secret, domains) as store:
        return show(store, conflict_id)
