"""The community side: set-up, and making bundles of what changed.

A community folder holds the working databases and a ``.syncdb`` folder
(state.py owns it, and its state database):

    .syncdb/config.json       code, office key id
    .syncdb/keyring.json      the community's secret keys, sealed
    .syncdb/office.pub.json   the office public key, to encrypt to
    .syncdb/state.db          what was last sent (the shadow), HLC, sequence numbers
    .syncdb/outbox/           bundles not yet acknowledged by the office (outbox.py)
    .syncdb/limits.json       the office's caps on one bundle, as last learnt from it (limits.py)
    CODE.pub.json             the community public key, to carry to the office

``export`` finds what changed (changes.py), holds back what a person must
look at first (holds.py), writes the bundles and then remembers them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import bundle, capture, changes, holds, integrity, limits, outbox, pull, workdir
from .crypto import Keyring, PublicKey, Secret
from .errors import SyncdbError
from .files import storage_error, write_atomic
from .i18n import _
from .holds import (  # noqa: F401 - names callers of earlier releases find here
    DELETE_MINIMUM, DELETE_SHARE, DELETION_HELD, HeldDeletes, deletions_to_hold, shown_key)
from .outbox import acknowledge, ask_resend, pending  # noqa: F401 - as above
from .schema import Domain
from .state import (  # noqa: F401 - as above
    RESEND, STATE_DIR, State, office_limits, open_state, outbox_dir, read_config, remember_office_limits,
    state_dir)
from .validate import VALIDATORS, Invalid


@dataclass
class ExportResult:
    sequence: int | None  # the first bundle made; None when there was nothing to send
    path: Path | None
    changes: int
    counts: dict = field(default_factory=dict)
    full_compares: dict = field(default_factory=dict)  # domain -> why
    held: list = field(default_factory=list)  # "table / key / field: why" of records not sent until fixed
    bundles: list = field(default_factory=list)  # (sequence, path, changes) of each bundle made, in order
    deletes_held: list = field(default_factory=list)  # HeldDeletes waiting for `push --confirm-deletes`

    def add(self, sequence: int, path: Path, changes: int, counts: dict) -> None:
        """One more bundle of this export; ``sequence`` and ``path`` name the first."""
        if not self.bundles:
            self.sequence, self.path = sequence, path
        self.bundles.append((sequence, path, changes))
        for table, ops in counts.items():
            mine = self.counts.setdefault(table, dict.fromkeys(ops, 0))
            for op, n in ops.items():
                mine[op] = mine.get(op, 0) + n


def init(workdir_path, code: str, office_key_file, domains: dict[str, Domain], secret: Secret,
         create_tables: bool = False) -> Path:
    """Set up capture and keys in a community folder; return the public key file path.

    The folder must hold the community's working databases, each with the
    schema's tables and columns (``create_tables`` creates missing tables
    empty, and the databases too when there is none): anything else is
    refused before a file is written, so nothing is left half set up.
    """
    try:
        VALIDATORS["community_code"](code)
    except Invalid as e:
        raise SyncdbError(_("community code {code!r}: {why}").format(code=code, why=e)) from None
    folder = Path(workdir_path)
    office_key = PublicKey.read(office_key_file)
    if office_key.role != "office":
        raise SyncdbError(_("{file} is a {role} key, not the office key; "
                            "use the office.pub.json that `syncdb office init` wrote").format(
            file=office_key_file, role=office_key.role))
    sdir = state_dir(folder)
    if (sdir / "keyring.json").exists():
        raise SyncdbError(_("{folder} is already set up for community {code}; nothing was changed").format(
            folder=folder, code=read_config(folder).get("code")))
    found = _check_folder(folder, domains, create_tables)
    sdir.mkdir(exist_ok=True)
    outbox_dir(folder).mkdir(exist_ok=True)
    ring = Keyring.generate("community", code, office_key.suite)
    ring.save(sdir / "keyring.json", secret)
    write_atomic(sdir / "office.pub.json", office_key.to_json().encode())
    write_atomic(sdir / "config.json", json.dumps(
        {"code": code, "office_key": office_key.id}, indent=2).encode())
    # A domain whose database appears later is picked up by its first push.
    for domain in found:
        conn = workdir.connect(workdir.db_path(folder, domain.name))
        try:
            capture.install(conn, domain)
        finally:
            conn.close()
    open_state(folder).close()  # state.db and its tables
    pub = folder / f"{code}.pub.json"
    write_atomic(pub, ring.public.to_json().encode())
    return pub


def _check_folder(folder: Path, domains: dict[str, Domain], create_tables: bool) -> list[Domain]:
    """The domains whose working database the folder holds, each fit to capture; else SyncdbError."""
    names = ", ".join(f"{name}.db" for name in domains)
    if not folder.is_dir():
        raise SyncdbError(_("{folder}: no such folder. Give the folder that holds the community's working "
                            "databases ({names}); nothing was set up").format(folder=folder, names=names))
    found = [d for d in domains.values() if workdir.db_path(folder, d.name).exists()]
    if not found and create_tables:
        workdir.create(folder, domains)
        return list(domains.values())
    if not found:
        raise SyncdbError(_("{folder} holds no working database ({names}). Give the folder the community's "
                            "programs keep them in, or add --create-tables to start with empty ones; "
                            "nothing was set up").format(folder=folder, names=names))
    faults = []
    for domain in found:
        faults.extend(_unfit_for_capture(workdir.db_path(folder, domain.name), domain, create_tables))
    if faults:
        if create_tables:
            message = _("cannot set up capture: {faults}. Nothing was set up: correct the database, or point "
                        "--schemas at the schemas it follows, then run `syncdb community init` again")
        else:
            message = _("cannot set up capture: {faults}. Nothing was set up: correct the database (--create-tables "
                        "creates missing tables, empty), or point --schemas at the schemas it follows, then run "
                        "`syncdb community init` again")
        raise SyncdbError(message.format(faults="; ".join(faults)))
    return found


def _unfit_for_capture(path: Path, domain: Domain, create_tables: bool) -> list[str]:
    """What keeps capture off one working database: missing tables or columns, keys held twice."""
    conn = workdir.connect(path)
    try:
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as e:
            return [_("{path} is not an SQLite database ({error})").format(path=path, error=e)]
        problems = capture.table_problems(conn, domain)
        faults = [f"{path}: {why}" for name, why in problems.items()
                  if not (create_tables and not conn.execute(f"PRAGMA table_info([{name}])").fetchone())]
        for table in domain.tables.values():
            if table.name in problems or capture.key_is_unique(conn, table):
                continue
            duplicates = capture.duplicate_keys(conn, table, limit=6)
            if duplicates:
                faults.append(_("{path}: in table '{table}', {duplicates} "
                                "(keep one row per key: correct or delete the others)").format(
                    path=path, table=table.name, duplicates=capture.shown_duplicates(table, duplicates)))
        return faults
    finally:
        conn.close()


def export(workdir_path, domains: dict[str, Domain], secret: Secret, notify=lambda message: None,
           caps: limits.Limits | None = None, progress=None, confirm_deletes: bool = False,
           delete_share: float = DELETE_SHARE) -> ExportResult:
    """Turn what changed since the last push into the next bundle(s) in the outbox.

    Bundles stay within ``caps`` (default: the office's as last learnt, see
    ``office_limits``): a large export becomes several bundles in sequence.
    Crash-safe in every step: the bundle files are written before the state
    that remembers them is committed, and orphan bundles from a crash
    between the two are removed here before anything else. A full disk
    stops it the same way, with a message that says so.

    ``progress(stage, done, total)`` is told every PROGRESS_ROWS rows: stage
    "reading" (rows compared; total None) then "writing" (changes put in bundles).

    A table that is gone, or one push deleting more than ``delete_share`` of
    a table's records (and more than DELETE_MINIMUM), sends none of those
    deletions (``ExportResult.deletes_held``) unless ``confirm_deletes``.
    """
    try:
        return _export(Path(workdir_path), domains, secret, notify, caps or office_limits(workdir_path),
                       progress, confirm_deletes, delete_share)
    except (OSError, sqlite3.Error) as e:
        raise storage_error(e, workdir_path, then=_("run `syncdb push` again")) from None


PROGRESS_ROWS = 1000


def _reported(items, progress, start: int, total: int):
    """The items, telling ``progress`` of every PROGRESS_ROWS of them."""
    for n, item in enumerate(items, start=start + 1):
        yield item
        if progress and n % PROGRESS_ROWS == 0:
            progress("writing", n, total)


@dataclass
class _Found:
    """What one export has found so far, across the working databases."""

    resend: str | None  # set by rehome.set_office_key or an office's resend: send every record again
    collected: list = field(default_factory=list)  # (ms, table, key_json, change)
    cleanups: list = field(default_factory=list)  # (domain, conn, last log seq, capture id, generation)
    full_compares: dict = field(default_factory=dict)
    vetted: dict = field(default_factory=dict)  # (table, key_json) -> why held, or None
    held_moves: list = field(default_factory=list)
    held_tables: list = field(default_factory=list)
    deletes_held: list = field(default_factory=list)
    untracked: set = field(default_factory=set)  # tables whose capture triggers were gone: dropped and made again
    read: int = 0


def _export(folder: Path, domains: dict[str, Domain], secret: Secret, notify, caps: limits.Limits,
            progress=None, confirm_deletes: bool = False, delete_share: float = DELETE_SHARE) -> ExportResult:
    code = read_config(folder)["code"]
    ring = Keyring.load(state_dir(folder) / "keyring.json", secret)
    office_key = PublicKey.read(state_dir(folder) / "office.pub.json")
    # A pull stopped after its commit point is finished first, or its values would go back as local edits.
    pull.finish_interrupted(folder)
    with open_state(folder) as state:
        next_seq = state.next_sequence()
        outbox.remove_orphans(folder, next_seq)
        clock = state.clock(code)
        state.follow_schema_changes(domains)
        found = _Found(resend=state.meta(RESEND))
        for domain in domains.values():
            _read_domain(folder, state, domain, found, confirm_deletes, notify, progress)

        # Stamp in the order the PC clock saw the writes; the HLC keeps them monotonic.
        found.collected.sort(key=lambda item: item[0])
        for ms, __, __, change in found.collected:
            change["hlc"] = str(clock.tick(ms))

        awaiting = {}
        if not confirm_deletes:
            found.collected = holds.hold_mass_deletes(state, found.collected, delete_share, awaiting,
                                                      found.deletes_held, found.untracked)
        collected = holds.within_limits(found.collected, caps, found.vetted, found.held_moves)
        with integrity.WorkingRecords(folder, domains) as records:
            collected = holds.within_rules(collected, records, found.vetted, found.held_moves)
        tables = {t.qualified: t for d in domains.values() for t in d.tables.values()}
        held = found.held_tables + [f"{tbl} / {shown_key(tables[tbl], key_json)} / {why}"
                                    for (tbl, key_json), why in sorted(found.vetted.items()) if why]
        for line in held:
            notify(_("not sent until fixed: {line}").format(line=line))
        result = ExportResult(None, None, len(collected), full_compares=found.full_compares, held=held,
                              deletes_held=found.deletes_held)
        # Every bundle is written before the state that remembers them is committed.
        written = 0
        for index, part in enumerate(_split(collected, caps)):
            sequence = next_seq + index
            path = outbox_dir(folder) / bundle.file_name(code, sequence)
            header = bundle.write(
                path,
                {"origin": code, "sequence": sequence, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "schemas": {d.name: {"version": d.version, "fingerprint": d.fingerprint}
                             for d in domains.values()}},
                _reported((change for __, __, __, change in part), progress, written, len(collected)),
                ring, office_key)
            written += len(part)
            result.add(sequence, path, len(part), header["counts"])
        with state.transaction():
            _remember(state, found, collected, awaiting, clock, result)
        for domain, conn, last_seq, __, generation in found.cleanups:
            capture.clear_log(conn, last_seq, generation + 1)
            conn.close()
        return result


def _read_domain(folder: Path, state: State, domain: Domain, found: _Found, confirm_deletes: bool,
                 notify, progress) -> None:
    """Collect the changes of one working database (if the folder has it) into ``found``."""
    path = workdir.db_path(folder, domain.name)
    if not path.exists():
        return

    def on_row():
        found.read += 1
        if progress and found.read % PROGRESS_ROWS == 0:
            progress("reading", found.read, None)
    conn = workdir.connect(path)
    expected = state.source(domain.name)
    skip = holds.unfit_tables(conn, state, domain, confirm_deletes, found.held_tables, found.deletes_held, notify)
    if expected is not None:
        found.untracked |= holds.untracked_tables(conn, domain)
    # While a table is unfit, every push compares in full: its log would be cleared unread.
    reason = found.resend or capture.needs_full_compare(conn, domain, expected) or (
        _("{tables} cannot be read").format(tables=", ".join(sorted(skip))) if skip else None)
    duplicated = {}
    if reason:
        found.full_compares[domain.name] = reason
        notify(_("{domain}.db: {reason}; comparing every row with what was last sent").format(
            domain=domain.name, reason=reason))
        capture.install(conn, domain, skip=skip, allow_duplicates=True)
        duplicated = holds.duplicated_keys(conn, domain, skip)
    last_seq, changed = changes.changes_of(conn, state, domain, reason, found.vetted, on_row, skip, duplicated,
                                           found.held_moves, resend=bool(found.resend))
    found.collected.extend(changed)
    current = capture.meta(conn)
    found.cleanups.append((domain, conn, last_seq, current["capture_id"], int(current["generation"])))


def _remember(state: State, found: _Found, collected: list, awaiting: dict, clock, result: ExportResult) -> None:
    """What this export sent and held, in state.db (one transaction, after the bundles are written)."""
    for __, table, key_json, change in collected:
        state.apply(table, key_json, change)
    for (tbl, key_json), why in found.vetted.items():
        if why:
            state.hold(tbl, key_json, why)
        else:
            state.release(tbl, key_json)
    # Deletions waiting for --confirm-deletes are looked at again at every push.
    for (tbl, key_json), why in awaiting.items():
        state.hold(tbl, key_json, why)
    state.replace_moves([domain.name for domain, *_ in found.cleanups], found.held_moves)
    for domain, __, __, capture_id, generation in found.cleanups:
        state.set_source(domain.name, capture_id, generation + 1)
    state.keep_clock(clock)
    state.drop_meta(RESEND)
    state.record_bundles(result.bundles)


def _split(collected: list, caps: limits.Limits) -> list[list]:
    """Cut the changes, in order, into bundles within the office's caps on changes and payload size.

    Each change is a whole record, so every bundle holds whole records; a
    first export of a large community becomes several bundles, none too big
    for the office to take.
    """
    parts, part, size = [], [], 0
    for item in collected:
        n = len(limits.line_bytes(item[3]))
        if part and (len(part) >= caps.max_changes or size + n > caps.max_payload):
            parts.append(part)
            part, size = [], 0
        part.append(item)
        size += n
    if part:
        parts.append(part)
    return parts
