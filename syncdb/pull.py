"""``syncdb pull``: the office's resolutions, applied to the records this community owns.

Bundles of kind ``"resolutions"`` come from the office (``serve`` or a
folder, such as a USB stick carrying ``STORE/outbound/CODE``). Each is
checked against the office's key, must be the next in sequence, and is
applied whole or not at all:

- a cell whose working value is still what this community last sent takes
  the office's value, and the shadow records it with the office's version,
  so the next local edit is based on the resolution and merges cleanly;
- a cell changed here since the last push keeps the local value: it goes to
  the office at the next push, where it meets the resolution as a new
  conflict. So does a cell whose last push the office had not yet merged
  when it decided (the resolution is not based on it). Nothing entered here
  is ever overwritten unseen;
- a cell listed as ``"superseded"`` (the record is another community's and
  the office did not keep this community's value; see ``outbound.share``)
  keeps its local value, since the office never sends another community's
  value here. Its shadow keeps the version this community sent, so the
  next push sends nothing for it, and a later local edit of it reaches the
  office as a concurrent edit that a rule or a person settles again, never
  as a silent overwrite of the owner's value. The cell is listed in the
  state database's ``superseded`` table and in the report, for a person to
  act on (ask the owner to transfer the resident, or correct the record
  here).

The writes pass the capture triggers like any other; at the next push the
comparison with the shadow finds nothing new in them, so nothing is sent back.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import requests

from . import bundle, capture, workdir
from .community import _apply_to_shadow, _meta, _set_meta, _state, read_config, state_dir
from .crypto import Keyring, PublicKey, Secret
from .errors import SyncdbError
from .files import storage_error
from .hlc import Clock, Stamp, unpack_versions
from .schema import Domain

SUPERSEDED_TABLE = """
CREATE TABLE IF NOT EXISTS superseded (
    tbl TEXT NOT NULL, key TEXT NOT NULL, col TEXT NOT NULL, owner TEXT, version TEXT NOT NULL,
    pulled TEXT NOT NULL, PRIMARY KEY (tbl, key, col)) WITHOUT ROWID
