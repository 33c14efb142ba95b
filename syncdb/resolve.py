"""Office edits and conflict resolutions.

The office changes a record the same way a community does: with a bundle,
signed by the office key, received into the inbox and merged. Each cell it
changes is based on *every* version the cell's frontier holds, so a
resolution settles the conflict in any order of arrival, and the ledger
records it like any other change. Later, `pull` carries these bundles back
to the communities concerned, each only its share (``outbound.share``).
"""

from __future__ import annotations

import time
from pathlib import Path

from . import bundle, conflicts, office
from .crypto import Secret
from .errors import SyncdbError
from .hlc import Clock, Stamp, now_ms
from .i18n import _
from .merge import Summary, apply_changes
from .prepare import mistyped
from .row import Row
from .schema import Domain
from .store import Store, open_store
from .validate import check_record

MAX_AHEAD_MS = 24 * 3600 * 1000  # the furthest ahead of the office's clock a stamp is followed


def office_edit(store_dir, secret: Secret, domains: dict[str, Domain], edits: list[dict]) -> Summary:
    """Apply edits made at the office: ``{"table", "key": {…}, "cells": {…}}``, or ``"delete": True``."""
    with open_store(store_dir, secret, domains, write=True) as store:
        return apply_edits(store, edits)


def apply_edits(store: Store, edits: list[dict], refused: str | None = None,
                settles: int | None = None) -> Summary:
    """Make the office's edits one signed office bundle and merge it, in this process.

    One transaction takes the bases, the office clock, the bundle's sequence
    number, its place in the inbox and its merge together: the edit is
    applied, recorded in the ledger and queued for the communities, or none
    of it is. The bundle written to the inbox is the record of it (what
    `pull` carries back and `audit` names), never read back here.
    ``refused``: if the merge rejects any of it, nothing is kept and this is
    raised with the reasons. ``settles``: the conflict these edits settle, checked still open
    inside the transaction (another desk may have settled it while this one waited for the lock).
    """
    summary = Summary()
    store_dir = store.folder
    written = None
    try:
        with store.transaction():
            _no_office_bundle_waiting(store)
            if settles is not None:
                _still_open(store, settles)
            changes = [_change(store, edit) for edit in edits]
            header = _write_office_bundle(store, store_dir, changes)
            written = office.inbox_dir(store_dir) / bundle.file_name(header.origin, header.sequence)
            name = office.record(store.conn, header, header.sha256)
            outcome = apply_changes(store, header, name, changes, store_dir)
            if refused and outcome.merger.rejected:
                raise SyncdbError(_("{refused}: {why}; nothing was changed").format(
                    refused=refused, why=_("; ").join(outcome.merger.rejected)))
    except BaseException:
        if written is not None:
            written.unlink(missing_ok=True)  # never recorded: the next edit takes its number
        raise
    outcome.report(summary, store_dir)
    return summary


def _no_office_bundle_waiting(store: Store) -> None:
    """The office's bundles apply in their order: one received and not applied (left by an earlier
    release) goes first, by a merge."""
    (waiting,) = store.conn.execute(
        "SELECT count(*) FROM received r WHERE r.origin = ? AND NOT EXISTS "
        "(SELECT 1 FROM applied a WHERE a.origin = r.origin AND a.sequence = r.sequence)",
        (store.office_code,)).fetchone()
    if waiting:
        raise SyncdbError(_("an earlier office edit waits in the inbox; run `syncdb merge {store}` to "
                            "apply it first, then this again (nothing was changed)").format(store=store.folder))


def _still_open(store: Store, conflict_id: int) -> None:
    """Settled by someone else since it was read (two desks, or a merge): their decision stands."""
    status = conflicts.get(store, conflict_id)["status"]
    if status != "open":
        raise SyncdbError(_("conflict #{id} was {status} meanwhile, by another resolution or a merge; "
                            "see `syncdb conflicts show {store} {id}` (nothing was changed)").format(
            id=conflict_id, status=_(conflicts.STATUSES.get(status, status)), store=store.folder))


def _clock(store: Store) -> Clock:
    row = store.conn.execute("SELECT hlc FROM office_clock").fetchone()
    return Clock(store.office_code, Stamp.parse(row[0]) if row else None)


def _change(store: Store, edit: dict) -> dict:
    table = store.table(edit["table"])
    key_values = [edit["key"][k] for k in table.key]
    key = store.blind_key(table, key_values)
    row = Row(store, table, key, special=True)
    if not row.exists:
        raise SyncdbError(_("{table} has no record with that key; the office edits only "
                            "records a community has sent").format(table=table.qualified))
    deleting = bool(edit.get("delete"))
    columns = [c for c in table.columns if c not in table.key] if deleting else list(edit["cells"])
    for column in columns:
        if column not in table.columns or column in table.key:
            raise SyncdbError(_("{table} has no editable column '{column}'").format(table=table.qualified, column=column))
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


