"""Office edits and conflict resolutions.

The office changes a record the same way a community does: with a bundle,
signed by the office key, received into the inbox and merged. Each cell it
changes is based on *every* version the cell's frontier holds, so a
resolution settles the conflict in any order of arrival, and the ledger
records it like any other change. Later, `pull` carries these bundles back
to the communities concerned, each only its share (``outbound.share``).
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

from . import bundle, office
from .crypto import Secret
from .errors import SyncdbError
from .hlc import Clock, Stamp, now_ms
from .merge import Summary, _Row, apply_inbox, open_store
from .schema import Domain
from .store import Store, table_name
from .validate import check_record

MAX_AHEAD_MS = 24 * 3600 * 1000  # the furthest ahead of the office's clock a stamp is followed

OFFICE_STATE = """
CREATE TABLE IF NOT EXISTS office_clock (one INTEGER PRIMARY KEY CHECK (one = 1), hlc TEXT NOT NULL)
"""


def office_edit(store_dir, secret: Secret, domains: dict[str, Domain], edits: list[dict]) -> Summary:
    """Apply edits made at the office: ``{"table", "key": {…}, "cells": {…}}``, or ``"delete": True``."""
    store = open_store(store_dir, secret, domains)
    conn = store.conn
    path = None
    try:
        # One office edit at a time: the bases, the office clock, the bundle's
        # sequence number and its place in the inbox are taken together.
        conn.execute("BEGIN IMMEDIATE")
        changes = [_change(store, edit) for edit in edits]
        path = _write_office_bundle(store, Path(store_dir), changes)
        data = path.read_bytes()
        header = bundle.verify(io.BytesIO(data), office.signer_keys(conn, store.keyring.public).get)
        office.keep(conn, Path(store_dir), data, header, "office")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
        if path is not None:
            path.unlink(missing_ok=True)
    summary = Summary()
    store = open_store(store_dir, secret, domains)
    try:
        apply_inbox(store, Path(store_dir), summary)  # also queues it for the owning communities
    finally:
        store.conn.close()
    return summary


def _clock(store: Store) -> Clock:
    store.conn.execute(OFFICE_STATE)
    row = store.conn.execute("SELECT hlc FROM office_clock").fetchone()
    return Clock(store.office_code, Stamp.parse(row[0]) if row else None)


def _change(store: Store, edit: dict) -> dict:
    table = store.table(edit["table"])
    key_values = [edit["key"][k] for k in table.key]
    key = store.blind_key(table, key_values)
    row = _Row(store, table, key, special=True)
    if not row.exists:
        raise SyncdbError(f"{table.qualified} has no record with that key; the office edits only "
                          "records a community has sent")
    deleting = bool(edit.get("delete"))
    columns = [c for c in table.columns if c not in table.key] if deleting else list(edit["cells"])
    for column in columns:
        if column not in table.columns or column in table.key:
            raise SyncdbError(f"{table.qualified} has no editable column '{column}'")
    clock = _clock(store)
    # Sort after what it settles, but never follow a stamp from a desktop whose clock (or a
    # stolen key) says it is far in the future: the office's clock would stay there for good.
    horizon = (now_ms() + MAX_AHEAD_MS, 0)
    for column in table.columns:
        for candidate in row.candidates(column) if column not in table.key else []:
            stamp = Stamp.parse(candidate.version)
            if (stamp.ms, stamp.counter) <= horizon:
                clock.observe(stamp)
    stamp = str(clock.tick())
    store.conn.execute("INSERT OR REPLACE INTO office_clock VALUES (1, ?)", (stamp,))
    cells = {} if deleting else dict(edit["cells"])
    return {
        "table": table.qualified, "op": "delete" if deleting else "update",
        "key": dict(zip(table.key, key_values)),
        "cells": cells,
        "base": {c: [cand.version for cand in row.candidates(c)] for c in columns},
        "equal": _equal_versions(row, cells),
        "hlc": stamp,
    }


def _equal_versions(row: _Row, cells: dict) -> dict[str, list[str]]:
    """Per cell, the settled versions whose value is the one the office sets.

    A community whose version is among them already has the value, so its
    share of the resolution may carry it (``outbound.share``); to any other
    community that is not the record's owner the value is never sent. A
    version's value never changes, so this holds whenever the change is
    merged. Versions only: the office's bundle carries no more plaintext.
    """
    return {col: [c.version for c in row.candidates(col)
                  if c.live and type(c.value) is type(value) and c.value == value]
            for col, value in cells.items()}


def _write_office_bundle(store: Store, folder: Path, changes: list[dict]) -> Path:
    code = store.office_code
    (last,) = store.conn.execute("SELECT coalesce(max(sequence), 0) FROM received WHERE origin = ?",
                                 (code,)).fetchone()
    path = folder / f".{bundle.file_name(code, last + 1)}.{os.getpid()}"
    bundle.write(path, {"origin": code, "sequence": last + 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "schemas": {d.name: {"version": d.version, "fingerprint": d.fingerprint}
                                    for d in store.domains.values()}},
                 changes, store.keyring, store.keyring.public)
    return path


def resolve_conflict(store_dir, secret: Secret, domains: dict[str, Domain], conflict_id: int,
                     keep: str | None = None, value=None) -> Summary:
    """Settle one open conflict: keep the candidate from an origin (or with a version), or set a value."""
    if (keep is None) == (value is None):
        raise SyncdbError("say which value wins: keep a candidate (--keep ORIGIN) or give one (--value TEXT)")
    store = open_store(store_dir, secret, domains)
    try:
        found = store.conn.execute("SELECT tbl, key, col, candidates, status FROM conflicts WHERE id = ?",
                                   (conflict_id,)).fetchone()
        if found is None:
            raise SyncdbError(f"there is no conflict #{conflict_id}; see `syncdb conflicts list`")
        tbl, key, col, candidates, status = found
        if status != "open":
            raise SyncdbError(f"conflict #{conflict_id} is already {status}")
        table = store.table(tbl)
        key = bytes(key)
        stored = store.conn.execute(
            f"SELECT {', '.join(f'[{k}]' for k in table.key)} FROM [{table_name(table)}] WHERE _key = ?",
            (key,)).fetchone()
        key_values = {k: store.plain(table, k, v, key) for k, v in zip(table.key, stored)}
        edit = {"table": tbl, "key": key_values}
        if keep is not None:
            chosen = [c for c in json.loads(candidates) if keep in (c["origin"], c["version"])]
            if len(chosen) != 1:
                origins = ", ".join(c["origin"] for c in json.loads(candidates))
                raise SyncdbError(f"--keep {keep} names {len(chosen)} of the candidates ({origins}); "
                                  "name one origin, or a version when an origin has several")
            if chosen[0]["deleted"]:
                edit["delete"] = True
            else:
                # Keeping a community's side keeps its record: every cell of the row in
                # conflict takes that community's version, not only the queued one.
                origin = chosen[0]["origin"]
                row = _Row(store, table, key, special=True)
                edit["cells"] = {}
                for column in table.columns:
                    mine = [c for c in row.candidates(column) if c.origin == origin and c.live]
                    if column not in table.key and len(row.candidates(column)) > 1 and mine:
                        edit["cells"][column] = max(mine, key=lambda c: c.version).value
                sealed = chosen[0]["value"]
                edit["cells"][col] = store.plain(table, col, bytes.fromhex(sealed) if table.columns[col].sensitive
                                                 and sealed is not None else sealed, key)
        else:
            edit["cells"] = {col: _checked_value(store, table, key, key_values, col, value)}
    finally:
        store.conn.close()
    summary = office_edit(store_dir, secret, domains, [edit])
    if summary.rejected:
        # Checked above, so only a rule or a plugin of the office's own can get here: say so, never "resolved".
        raise SyncdbError(f"the merge refused the resolution of conflict #{conflict_id}: "
                          + "; ".join(summary.rejected) + "; the conflict stays open")
    return summary


def _checked_value(store: Store, table, key: bytes, key_values: dict, col: str, value):
    """The value a person typed, as the schema stores it: a code's meaning is taken as that code
    (迁出 for moved_out), and anything the office would reject from a community is refused here."""
    column = table.columns[col]
    if column.codes:
        by_meaning = {meaning: code for code, meaning in store.domains[table.domain].code_table(column.codes).items()}
        value = by_meaning.get(value, value)
    cursor = store.conn.execute(f"SELECT * FROM [{table_name(table)}] WHERE _key = ?", (key,))
    names = [d[0] for d in cursor.description]
    stored = dict(zip(names, cursor.fetchone()))
    record = {c: store.plain(table, c, stored.get(c), key) for c in table.columns if c not in table.key}
    record.update(key_values)
    record[col] = value
    problems = [p for p in check_record(table, record, store.domains[table.domain])
                if p.field == col and p.severity == "error"]
    if problems:
        raise SyncdbError(f"{column.label} ({col}) cannot be {value!r}: "
                          + "; ".join(p.why for p in problems) + "; nothing was changed")
    return value
