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

One bundle is applied atomically across the working databases and the state
database, although SQLite cannot commit several files at once when one of
them is in WAL mode (state.db always is). The state database is the commit
point: the bundle's cell writes are made in the working databases' open
transactions, then recorded, with the value each cell had before and after,
in ``pull_intent`` in the same state transaction that updates the shadow and
the pulled number. Only then are the working databases committed, and the
record dropped. A crash before the state commit leaves nothing (the working
databases roll back); after it, ``finish_interrupted`` (run first by every
pull and push) redoes the recorded writes that did not reach a working
database. It sets a cell only where it still holds its value from before,
so anything entered here after the crash is kept and goes to the office at
the next push.

Every bundle from the office also says which of this community's bundles it
holds (header ``acknowledged``), and so does the office's standalone
acknowledgement (``OFFICE-ack.bundle``, see ``outbound.write_acknowledgements``):
a community that only carries folders on a USB stick clears its outbox with it.
"""

from __future__ import annotations

import io
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from . import bundle, capture, outbox, workdir
from .channels import Channel, FolderChannel
from .crypto import Keyring, PublicKey, Secret
from .errors import SyncdbError
from .files import storage_error
from .hlc import unpack_versions
from .i18n import _
from .http_channel import HttpChannel
from .schema import Domain
from .state import State, open_state, read_config, state_dir, state_path


@dataclass
class PullReport:
    applied: list[int] = field(default_factory=list)  # sequences applied
    cells: int = 0  # cells set to the office's value
    kept: list[str] = field(default_factory=list)  # cells kept because changed here since the last push
    older: int = 0  # cells the office set before it had this PC's last value for them
    missing: list[str] = field(default_factory=list)  # records not (or no longer) here
    superseded: list[str] = field(default_factory=list)  # cells whose value here the office did not keep
    finished: int = 0  # writes of an interrupted pull redone first
    acknowledged: int | None = None  # the office holds this community's bundles 1..N (None: not said)
    cleared: list[int] = field(default_factory=list)  # bundles removed from the outbox, the office holding them
    unusable: list[str] = field(default_factory=list)  # acknowledgements that could not be trusted

    def lines(self) -> list[str]:
        out = []
        if self.finished:
            out.append(_("Finished the previous pull, which was stopped half way: {records} record(s) "
                         "brought up to date").format(records=self.finished))
        if not self.applied:
            out.append(_("Nothing new from the office."))
        else:
            out.append(_("Applied {bundles} bundle(s) of resolutions from the office: {cells} value(s) set").format(
                bundles=len(self.applied), cells=self.cells))
        out += self._ack_lines()
        if not self.applied:
            return out
        out += [_("kept the local value of {line}: it goes to the office at the next push").format(line=line)
                for line in self.kept]
        if self.older:
            out.append(_("{values} value(s) left as they are: the office set them before it had this "
                         "PC's last push, and settles them there").format(values=self.older))
        out += [_("not here: {line}").format(line=line) for line in self.missing]
        out += [_("the office did not keep this PC's value of {line}; the value stays here and is not sent "
                  "again: if the resident lives here, ask that community to transfer them, otherwise remove "
                  "or correct the record here").format(line=line) for line in self.superseded]
        return out

    def _ack_lines(self) -> list[str]:
        out = [_("not used: {line}").format(line=line) for line in self.unusable]
        if self.cleared:
            out.append(_("The office holds this community's bundles up to {acknowledged}: "
                         "{cleared} removed from the outbox").format(
                acknowledged=self.acknowledged, cleared=len(self.cleared)))
        return out


def pull_from(workdir_path, channel: Channel, domains: dict[str, Domain], secret: Secret) -> PullReport:
    """Apply the office's resolutions bundles after the last one pulled, as ``channel`` holds them.

    Finishes an interrupted pull first, and clears from the outbox what the
    office says it holds. ``transport.pull`` is the library call over this.
    """
    folder = Path(workdir_path)
    code = read_config(folder)["code"]
    ring = Keyring.load(state_dir(folder) / "keyring.json", secret)
    office_key = PublicKey.read(state_dir(folder) / "office.pub.json")
    report = PullReport()
    try:
        report.finished = finish_interrupted(folder)
        with open_state(folder) as state:
            done = int(state.meta("pulled", 0))
            for sequence, data in channel.resolutions(code, office_key.code, done):
                if sequence != done + 1:
                    raise SyncdbError(_("the office's resolutions {expected} for {code} are missing (found "
                                        "{sequence}); pull again from the office, or bring every file of its "
                                        "outbound folder").format(expected=done + 1, code=code, sequence=sequence))
                header = _apply(folder, state, domains, ring, office_key, data, sequence, report)
                _note_acknowledged(report, header.fields.get("acknowledged"))
                done = sequence
        standalone = channel.acknowledgement(code, office_key.code)
        if standalone is not None:
            where, data = standalone
            try:
                _note_acknowledged(report, outbox.acknowledgement(folder, data))
            except SyncdbError as e:
                report.unusable.append(_("the office's acknowledgement from {where} ({error})").format(
                    where=where, error=e))
        if report.acknowledged:
            report.cleared = outbox.clear_acknowledged(folder, report.acknowledged)
    except (OSError, sqlite3.Error) as e:
        raise storage_error(e, folder, then=_("run `syncdb pull` again")) from None
    return report


def pull(workdir_path, domains: dict[str, Domain], secret: Secret, url: str | None = None,
         inbox: str | None = None, timeout: float = 30.0) -> PullReport:
    """Apply the office's resolutions from the office at ``url`` or the folder ``inbox``.

    The form earlier releases offered; ``transport.pull(workdir, channel, …)`` is the library call.
    """
    channel = HttpChannel(url, timeout=timeout) if url else FolderChannel(inbox)
    return pull_from(workdir_path, channel, domains, secret)


def _note_acknowledged(report: PullReport, n: int | None) -> None:
    if n is not None and n > (report.acknowledged or 0):
        report.acknowledged = n


def _apply(folder, state: State, domains, ring, office_key, data, sequence, report) -> bundle.Header:
    try:
        header = bundle.verify(io.BytesIO(data), {office_key.code: office_key}.get)
    except bundle.BundleError as e:
        raise SyncdbError(_("resolutions bundle {sequence} from the office is refused ({error}); nothing of it "
                            "was applied. Ask the data administrator for a fresh copy").format(
            sequence=sequence, error=e)) from None
    if header.kind != "resolutions" or header.origin != office_key.code or header.sequence != sequence:
        raise SyncdbError(_("the file given as resolutions bundle {sequence} is not one "
                            "(kind {kind}, from {origin}, number {number}); nothing was applied").format(
            sequence=sequence, kind=header.kind, origin=header.origin, number=header.sequence))
    changes = list(bundle.changes(io.BytesIO(data), ring))
    tables = {t.qualified: t for d in domains.values() for t in d.tables.values()}
    clock = state.clock(read_config(folder)["code"])
    conns = {}
    intent: list[tuple] = []
    try:
        try:
            state.begin()
            for change in changes:
                table = tables.get(change["table"])
                if table is None:
                    report.missing.append(_("{table} (no schema here)").format(table=change["table"]))
                    continue
                if table.domain not in conns:
                    conns[table.domain] = workdir.connect(workdir.db_path(folder, table.domain))
                    conns[table.domain].execute("BEGIN IMMEDIATE")
                _apply_change(conns[table.domain], state, table, change, report, intent)
                clock.observe(change["hlc"])
            state.record_intent(intent)
            state.keep_clock(clock)
            state.set_meta("pulled", sequence)
            # The commit point: from here on the bundle counts as pulled, and its writes are
            # redone by finish_interrupted if a working database misses them.
            state.commit()
        except BaseException:
            for conn in conns.values():
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            state.rollback()
            raise
        for conn in conns.values():
            conn.execute("COMMIT")
    finally:
        for conn in conns.values():
            conn.close()
    if intent:
        state.clear_intent()
    report.applied.append(sequence)
    return header


def finish_interrupted(workdir_path) -> int:
    """Redo the writes of a pull that stopped after its commit point; return how many records it touched.

    Idempotent, and run first by pull and push. A cell is set only where it
    still holds the value it had before that pull (one changed here since is
    kept, and goes to the office at the next push); a record is deleted only
    if it is still as it was.
    """
    folder = Path(workdir_path)
    if not state_path(folder).exists():
        return 0
    with open_state(folder) as state:
        rows = state.intent()
        if not rows:
            return 0
        by_domain: dict[str, list] = {}
        for row in rows:
            by_domain.setdefault(row[0].split(".", 1)[0], []).append(row)
        for domain, writes in by_domain.items():
            if not workdir.db_path(folder, domain).exists():
                continue  # the database is gone (removed by a person): nothing of it to bring up to date
            conn = workdir.connect(workdir.db_path(folder, domain))
            try:
                conn.execute("BEGIN IMMEDIATE")
                for tbl, key, op, before, after in writes:
                    _redo(conn, tbl.split(".", 1)[1], json.loads(key), op, json.loads(before),
                          None if after is None else json.loads(after))
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.close()
        state.clear_intent()
        return len(rows)


def _same(a, b) -> bool:
    return a == b and type(a) is type(b)


def _redo(conn, name: str, key: dict, op: str, before: dict, after: dict | None) -> None:
    """One recorded write, made again where the working database does not have it yet."""
    where = " AND ".join(f"[{k}] IS ?" for k in key)
    cols = list(before if op == "delete" else after)
    found = conn.execute(f"SELECT {', '.join(f'[{c}]' for c in cols)} FROM [{name}] WHERE {where}",
                         list(key.values())).fetchone()
    if found is None:
        return  # deleted already: by this pull before the crash, or by a person since
    current = dict(zip(cols, found))
    if op == "delete":
        if all(_same(current[c], before[c]) for c in cols):
            conn.execute(f"DELETE FROM [{name}] WHERE {where}", list(key.values()))
        return
    todo = {c: after[c] for c in cols if not _same(current[c], after[c]) and _same(current[c], before.get(c))}
    if todo:
        conn.execute(f"UPDATE [{name}] SET {', '.join(f'[{c}] = ?' for c in todo)} WHERE {where}",
                     [*todo.values(), *key.values()])


def _apply_change(conn, state: State, table, change, report, intent: list) -> None:
    key_values = [change["key"][k] for k in table.key]
    key_json = json.dumps(key_values, ensure_ascii=False)
    shown = " / ".join(str(v) for v in key_values)
    current = capture.read_row(conn, table, key_values)
    shadow = state.shadow_row(table.qualified, key_json)
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
            report.kept.append(_("{table} / {key} (the office deleted it)").format(table=table.qualified, key=shown))
            return
        if any(unseen(c) for c in table.non_key):
            report.older += 1
            return
        where = " AND ".join(f"[{k}] IS ?" for k in table.key)
        conn.execute(f"DELETE FROM [{table.name}] WHERE {where}", key_values)
        intent.append(_intent(table, change, "delete", current, None))
        state.apply(table, key_json, change)
        state.settle_superseded(table.qualified, key_json)
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
    intent.append(_intent(table, change, "update", {c: current[c] for c in cells}, {c: stored[c] for c in cells}))
    state.apply(table, key_json, {"op": "update", "key": change["key"], "hlc": change["hlc"],
                                  "cells": {c: stored[c] for c in cells}})
    state.settle_superseded(table.qualified, key_json, list(cells))
    report.cells += len(cells)


def _intent(table, change, op: str, before: dict, after: dict | None) -> tuple:
    """A pull_intent row (without its number) for one write to a working database."""
    key = {k: change["key"][k] for k in table.key}
    if op == "delete":
        before = {c: v for c, v in before.items() if c not in table.key}

    def text(values):
        return json.dumps(values, ensure_ascii=False)
    return table.qualified, text(key), op, text(before), None if after is None else text(after)


def _note_superseded(state, table, key_json, shown, change, cols, report) -> None:
    """Record the cells whose local value the office settled against, for a person to act on.

    Neither the working database nor the shadow changes: the value stays
    as this community entered it, and stays based on its own version.
    """
    if not cols:
        return
    owner = change.get("owner")
    state.note_superseded(table.qualified, key_json, cols, owner, change["hlc"])
    whose = _("the record belongs to {owner}").format(owner=owner) if owner else \
        _("the record belongs to another community")
    report.superseded.append(f"{table.qualified} / {shown} / {', '.join(cols)} ({whose})")
