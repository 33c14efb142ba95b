"""The conflict queue as an administrator sees it: decrypted, in memory only."""

from __future__ import annotations

import json

from .crypto import Secret
from .merge import open_store
from .schema import Domain
from .store import mask, table_name


def list_conflicts(store_dir, secret: Secret, domains: dict[str, Domain], include_closed=False) -> list[dict]:
    store = open_store(store_dir, secret, domains)
    try:
        where = "" if include_closed else "WHERE status = 'open'"
        out = []
        for cid, tbl, key, col, kind, candidates, winner, rule, status in store.conn.execute(
                f"SELECT id, tbl, key, col, kind, candidates, winner, rule, status FROM conflicts {where} ORDER BY id"):
            table = store.table(tbl)
            record = _record_label(store, table, key)
            out.append({
                "id": cid, "table": tbl, "record": record, "column": col, "kind": kind, "status": status,
                "rule": rule, "winner": winner,
                "candidates": [{
                    "origin": c["origin"], "version": c["version"], "deleted": c["deleted"],
                    "value": store.plain(table, col, bytes.fromhex(c["value"]) if table.columns[col].sensitive
                                         and c["value"] is not None else c["value"], key),
                } for c in json.loads(candidates)],
            })
        return out
    finally:
        store.conn.close()


def _record_label(store, table, key) -> str:
    cols = ", ".join(f"[{k}]" for k in table.key)
    row = store.conn.execute(f"SELECT {cols} FROM [{table_name(table)}] WHERE _key = ?", (key,)).fetchone()
    if row is None:
        return key.hex()
    values = [store.plain(table, k, v, key) for k, v in zip(table.key, row)]
    return "/".join(mask(v) if table.columns[k].sensitive else str(v) for k, v in zip(table.key, values))