"""


@dataclass
class PullReport:
    applied: list[int] = field(default_factory=list)  # sequences applied
    cells: int = 0  # cells set to the office's value
    kept: list[str] = field(default_factory=list)  # cells kept because changed here since the last push
    older: int = 0  # cells the office set before it had this PC's last value for them
    missing: list[str] = field(default_factory=list)  # records not (or no longer) here
    superseded: list[str] = field(default_factory=list)  # cells whose value here the office did not keep

    def lines(self) -> list[str]:
        if not self.applied:
            return ["Nothing new from the office."]
        out = [f"Applied {len(self.applied)} bundle(s) of resolutions from the office: {self.cells} value(s) set"]
        out += [f"kept the local value of {line}: it goes to the office at the next push" for line in self.kept]
        if self.older:
            out.append(f"{self.older} value(s) left as they are: the office set them before it had this "
                       "PC's last push, and settles them there")
        out += [f"not here: {line}" for line in self.missing]
        out += [f"the office did not keep this PC's value of {line}; the value stays here and is not sent "
                "again: if the resident lives here, ask that community to transfer them, otherwise remove "
                "or correct the record here" for line in self.superseded]
        return out


def pull(workdir_path, domains: dict[str, Domain], secret: Secret, url: str | None = None,
         inbox: str | None = None, timeout: float = 30.0) -> PullReport:
    folder = Path(workdir_path)
    code = read_config(folder)["code"]
    ring = Keyring.load(state_dir(folder) / "keyring.json", secret)
    office_key = PublicKey.read(state_dir(folder) / "office.pub.json")
    report = PullReport()
    state = _state(folder)
    try:
        done = int(_meta(state, "pulled", 0))
        for sequence, data in _fetch(code, office_key, done, url, inbox, timeout):
            if sequence != done + 1:
                raise SyncdbError(f"the office's resolutions {done + 1} for {code} are missing (found {sequence}); "
                                  "pull again from the office, or bring every file of its outbound folder")
            _apply(folder, state, domains, ring, office_key, data, sequence, report)
            done = sequence
    except (OSError, sqlite3.Error) as e:
        raise storage_error(e, folder, then="run `syncdb pull` again") from None
    finally:
        state.close()
    return report


def _fetch(code, office_key, done, url, inbox, timeout):
    """(sequence, bytes) of every resolutions bundle after ``done``, in order."""
    if inbox:
        found = {}
        for path in sorted(Path(inbox).glob(f"{office_key.code}-r*{bundle.SUFFIX}")) + sorted(
                (Path(inbox) / code).glob(f"{office_key.code}-r*{bundle.SUFFIX}")):
            match = re.search(r"-r(\d+)\.", path.name)
            if match and int(match.group(1)) > done:
                found[int(match.group(1))] = path
        for sequence in sorted(found):
            yield sequence, found[sequence].read_bytes()
        return
    base = url.rstrip("/")
    try:
        listing = requests.get(f"{base}/v1/communities/{code}/outbound", timeout=timeout)
        if listing.status_code != 200:
            raise SyncdbError(f"the office at {base} answered {listing.status_code} for the list of resolutions; "
                              "check the --from URL (the address `syncdb serve` listens on)")
        for sequence in sorted(s for s in listing.json()["bundles"] if s > done):
            answer = requests.get(f"{base}/v1/communities/{code}/outbound/{sequence}", timeout=timeout)
            if answer.status_code != 200:
                raise SyncdbError(f"the office at {base} did not give resolutions bundle {sequence} "
                                  f"(HTTP {answer.status_code}); pull again later")
            yield sequence, answer.content
    except requests.RequestException as e:
        raise SyncdbError(f"could not reach the office at {base} ({type(e).__name__}); nothing was changed, "
                          "pull again when the line is up, or use --inbox with a USB stick") from None


def _apply(folder, state, domains, ring, office_key, data, sequence, report) -> None:
    try:
        header = bundle.verify(io.BytesIO(data), {office_key.code: office_key}.get)
    except bundle.BundleError as e:
        raise SyncdbError(f"resolutions bundle {sequence} from the office is refused ({e}); nothing of it "
                          "was applied. Ask the data administrator for a fresh copy") from None
    if header.kind != "resolutions" or header.origin != office_key.code or header.sequence != sequence:
        raise SyncdbError(f"the file given as resolutions bundle {sequence} is not one "
                          f"(kind {header.kind}, from {header.origin}, number {header.sequence}); nothing was applied")
    changes = list(bundle.changes(io.BytesIO(data), ring))
    state.execute(SUPERSEDED_TABLE)
    tables = {t.qualified: t for d in domains.values() for t in d.tables.values()}
    clock = Clock(read_config(folder)["code"], Stamp.parse(_meta(state, "hlc")) if _meta(state, "hlc") else None)
    conns = {}
    try:
        state.execute("BEGIN IMMEDIATE")
        for change in changes:
            table = tables.get(change["table"])
            if table is None:
                report.missing.append(f"{change['table']} (no schema here)")
                continue
            if table.domain not in conns:
                conns[table.domain] = workdir.connect(workdir.db_path(folder, table.domain))
                conns[table.domain].execute("BEGIN IMMEDIATE")
            _apply_change(conns[table.domain], state, table, change, report)
            clock.observe(change["hlc"])
        _set_meta(state, "hlc", clock.last)
        _set_meta(state, "pulled", sequence)
        for conn in conns.values():
            conn.execute("COMMIT")
        state.execute("COMMIT")
        report.applied.append(sequence)
    except BaseException:
        for conn in conns.values():
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        if state.in_transaction:
            state.execute("ROLLBACK")
        raise
    finally:
        for conn in conns.values():
            conn.close()


def _apply_change(conn, state, table, change, report) -> None:
    key_values = [change["key"][k] for k in table.key]
    key_json = json.dumps(key_values, ensure_ascii=False)
    shown = " / ".join(str(v) for v in key_values)
    current = capture.read_row(conn, table, key_values)
    shadow = state.execute("SELECT row, versions FROM shadow WHERE tbl = ? AND key = ?",
                           (table.qualified, key_json)).fetchone()
    sent = json.loads(shadow[0]) if shadow else None
    if current is None or not sent:
        report.missing.append(f"{table.qualified} / {shown}")
        return

    versions = unpack_versions(shadow[1], table.non_key)
    bases = change.get("base") or {}

    def unsent(col):
        return sent.get(col) != current.get(col) or type(sent.get(col)) is not type(current.get(col))

    def unseen(col):
        # The office decided without the value last sent from here (that push had not
        # reached it yet): taking its value could drop ours; the merge settles it there.
        mine = versions.get(col)
        theirs = bases.get(col) or []
        return mine is not None and mine not in ([theirs] if isinstance(theirs, str) else theirs)

    def settled(cols) -> list[str]:
        """The cells the office's decision applies to here; the others reported."""
        out = []
        for col in cols:
            if col not in table.columns or col in table.key:
                continue
            if unsent(col):
                report.kept.append(f"{table.qualified} / {shown} / {col}")
            elif unseen(col):
                report.older += 1
            else:
                out.append(col)
        return out

    if change["op"] == "delete":
        if any(unsent(c) for c in table.non_key):
            report.kept.append(f"{table.qualified} / {shown} (the office deleted it)")
            return
        if any(unseen(c) for c in table.non_key):
            report.older += 1
            return
        where = " AND ".join(f"[{k}] IS ?" for k in table.key)
        conn.execute(f"DELETE FROM [{table.name}] WHERE {where}", key_values)
        _apply_to_shadow(state, table, key_json, change)
        state.execute("DELETE FROM superseded WHERE tbl = ? AND key = ?", (table.qualified, key_json))
        report.cells += 1
        return

    cells = {col: change["cells"][col] for col in settled(change["cells"])}
    lost = settled(change.get("superseded") or [])
    _note_superseded(state, table, key_json, shown, change, lost, report)
    if not cells:
        return
    where = " AND ".join(f"[{k}] IS ?" for k in table.key)
    conn.execute(f"UPDATE [{table.name}] SET {', '.join(f'[{c}] = ?' for c in cells)} WHERE {where}",
                 list(cells.values()) + key_values)
    # What SQLite stored (its column affinity may turn '12' into 12) is what the shadow must hold.
    stored = capture.read_row(conn, table, key_values)
    _apply_to_shadow(state, table, key_json, {"op": "update", "key": change["key"], "hlc": change["hlc"],
                                              "cells": {c: stored[c] for c in cells}})
    state.executemany("DELETE FROM superseded WHERE tbl = ? AND key = ? AND col = ?",
                      [(table.qualified, key_json, c) for c in cells])
    report.cells += len(cells)


def _note_superseded(state, table, key_json, shown, change, cols, report) -> None:
    """Record the cells whose local value the office settled against, for a person to act on.

    Neither the working database nor the shadow changes: the value stays
    as this community entered it, and stays based on its own version.
    """
    if not cols:
        return
    owner = change.get("owner")
    state.executemany("INSERT OR REPLACE INTO superseded VALUES (?, ?, ?, ?, ?, datetime('now'))",
                      [(table.qualified, key_json, col, owner, change["hlc"]) for col in cols])
    whose = f"the record belongs to {owner}" if owner else "the record belongs to another community"
    report.superseded.append(f"{table.qualified} / {shown} / {', '.join(cols)} ({whose})")
