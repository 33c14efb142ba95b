"""What the office pages of ``syncdb publish`` show beyond the tables: sync status and the conflict queue.

Read from the store (opened read-only) and the quarantine at each request;
conflict candidates are masked unless the reader may see plaintext.
"""

from __future__ import annotations

import json
import re
import time

from . import conflicts, office
from .projection import mask_value, published_name
from .store import Store


def refusals(store_dir) -> list[dict]:
    """The quarantine's records, newest first: who (verified, or only claimed), why, when.

    A bundle refused before its signature checked out has no verified sender:
    it is listed with the origin its header claims, never counted for that community.
    """
    out = []
    for path in office.quarantine_dir(store_dir).glob("*.reason.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {"reason": "unreadable", "message": f"the record {path.name} cannot be read"}
        origin = record.get("origin")
        if origin is None and path.name.startswith("inbox-"):
            origin = path.name[len("inbox-"):].split("-")[0]  # the office's own inbox copy: verified once
        verified = origin not in (None, "unknown")
        out.append({"origin": origin if verified else None, "claimed": None if verified else _claimed(record),
                    "reason": str(record.get("reason", "unknown")), "refused": str(record.get("refused", "")),
                    "sequence": record.get("sequence")})
    out.sort(key=lambda r: r["refused"], reverse=True)
    return out


def _claimed(record: dict) -> str:
    """The origin an unverified header claims, if it can be read: a claim, shown as one."""
    found = re.search(r'"origin"\s*:\s*"([^"\\]{1,40})"', str(record.get("header") or ""))
    return found.group(1) if found else "?"


def sync_status(store: Store, store_dir) -> list[dict]:
    """Per community: last bundle applied, when, what waits, what was refused."""
    conn = store.conn
    now = time.time()
    refused: dict[str, int] = {}
    for item in refusals(store_dir):
        if item["origin"]:
            refused[item["origin"]] = refused.get(item["origin"], 0) + 1
    out = []
    names = office.names(conn)
    for (code,) in conn.execute("SELECT code FROM communities ORDER BY code"):
        applied = conn.execute("SELECT max(sequence), max(applied), coalesce(sum(changes), 0), "
                               "coalesce(sum(rejected), 0) FROM applied WHERE origin = ?", (code,)).fetchone()
        received = conn.execute("SELECT max(sequence), max(received) FROM received WHERE origin = ?",
                                (code,)).fetchone()
        last = applied[1]
        lag = None
        if last:
            lag = (now - time.mktime(time.strptime(last, "%Y-%m-%dT%H:%M:%S"))) / 3600
        out.append({"code": code, "name": names.get(code, ""), "last_applied": applied[0] or 0, "applied_at": last or "",
                    "lag_hours": None if lag is None else round(lag, 1),
                    "last_received": received[0] or 0, "received_at": received[1] or "",
                    "waiting": (received[0] or 0) - (applied[0] or 0), "changes": applied[2],
                    "rejected": applied[3], "refused": refused.get(code, 0)})
    return out


def open_conflicts(store: Store, plaintext: bool) -> list[dict]:
    """The queue, read-only: candidates masked unless ``plaintext``."""
    names = office.names(store.conn)
    out = []
    for item in conflicts.items(store):
        table = store.table(item["table"])
        column = table.columns[item["column"]]
        candidates = [{"origin": office.label(c["origin"], names), "version": c["version"], "deleted": c["deleted"],
                       "value": c["value"] if plaintext or not column.sensitive else mask_value(column, c["value"])}
                      for c in item["candidates"]]
        out.append({"id": item["id"], "table": published_name(store.domains[table.domain], table),
                    "record": item["record"], "column": column.label, "kind": item["kind"], "rule": item["rule"],
                    "opened": item["opened"], "candidates": candidates})
    return out
