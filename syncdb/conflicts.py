"""The conflict queue as an administrator sees it: decrypted, in memory only."""

from __future__ import annotations

import json

from .crypto import Secret
from .errors import SyncdbError
from .merge import open_store
from .schema import Domain
from .store import mask, table_name


COLUMNS = "id, tbl, key, col, kind, candidates, winner, rule, status, opened, closed, note"


def list_conflicts(store_dir, secret: Secret, domains: dict[str, Domain], include_closed=False) -> list[dict]:
    store = open_store(store_dir, secret, domains)
    try:
        where = "" if include_closed else "WHERE status = 'open'"
        return [_item(store, row) for row in store.conn.execute(f"SELECT {COLUMNS} FROM conflicts {where} ORDER BY id")]
    finally:
        store.conn.close()


def show_conflict(store_dir, secret: Secret, domains: dict[str, Domain], conflict_id: int) -> dict:
    """One conflict in full: its candidates, and the record's other cells as the store holds them now."""
    store = open_store(store_dir, secret, domains)
    try:
        row = store.conn.execute(f"SELECT {COLUMNS} FROM conflicts WHERE id = ?", (conflict_id,)).fetchone()
        if row is None:
            raise SyncdbError(f"there is no conflict #{conflict_id}; see `syncdb conflicts list`")
        item = _item(store, row)
        table, key = store.table(item["table"]), bytes(row[2])
        stored = store.conn.execute(f"SELECT * FROM [{table_name(table)}] WHERE _key = ?", (key,))
        names = [d[0] for d in stored.description]
        found = stored.fetchone()
        cells = dict(zip(names, found)) if found else {}
        item["label"] = table.columns[item["column"]].label
        item["record_cells"] = [
            {"column": c, "label": table.columns[c].label, "value": store.plain(table, c, cells.get(c), key)}
            for c in table.columns] if found else []
        item["others_open"] = [
            {"id": cid, "column": col} for cid, col in store.conn.execute(
                "SELECT id, col FROM conflicts WHERE tbl = ? AND key = ? AND status = 'open' AND id != ? ORDER BY id",
                (item["table"], key, conflict_id))]
        return item
    finally:
        store.conn.close()


def _item(store, row) -> dict:
    cid, tbl, key, col, kind, candidates, winner, rule, status, opened, closed, note = row
    table = store.table(tbl)
    sealed = table.columns[col].sensitive
    return {
        "id": cid, "table": tbl, "record": _record_label(store, table, key), "column": col, "kind": kind,
        "status": status, "rule": rule, "winner": winner, "opened": opened, "closed": closed, "note": note,
        "candidates": [{
            "origin": c["origin"], "version": c["version"], "deleted": c["deleted"],
            "value": store.plain(table, col, bytes.fromhex(c["value"]) if sealed and c["value"] is not None
                                 else c["value"], key),
        } for c in json.loads(candidates)],
    }


def _record_label(store, table, key) -> str:
    cols = ", ".join(f"[{k}]" for k in table.key)
    row = store.conn.execute(f"SELECT {cols} FROM [{table_name(table)}] WHERE _key = ?", (key,)).fetchone()
    if row is None:
        return key.hex()
    values = [store.plain(table, k, v, key) for k, v in zip(table.key, row)]
    return "/".join(mask(v) if table.columns[k].sensitive else str(v) for k, v in zip(table.key, values))