def _equal_versions(row: Row, cells: dict) -> dict[str, list[str]]:
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


def _write_office_bundle(store: Store, folder: Path, changes: list[dict]) -> bundle.Header:
    """The signed office bundle, written straight into the inbox under its own name."""
    code = store.office_code
    (last,) = store.conn.execute("SELECT coalesce(max(sequence), 0) FROM received WHERE origin = ?",
                                 (code,)).fetchone()
    return bundle.write(office.inbox_dir(folder) / bundle.file_name(code, last + 1), {
        "origin": code, "sequence": last + 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "schemas": {d.name: {"version": d.version, "fingerprint": d.fingerprint} for d in store.domains.values()}},
        changes, store.keyring, store.keyring.public)


def resolve_conflict(store_dir, secret: Secret, domains: dict[str, Domain], conflict_id: int,
                     keep: str | None = None, value=None) -> Summary:
    """Settle one open conflict: keep the candidate from an origin (or with a version), or set a value."""
    with open_store(store_dir, secret, domains, write=True) as store:
        return settle(store, conflict_id, keep, value)


def settle(store: Store, conflict_id: int, keep: str | None = None, value=None) -> Summary:
    """``resolve_conflict`` on an open store: `conflicts review` settles one after another with it."""
    if (keep is None) == (value is None):
        raise SyncdbError(_("say which value wins: keep a candidate (--keep ORIGIN) or give one (--value TEXT)"))
    found = conflicts.get(store, conflict_id)
    if found["status"] != "open":
        raise SyncdbError(_("conflict #{id} is already {status}").format(
            id=conflict_id, status=_(conflicts.STATUSES.get(found['status'], found['status']))))
    table, key, col = store.table(found["table"]), found["key"], found["column"]
    key_values = dict(zip(table.key, store.read_cells(table, key, table.key)))
    edit = {"table": table.qualified, "key": key_values}
    if keep is not None:
        candidates = found["candidates"]
        chosen = [c for c in candidates if keep in (c["origin"], c["version"])]
        if len(chosen) != 1:
            origins = ", ".join(c["origin"] for c in candidates)
            raise SyncdbError(_("--keep {keep} names {n} of the candidates ({origins}); "
                                "name one origin, or a version when an origin has several").format(
                keep=keep, n=len(chosen), origins=origins))
        if chosen[0]["deleted"]:
            edit["delete"] = True
        else:
            # Keeping a community's side keeps its record: every cell of the row in
            # conflict takes that community's version, not only the queued one.
            origin = chosen[0]["origin"]
            row = Row(store, table, key, special=True)
            edit["cells"] = {}
            for column in table.columns:
                mine = [c for c in row.candidates(column) if c.origin == origin and c.live]
                if column not in table.key and len(row.candidates(column)) > 1 and mine:
                    edit["cells"][column] = max(mine, key=lambda c: c.version).value
            edit["cells"][col] = chosen[0]["value"]
    else:
        edit["cells"] = {col: _checked_value(store, table, key, key_values, col, value)}
    # Checked above, so only a rule or a plugin of the office's own can refuse it: then nothing is kept.
    return apply_edits(store, [edit], refused=_("the merge refused the resolution of conflict #{id}").format(
                           id=conflict_id),
                       settles=conflict_id)


def _checked_value(store: Store, table, key: bytes, key_values: dict, col: str, value):
    """The value a person typed, as the schema stores it: a code's meaning is taken as that code
    (迁出 for moved_out), and anything the office would reject from a community is refused here."""
    column = table.columns[col]
    why = mistyped(value)  # (conflicts review's prompt; the command line's options are checked as read)
    if why:
        raise SyncdbError(_("{field}: {why}").format(field=f"{column.label} ({col})", why=why))
    if column.codes:
        by_meaning = {meaning: code for code, meaning in store.domains[table.domain].code_table(column.codes).items()}
        value = by_meaning.get(value, value)
    stored = store.read_row(table, key)
    record = {c: stored.get(c) for c in table.columns if c not in table.key}
    record.update(key_values)
    record[col] = value
    problems = [p for p in check_record(table, record, store.domains[table.domain])
                if p.field == col and p.severity == "error"]
    if problems:
        raise SyncdbError(_("{label} ({column}) cannot be {value}: {why}; nothing was changed").format(
            label=column.label, column=col, value=repr(value), why=_("; ").join(p.why for p in problems)))
    return value
