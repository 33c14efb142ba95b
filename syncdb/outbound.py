"""What the office sends back: its resolutions and edits, to the community that owns each record.

When an office edit (``syncdb conflicts resolve``, ``review``) is merged,
in the same transaction, each changed record's owner — the value of its
table's ``owner`` column, a community code, before and after the edit —
gets the change in a bundle of kind ``"resolutions"``,
signed by the office and encrypted to that community's enrolled key, in
``STORE/outbound/CODE/``. ``syncdb pull`` fetches them (from ``serve`` or a
copy of that folder) and applies them in sequence.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import bundle, office
from .store import Store, table_name

OUTBOUND_TABLE = """
CREATE TABLE IF NOT EXISTS outbound (
    code TEXT NOT NULL, sequence INTEGER NOT NULL, file TEXT NOT NULL, made TEXT NOT NULL,
    changes INTEGER NOT NULL, PRIMARY KEY (code, sequence))
"""


def outbound_dir(store_dir, code: str) -> Path:
    return Path(store_dir) / "outbound" / code


def owner_of(store: Store, table, change: dict) -> str | None:
    """The community that owns the record a change is about, as the store holds it now."""
    key = store.blind_key(table, [change["key"].get(k) for k in table.key])
    row = store.conn.execute(f"SELECT [{table.owner}] FROM [{table_name(table)}] WHERE _key = ?", (key,)).fetchone()
    return None if row is None else store.plain(table, table.owner, row[0], key)


def send_back(store: Store, store_dir, changes: list[dict], owners_before: list, rejected: set) -> dict[str, int]:
    """Queue an office bundle's changes for every community concerned; return code -> sequence.

    Call inside the transaction that merges the office's bundle, with the
    owners read before it: a record goes to the community that owned it
    before the edit (so a delete, or a move to another community, reaches
    it), to the one that owns it after, and to every community whose version
    of a cell it settles — they hold the record too. A change the merge
    rejected goes nowhere.
    """
    by_code: dict[str, list[dict]] = {}
    for change, before in zip(changes, owners_before):
        table = store.table(change["table"])
        if (table.qualified, store.blind_key(table, [change["key"].get(k) for k in table.key])) in rejected:
            continue
        concerned = {before, owner_of(store, table, change)}
        for versions in (change.get("base") or {}).values():
            concerned.update(v.split(".", 2)[2] for v in ([versions] if isinstance(versions, str) else versions))
        for code in concerned - {None}:
            by_code.setdefault(code, []).append(change)
    return _queue(store, store_dir, by_code)


def send_to(store: Store, store_dir, code: str, changes: list[dict]) -> dict[str, int]:
    """Queue changes for one community (the office's values that beat its own by a rule)."""
    return _queue(store, store_dir, {code: changes})


def _queue(store: Store, store_dir, by_code: dict[str, list[dict]]) -> dict[str, int]:
    """One resolutions bundle per enrolled community, inside the caller's transaction.

    The files keep a pending name until ``finish`` runs after the commit, so
    no copy of the folder ever holds a bundle the office did not record.
    """
    conn = store.conn
    conn.execute(OUTBOUND_TABLE)
    enrolled = office.enrolled_keys(conn)
    made = {}
    for code, owned in sorted(by_code.items()):
        if code not in enrolled:
            continue  # the office itself, or a code no longer enrolled
        (last,) = conn.execute("SELECT coalesce(max(sequence), 0) FROM outbound WHERE code = ?", (code,)).fetchone()
        sequence = last + 1
        folder = outbound_dir(store_dir, code)
        folder.mkdir(parents=True, exist_ok=True)
        name = bundle.file_name(store.office_code, sequence, kind="resolutions")
        bundle.write(folder / _pending(name), {
            "kind": "resolutions", "origin": store.office_code, "sequence": sequence,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "schemas": {d.name: {"version": d.version, "fingerprint": d.fingerprint} for d in store.domains.values()},
        }, owned, store.keyring, enrolled[code])
        conn.execute("INSERT INTO outbound VALUES (?, ?, ?, ?, ?)",
                     (code, sequence, name, time.strftime("%Y-%m-%dT%H:%M:%S"), len(owned)))
        made[code] = sequence
    return made


def _pending(name: str) -> str:
    return f".{name}.pending"


def finish(store_dir) -> None:
    """Give every recorded bundle its final name (after the commit; again after a crash)."""
    for code, name in _recorded(store_dir, "SELECT code, file FROM outbound"):
        pending = outbound_dir(store_dir, code) / _pending(name)
        try:
            os.replace(pending, outbound_dir(store_dir, code) / name)
        except FileNotFoundError:
            pass  # named already (by this process earlier, or by serve at the same moment)


def _recorded(store_dir, sql: str, params=()) -> list[tuple]:
    """Rows of the outbound table; none before the first resolution (and no write to find out)."""
    conn = office.connect(store_dir)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbound'").fetchone():
            return []
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def available(store_dir, code: str) -> list[int]:
    """The sequence numbers of the resolutions bundles waiting for ``code``."""
    finish(store_dir)
    return [s for (s,) in _recorded(store_dir, "SELECT sequence FROM outbound WHERE code = ? ORDER BY sequence",
                                    (code,))]


def path_of(store_dir, code: str, sequence: int) -> Path | None:
    rows = _recorded(store_dir, "SELECT file FROM outbound WHERE code = ? AND sequence = ?", (code, sequence))
    return outbound_dir(store_dir, code) / rows[0][0] if rows else None
