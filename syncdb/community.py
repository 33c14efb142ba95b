"""The community side: set-up, the state of what was sent, and making bundles.

A community folder holds the working databases and a ``.syncdb`` folder:

    .syncdb/config.json       code, office key id
    .syncdb/keyring.json      the community's secret keys, sealed
    .syncdb/office.pub.json   the office public key, to encrypt to
    .syncdb/state.db          what was last sent (the shadow), HLC, sequence numbers
    .syncdb/outbox/           bundles not yet acknowledged by the office
    .syncdb/limits.json       the office's caps on one bundle, as last learnt from it (limits.py)
    CODE.pub.json             the community public key, to carry to the office

The shadow holds every row as last sent, with each cell's version (the HLC
of the change that set it): the difference between a working database and
its shadow is exactly what to send, and each cell's shadow version is the
base version the office checks for conflicts.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import bundle, capture, limits, workdir
from .crypto import Keyring, PublicKey, Secret
from .errors import SyncdbError
from .files import storage_error, write_atomic
from .hlc import Clock, Stamp, pack_versions, unpack_versions
from .schema import Domain, Table
from .validate import VALIDATORS, Invalid, check_record

STATE_DIR = ".syncdb"
RESEND = "resend"  # state.db meta: why the next push sends every record whole


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


@dataclass
class HeldDeletes:
    """Deletions of one table a push did not send: a dropped table, or more than the share allowed."""

    table: str  # domain.table
    deletes: int  # records the push would delete at the office
    rows: int  # records of the table the office holds from this community
    dropped: bool = False

    def message(self, command: str = "syncdb push WORKDIR … --confirm-deletes") -> str:
        if self.dropped:
            found = (f"table '{self.table.split('.')[1]}' is gone from {self.table.split('.')[0]}.db "
                     f"(dropped, renamed or lost with a restore); the office holds {self.rows} of its records "
                     "from this community")
            undo = "Restore the table from a backup"
        else:
            found = (f"this push would delete {self.deletes} of the {self.rows} records of {self.table} "
                     f"the office holds from this community")
            undo = "If they were deleted by mistake, restore them from a backup"
        return (f"{found}. None of those deletions was sent, so the office still holds every record. "
                f"{undo}; if the office really should delete them, run: {command}")


DELETE_SHARE = 0.2  # one push deleting more of a table than this is held for a person
DELETE_MINIMUM = 10  # … but a small table may lose this many at once (a 3-row table may lose 1)
DELETION_HELD = "deletion held: confirm it with `syncdb push --confirm-deletes`"  # state.db held.why


def state_dir(workdir_path) -> Path:
    return Path(workdir_path) / STATE_DIR


def outbox_dir(workdir_path) -> Path:
    return state_dir(workdir_path) / "outbox"


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
        raise SyncdbError(f"community code {code!r}: {e}") from None
    folder = Path(workdir_path)
    office_key = PublicKey.read(office_key_file)
    if office_key.role != "office":
        raise SyncdbError(f"{office_key_file} is a {office_key.role} key, not the office key; "
                          "use the office.pub.json that `syncdb office init` wrote")
    sdir = state_dir(folder)
    if (sdir / "keyring.json").exists():
        raise SyncdbError(f"{folder} is already set up for community "
                          f"{read_config(folder).get('code')}; nothing was changed")
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
    _state(folder).close()
    pub = folder / f"{code}.pub.json"
    write_atomic(pub, ring.public.to_json().encode())
    return pub


def _check_folder(folder: Path, domains: dict[str, Domain], create_tables: bool) -> list[Domain]:
    """The domains whose working database the folder holds, each fit to capture; else SyncdbError."""
    names = ", ".join(f"{name}.db" for name in domains)
    if not folder.is_dir():
        raise SyncdbError(f"{folder}: no such folder. Give the folder that holds the community's working "
                          f"databases ({names}); nothing was set up")
    found = [d for d in domains.values() if workdir.db_path(folder, d.name).exists()]
    if not found and create_tables:
        workdir.create(folder, domains)
        return list(domains.values())
    if not found:
        raise SyncdbError(f"{folder} holds no working database ({names}). Give the folder the community's "
                          "programs keep them in, or add --create-tables to start with empty ones; "
                          "nothing was set up")
    faults = []
    for domain in found:
        faults.extend(_unfit_for_capture(workdir.db_path(folder, domain.name), domain, create_tables))
    if faults:
        again = "" if create_tables else " (--create-tables creates missing tables, empty)"
        raise SyncdbError("cannot set up capture: " + "; ".join(faults) + ". Nothing was set up: correct "
                          f"the database{again}, or point --schemas at the schemas it follows, then run "
                          "`syncdb community init` again")
    return found


def _unfit_for_capture(path: Path, domain: Domain, create_tables: bool) -> list[str]:
    """What keeps capture off one working database: missing tables or columns, keys held twice."""
    conn = workdir.connect(path)
    try:
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as e:
            return [f"{path} is not an SQLite database ({e})"]
        problems = capture.table_problems(conn, domain)
        faults = [f"{path}: {why}" for name, why in problems.items()
                  if not (create_tables and not conn.execute(f"PRAGMA table_info([{name}])").fetchone())]
        for table in domain.tables.values():
            if table.name in problems or capture.key_is_unique(conn, table):
                continue
            duplicates = capture.duplicate_keys(conn, table, limit=6)
            if duplicates:
                faults.append(f"{path}: in table '{table.name}', {capture.shown_duplicates(table, duplicates)} "
                              "(keep one row per key: correct or delete the others)")
        return faults
    finally:
        conn.close()


def read_config(workdir_path) -> dict:
    path = state_dir(workdir_path) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SyncdbError(f"{workdir_path} is not a community folder set up for sync; "
                          "run `syncdb community init` there first") from None


def _state(workdir_path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(state_dir(workdir_path) / "state.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript("""
        CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE IF NOT EXISTS shadow (
            tbl TEXT NOT NULL, key TEXT NOT NULL, row TEXT NOT NULL, versions TEXT NOT NULL,
            PRIMARY KEY (tbl, key)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS held (
            tbl TEXT NOT NULL, key TEXT NOT NULL, why TEXT NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS moves (
            tbl TEXT NOT NULL, key TEXT NOT NULL, new_key TEXT NOT NULL, ms INTEGER NOT NULL,
            PRIMARY KEY (tbl, key)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS sources (
            domain TEXT PRIMARY KEY, capture_id TEXT, generation INTEGER);
        CREATE TABLE IF NOT EXISTS bundles (
            sequence INTEGER PRIMARY KEY, file TEXT NOT NULL, changes INTEGER NOT NULL,
            created TEXT NOT NULL, acknowledged TEXT);
    """)
    return conn


def _meta(conn, name, default=None):
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return default if row is None else row[0]


def _set_meta(conn, name, value):
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, str(value)))


def _diff(table: Table, key_json: str, current: dict | None, shadow: tuple | None, resend: bool = False):
    """The change that turns the shadow row into the current row, or None.

    ``resend``: the office may never have had what was sent (its key changed,
    see rehome.py), so a current row goes whole, based on every version sent.
    """
    old_row = json.loads(shadow[0]) if shadow else None
    versions = unpack_versions(shadow[1], [c for c in table.columns if c not in table.key]) if shadow else {}
    key = dict(zip(table.key, json.loads(key_json)))
    if current is None and old_row is None:
        return None
    if current is None:
        return {"table": table.qualified, "op": "delete", "key": key, "cells": {},
                "base": {c: v for c, v in versions.items() if v}}
    if old_row is None or resend:
        # A new row: its empty cells are simply absent. A row deleted before and
        # entered again is based on the delete, so the office sees no conflict.
        cells = {c: v for c, v in current.items() if c not in table.key and v is not None}
        return {"table": table.qualified, "op": "insert", "key": key, "cells": cells,
                "base": {c: v for c, v in versions.items() if v}}
    cells = {c: v for c, v in current.items() if c not in table.key
             and (old_row.get(c) != v or type(old_row.get(c)) is not type(v))}
    if not cells:
        return None
    # The owner cell's version goes with every update, changed or not: it says whose record
    # this community changes, and it is a base even for a column the schema added later.
    return {"table": table.qualified, "op": "update", "key": key, "cells": cells,
            "base": {c: versions[c] for c in (*cells, table.owner) if versions.get(c)}}


def _changes_of(conn, state, domain: Domain, full_reason, vetted: dict, on_row=None, skip=(),
                duplicated=None, held_moves=None, resend: bool = False):
    """(ms, table, key_json, change) for one working database, and the last log seq.

    A record that fails validation is not sent: it is held back (``vetted``
    collects table/key → why, or None once it passes) and looked at again at
    every push until it is fixed, so the office never gets half a record.
    Tables in ``skip`` are left as they are (nothing of them is read or sent);
    ``duplicated`` names, per table, the keys more than one row holds, which
    are held back too. A key change held back (``held_moves``) is remembered
    in the state and sent as one change once its new record is valid.
    """
    out = []
    duplicated = duplicated or {}
    held_moves = [] if held_moves is None else held_moves

    def consider(ms, table, key_json, current):
        if on_row:
            on_row()
        shadow = _shadow_row(state, table, key_json)
        change = _diff(table, key_json, current, shadow, resend)
        if current is not None:
            why = _duplicate_why(table, key_json, duplicated) or _record_problems(table, current, domain)
            vetted[(table.qualified, key_json)] = why
            if why:
                return
        else:
            vetted[(table.qualified, key_json)] = None
        if change:
            out.append((ms, table, key_json, change))

    def moved(moves):
        done = _consider_moves(conn, state, domain, moves, vetted, out, skip, held_moves, duplicated)
        return lambda table, key_json: (table.name, key_json) in done

    now = int(time.time() * 1000)
    if full_reason:
        last_seq = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {capture.LOG}").fetchone()[0] \
            if capture.meta(conn) else 0
        handled = moved(_held_moves(state, domain, now))
        for table in domain.tables.values():
            if table.name in skip:
                continue
            seen = set()
            for key_json, row in capture.all_rows(conn, table):
                seen.add(key_json)
                if not handled(table, key_json):
                    consider(now, table, key_json, row)
            for (key_json,) in state.execute("SELECT key FROM shadow WHERE tbl = ?", (table.qualified,)).fetchall():
                if key_json not in seen and not handled(table, key_json):
                    consider(now, table, key_json, None)
        return last_seq, out
    last_seq, logged, moves = capture.logged_keys(conn, domain)
    for tname, key_json in state.execute("SELECT tbl, key FROM held").fetchall():
        domain_name, _, table_name = tname.partition(".")
        if domain_name == domain.name and table_name in logged:
            logged[table_name].setdefault(key_json, now)
    handled = moved(_held_moves(state, domain, now) + moves)
    for tname, keys in logged.items():
        table = domain.tables[tname]
        for key_json, ms in keys.items():
            if not handled(table, key_json):
                consider(ms, table, key_json, capture.read_row(conn, table, json.loads(key_json)))
    return last_seq, out


def _shadow_row(state, table: Table, key_json: str):
    return state.execute("SELECT row, versions FROM shadow WHERE tbl = ? AND key = ?",
                         (table.qualified, key_json)).fetchone()


def _record_problems(table: Table, record: dict, domain: Domain) -> str | None:
    """Why a record cannot be sent as it is ("field: why; …"), or None."""
    garbled = [c for c, v in record.items() if isinstance(v, workdir.Undecodable)]
    if garbled:
        # Read as text with U+FFFD in place of the bad bytes: never sent like that.
        return "; ".join(f"{c}: is not UTF-8 text (the program that wrote it used another encoding); "
                         "type the value again" for c in garbled)
    errors = [p for p in check_record(table, record, domain) if p.severity == "error"]
    return "; ".join(f"{p.field}: {p.why}" for p in errors) or None


def _duplicate_why(table: Table, key_json: str, duplicated: dict) -> str | None:
    rows = duplicated.get(table.name, {}).get(key_json)
    if not rows:
        return None
    return (f"{rows} rows of table '{table.name}' have this {', '.join(table.key)}; syncdb sends one record "
            "per key, so keep one row (correct or delete the others)")


def _held_moves(state, domain: Domain, now: int) -> list:
    """The key changes held back at earlier pushes, as (table name, old key, new key, ms)."""
    rows = state.execute("SELECT tbl, key, new_key, ms FROM moves WHERE substr(tbl, 1, ?) = ?",
                         (len(domain.name) + 1, domain.name + ".")).fetchall()
    return [(tbl.partition(".")[2], old, new, ms) for tbl, old, new, ms in rows]


def _compose(moves: list) -> list:
    """Chains of key changes as one each (A→B then B→C is A→C; A→B→A is nothing), in order."""
    dest, origin_of = {}, {}  # (table, origin) -> (new key, ms); (table, new key) -> origin
    for tname, old, new, ms in moves:
        origin = origin_of.pop((tname, old), old)
        previous = dest.pop((tname, origin), None)
        if previous:
            origin_of.pop((tname, previous[0]), None)
        stale = origin_of.pop((tname, new), None)  # the key was taken again since: that move is over
        if stale is not None:
            dest.pop((tname, stale), None)
        if origin != new:
            dest[(tname, origin)] = (new, ms)
            origin_of[(tname, new)] = origin
    return [(tname, origin, new, ms) for (tname, origin), (new, ms) in dest.items()]


def _consider_moves(conn, state, domain: Domain, moves: list, vetted: dict, out: list, skip,
                    held_moves: list, duplicated: dict) -> set:
    """Send each key change as one ``rekey``, or hold the whole of it back; return the
    (table name, key) pairs settled here, which are not looked at one by one."""
    done = set()
    for tname, old, new, ms in _compose(moves):
        table = domain.tables.get(tname)
        if table is None:
            continue
        if tname in skip:
            held_moves.append((table.qualified, old, new, ms))  # the table cannot be read now
            continue
        pair = _rekey_pair(conn, state, table, old, new)
        if pair is None or (tname, new) in done:
            continue  # not a key change (any more): each key goes its own way
        current, old_shadow = pair
        done |= {(tname, old), (tname, new)}
        why = _duplicate_why(table, new, duplicated) or _record_problems(table, current, domain)
        vetted[(table.qualified, new)] = why
        if why:
            vetted[(table.qualified, old)] = _moved_why(table, new)
            held_moves.append((table.qualified, old, new, ms))
            continue
        vetted[(table.qualified, old)] = None
        out.append((ms, table, new, _rekey(table, old, new, current, old_shadow)))
    return done


def _moved_why(table: Table, new_key_json: str) -> str:
    return (f"its key was changed to {shown_key(table, new_key_json)}, which is held back; the record "
            "stays at the office as it was, and the change goes as one once that record is fixed")


def _rekey_pair(conn, state, table: Table, old: str, new: str):
    """(the new row, the old key's shadow) when old → new is a key change to send as one, else None:
    the office holds the old key from this community, the old key has no row now, the new key
    has one, and the office holds nothing from here under the new key."""
    old_shadow = _shadow_row(state, table, old)
    if old_shadow is None or old_shadow[0] == "null":
        return None
    if capture.read_row(conn, table, json.loads(old)) is not None:
        return None
    current = capture.read_row(conn, table, json.loads(new))
    new_shadow = _shadow_row(state, table, new)
    if current is None or (new_shadow is not None and new_shadow[0] != "null"):
        return None
    return current, old_shadow


def _rekey(table: Table, old: str, new: str, current: dict, old_shadow: tuple) -> dict:
    """The one change that moves a record from its old natural key to its new one."""
    versions = unpack_versions(old_shadow[1], table.non_key)
    return {"table": table.qualified, "op": "rekey", "key": dict(zip(table.key, json.loads(old))),
            "new_key": dict(zip(table.key, json.loads(new))),
            "cells": {c: v for c, v in current.items() if c not in table.key and v is not None},
            "base": {c: v for c, v in versions.items() if v}}


def shown_key(table: Table, key_json: str) -> str:
    """A key as messages show it: sensitive values masked (110105********002X), enough to find it."""
    from .store import mask

    return " / ".join(mask(v) if table.columns[k].sensitive else str(v)
                      for k, v in zip(table.key, json.loads(key_json)))


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
        raise storage_error(e, workdir_path, then="run `syncdb push` again") from None


PROGRESS_ROWS = 1000


def _reported(items, progress, start: int, total: int):
    """The items, telling ``progress`` of every PROGRESS_ROWS of them."""
    for n, item in enumerate(items, start=start + 1):
        yield item
        if progress and n % PROGRESS_ROWS == 0:
            progress("writing", n, total)


def _export(folder: Path, domains: dict[str, Domain], secret: Secret, notify, caps: limits.Limits,
            progress=None, confirm_deletes: bool = False, delete_share: float = DELETE_SHARE) -> ExportResult:
    from .pull import finish_interrupted  # pull imports this module

    config = read_config(folder)
    code = config["code"]
    ring = Keyring.load(state_dir(folder) / "keyring.json", secret)
    office_key = PublicKey.read(state_dir(folder) / "office.pub.json")
    # A pull stopped after its commit point is finished first, or its values would go back as local edits.
    finish_interrupted(folder)
    state = _state(folder)
    try:
        next_seq = int(_meta(state, "next_sequence", 1))
        _remove_orphans(folder, code, next_seq)
        clock = Clock(code, Stamp.parse(_meta(state, "hlc")) if _meta(state, "hlc") else None)
        _follow_schema_changes(state, domains)

        collected, cleanups, full_compares, vetted = [], [], {}, {}
        held_moves, held_tables, deletes_held = [], [], []
        untracked = set()  # tables whose capture triggers were gone: dropped and made again, say
        read = [0]
        resend = _meta(state, RESEND)  # set by rehome.set_office_key: send every record again

        def on_row():
            read[0] += 1
            if progress and read[0] % PROGRESS_ROWS == 0:
                progress("reading", read[0], None)
        for domain in domains.values():
            path = workdir.db_path(folder, domain.name)
            if not path.exists():
                continue
            conn = workdir.connect(path)
            expected = state.execute("SELECT capture_id, generation FROM sources WHERE domain = ?",
                                     (domain.name,)).fetchone()
            expected = None if expected is None else {"capture_id": expected[0], "generation": expected[1]}
            skip = _unfit_tables(conn, state, domain, confirm_deletes, held_tables, deletes_held, notify)
            if expected is not None:
                untracked |= _untracked_tables(conn, domain)
            # While a table is unfit, every push compares in full: its log would be cleared unread.
            reason = resend or capture.needs_full_compare(conn, domain, expected) or (
                f"{', '.join(sorted(skip))} cannot be read" if skip else None)
            duplicated = {}
            if reason:
                full_compares[domain.name] = reason
                notify(f"{domain.name}.db: {reason}; comparing every row with what was last sent")
                capture.install(conn, domain, skip=skip, allow_duplicates=True)
                duplicated = _duplicated(conn, domain, skip)
            last_seq, changes = _changes_of(conn, state, domain, reason, vetted, on_row, skip, duplicated,
                                            held_moves, resend=bool(resend))
            collected.extend(changes)
            current = capture.meta(conn)
            cleanups.append((domain, conn, last_seq, current["capture_id"], int(current["generation"])))

        # Stamp in the order the PC clock saw the writes; the HLC keeps them monotonic.
        collected.sort(key=lambda item: item[0])
        for ms, _, _, change in collected:
            change["hlc"] = str(clock.tick(ms))

        awaiting = {}
        if not confirm_deletes:
            collected = _hold_mass_deletes(state, collected, delete_share, awaiting, deletes_held, untracked)
        collected = _within_limits(collected, caps, vetted, held_moves)
        tables = {t.qualified: t for d in domains.values() for t in d.tables.values()}
        held = held_tables + [f"{tbl} / {shown_key(tables[tbl], key_json)} / {why}"
                              for (tbl, key_json), why in sorted(vetted.items()) if why]
        for line in held:
            notify(f"not sent until fixed: {line}")
        result = ExportResult(None, None, len(collected), full_compares=full_compares, held=held,
                              deletes_held=deletes_held)
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
                _reported((change for _, _, _, change in part), progress, written, len(collected)),
                ring, office_key)
            written += len(part)
            result.add(sequence, path, len(part), header["counts"])

        with state:
            state.execute("BEGIN IMMEDIATE")
            for _, table, key_json, change in collected:
                _apply_to_shadow(state, table, key_json, change)
            for (tbl, key_json), why in vetted.items():
                if why:
                    state.execute("INSERT OR REPLACE INTO held VALUES (?, ?, ?)", (tbl, key_json, why))
                else:
                    state.execute("DELETE FROM held WHERE tbl = ? AND key = ?", (tbl, key_json))
            # Deletions waiting for --confirm-deletes are looked at again at every push.
            state.executemany("INSERT OR REPLACE INTO held VALUES (?, ?, ?)",
                              [(tbl, key_json, why) for (tbl, key_json), why in awaiting.items()])
            for domain, *_ in cleanups:
                state.execute("DELETE FROM moves WHERE substr(tbl, 1, ?) = ?",
                              (len(domain.name) + 1, domain.name + "."))
            state.executemany("INSERT OR REPLACE INTO moves VALUES (?, ?, ?, ?)", held_moves)
            for domain, _, _, capture_id, generation in cleanups:
                state.execute("INSERT OR REPLACE INTO sources VALUES (?, ?, ?)",
                              (domain.name, capture_id, generation + 1))
            _set_meta(state, "hlc", clock.last)
            state.execute("DELETE FROM meta WHERE name = ?", (RESEND,))
            if result.bundles:
                _set_meta(state, "next_sequence", result.bundles[-1][0] + 1)
                state.executemany("INSERT INTO bundles VALUES (?, ?, ?, ?, NULL)", [
                    (sequence, path.name, n, time.strftime("%Y-%m-%dT%H:%M:%S"))
                    for sequence, path, n in result.bundles])
        for domain, conn, last_seq, _, generation in cleanups:
            capture.clear_log(conn, last_seq, generation + 1)
            conn.close()
        return result
    finally:
        state.close()


def _within_limits(collected: list, caps: limits.Limits, vetted: dict, held_moves: list) -> list:
    """The changes the office will take; a record with a value or a line over its caps is
    held back like an invalid one (``vetted``), told to the worker, and sent once shortened."""
    kept = []
    for item in collected:
        ms, table, key_json, change = item
        why = limits.fits(change, caps)
        if not why:
            kept.append(item)
            continue
        vetted[(table.qualified, key_json)] = why
        if change["op"] == "rekey":  # the old key is held with it: the change goes whole or not at all
            old = capture.key_json(table, change["key"])
            vetted[(table.qualified, old)] = _moved_why(table, key_json)
            held_moves.append((table.qualified, old, key_json, ms))
    return kept


def _unfit_tables(conn, state, domain: Domain, confirm_deletes: bool, held_tables: list,
                  deletes_held: list, notify) -> set[str]:
    """The tables of a working database that cannot be read now: none of their changes is sent.

    A table that is gone is held while the office holds records of it from
    here (nothing of it is deleted there, and it is not made again empty);
    with ``confirm_deletes`` it is made again empty and its records are
    deleted. A table missing a column is held until the column is back.
    """
    skip = set()
    for name, why in capture.table_problems(conn, domain).items():
        table = domain.tables[name]
        if capture.table_exists(conn, name):
            skip.add(name)
            held_tables.append(f"{table.qualified} / {domain.name}.db: {why}; nothing of the table was sent")
            continue
        rows = _live_rows(state, table.qualified)
        if rows and not confirm_deletes:
            skip.add(name)
            deletes_held.append(HeldDeletes(table.qualified, rows, rows, dropped=True))
        elif rows:
            notify(f"{domain.name}.db: table '{name}' is gone; made again empty, as confirmed, and its "
                   f"{rows} records are deleted at the office")
    return skip


def _live_rows(state, qualified: str) -> int:
    """How many records of a table the office holds from this community (as last sent)."""
    return state.execute("SELECT count(*) FROM shadow WHERE tbl = ? AND row != 'null'", (qualified,)).fetchone()[0]


def deletions_to_hold(workdir_path, domains: dict[str, Domain], state: sqlite3.Connection) -> list[HeldDeletes]:
    """What the next push would hold of whole tables, found by reading only (``syncdb status``).

    A table gone from its working database, or one with no record left, while
    the office holds records of it from here: the push holds those deletions
    (``_unfit_tables``, ``_hold_mass_deletes``). ``state`` is state.db opened
    read-only; each working database is opened read-only too.
    """
    found = []
    for domain in domains.values():
        path = workdir.db_path(workdir_path, domain.name)
        if not path.is_file():
            continue
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
        try:
            problems = capture.table_problems(conn, domain)
            for table in domain.tables.values():
                rows = _live_rows(state, table.qualified)
                if not rows:
                    continue
                if table.name in problems and not capture.table_exists(conn, table.name):
                    found.append(HeldDeletes(table.qualified, rows, rows, dropped=True))
                elif table.name not in problems and \
                        not conn.execute(f"SELECT 1 FROM [{table.name}] LIMIT 1").fetchone():
                    found.append(HeldDeletes(table.qualified, rows, rows))
        finally:
            conn.close()
    return found


def _duplicated(conn, domain: Domain, skip) -> dict[str, dict[str, int]]:
    """{table name: {key_json: rows}} of the keys more than one row holds, where no unique index
    keeps them apart (capture could not add one while such rows are there)."""
    found = {}
    for table in domain.tables.values():
        if table.name in skip or capture.key_is_unique(conn, table):
            continue
        found[table.name] = {json.dumps(values, ensure_ascii=False): n
                             for values, n in capture.duplicate_keys(conn, table)}
    return found


def _untracked_tables(conn, domain: Domain) -> set[str]:
    """The tables (domain.table) whose capture triggers are gone since the last push: a table
    dropped and made again has lost them, and what it lost shows only as deletions."""
    missing = set(capture.missing_triggers(conn, domain))
    return {table.qualified for table in domain.tables.values()
            if missing & set(capture._trigger_names(table))}


def _hold_mass_deletes(state, collected: list, share: float, awaiting: dict, deletes_held: list,
                       untracked=frozenset()) -> list:
    """Hold back a table's deletions when one push would delete more than ``share`` of the
    records the office holds from here (and more than DELETE_MINIMUM): a wrong restore, a
    mass delete. A small table is not exempt when it would lose every record the office holds
    from here, or when its capture triggers were gone (``untracked``: dropped and made again).
    Once held, a deletion stays held until confirmed. They wait, in the held table, for
    ``--confirm-deletes``."""
    deletes: dict[str, list] = {}
    for item in collected:
        if item[3]["op"] == "delete":
            deletes.setdefault(item[1].qualified, []).append(item)
    waiting = set(state.execute("SELECT tbl, key FROM held WHERE why = ?", (DELETION_HELD,)).fetchall())
    held = set()
    for qualified, items in deletes.items():
        rows = _live_rows(state, qualified)
        whole = len(items) >= rows or qualified in untracked
        if not whole and len(items) <= max(DELETE_MINIMUM, share * rows):
            items = [item for item in items if (qualified, item[2]) in waiting]
            if not items:
                continue
        deletes_held.append(HeldDeletes(qualified, len(items), rows))
        for _, _, key_json, _ in items:
            awaiting[(qualified, key_json)] = DELETION_HELD
            held.add((qualified, key_json))
    return [item for item in collected
            if not (item[3]["op"] == "delete" and (item[1].qualified, item[2]) in held)]


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


def office_limits(workdir_path) -> limits.Limits:
    """The office's caps as last learnt from it (``remember_office_limits``), else the defaults."""
    try:
        return limits.load(state_dir(workdir_path))
    except SyncdbError:
        return limits.DEFAULT  # a damaged copy: the defaults are what every office starts with


def remember_office_limits(workdir_path, caps: limits.Limits) -> None:
    """Keep the office's caps in .syncdb/limits.json, for the exports to follow (a USB push too)."""
    if caps != office_limits(workdir_path):
        limits.save(state_dir(workdir_path), caps)


def _apply_to_shadow(state, table: Table, key_json: str, change: dict) -> None:
    old = state.execute("SELECT row, versions FROM shadow WHERE tbl = ? AND key = ?",
                        (table.qualified, key_json)).fetchone()
    non_key = [c for c in table.columns if c not in table.key]
    if change["op"] == "rekey":
        _apply_rekey_to_shadow(state, table, change)
        return
    if change["op"] == "delete":
        # Kept as a tombstone (row null): a later insert of the same key is based on it.
        state.execute("INSERT OR REPLACE INTO shadow VALUES (?, ?, 'null', ?)", (
            table.qualified, key_json, pack_versions({c: change["hlc"] for c in non_key}, non_key)))
        return
    row = (json.loads(old[0]) if old else None) or {}
    versions = unpack_versions(old[1], non_key) if old else {}
    row.update(change["key"])
    row.update(change["cells"])
    # An insert sets every cell, the empty ones too (the office versions them all),
    # so a later delete or update names the right base for each.
    changed = non_key if change["op"] == "insert" else change["cells"]
    for column in changed:
        versions[column] = change["hlc"]
    state.execute("INSERT OR REPLACE INTO shadow VALUES (?, ?, ?, ?)", (
        table.qualified, key_json, json.dumps(row, ensure_ascii=False), pack_versions(versions, non_key)))


def _apply_rekey_to_shadow(state, table: Table, change: dict) -> None:
    """The record moves to its new key: every cell versioned by the rekey's stamp there, and the
    old key a tombstone with that stamp (a later record under it is based on the move)."""
    non_key = table.non_key
    stamped = pack_versions({c: change["hlc"] for c in non_key}, non_key)
    row = {**change["new_key"], **change["cells"]}
    state.executemany("INSERT OR REPLACE INTO shadow VALUES (?, ?, ?, ?)", [
        (table.qualified, capture.key_json(table, change["key"]), "null", stamped),
        (table.qualified, capture.key_json(table, change["new_key"]), json.dumps(row, ensure_ascii=False),
         stamped)])


def _follow_schema_changes(state, domains: dict[str, Domain]) -> None:
    """A column added to a schema was never covered by a shadow row's shared version:
    mark it unset in every shadow row of that table, once."""
    with state:
        state.execute("BEGIN IMMEDIATE")
        for domain in domains.values():
            for table in domain.tables.values():
                non_key = [c for c in table.columns if c not in table.key]
                known = _meta(state, f"columns:{table.qualified}")
                if known is not None and json.loads(known) != non_key:
                    before = [c for c in non_key if c in json.loads(known)]
                    rows = state.execute("SELECT key, versions FROM shadow WHERE tbl = ?",
                                         (table.qualified,)).fetchall()
                    state.executemany("UPDATE shadow SET versions = ? WHERE tbl = ? AND key = ?", [
                        (pack_versions(unpack_versions(text, before), non_key), table.qualified, key)
                        for key, text in rows])
                _set_meta(state, f"columns:{table.qualified}", json.dumps(non_key))


def _remove_orphans(folder: Path, code: str, next_seq: int) -> None:
    """A bundle numbered at or past next_sequence was written by a run that crashed
    before remembering it; it was never sent, and its changes will be sent again."""
    for path in outbox_dir(folder).glob(f"*{bundle.SUFFIX}"):
        try:
            seq = int(path.stem.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if seq >= next_seq:
            path.unlink()


def ask_resend(workdir_path, skipped: int) -> bool:
    """The office gave up bundle ``skipped`` of this community: the next push sends every record
    whole, so what that bundle carried reaches the office after all. Once per skipped bundle."""
    state = _state(workdir_path)
    try:
        with state:
            state.execute("BEGIN IMMEDIATE")
            if int(_meta(state, "resend_honoured", 0)) >= skipped:
                return False
            _set_meta(state, "resend_honoured", skipped)
            _set_meta(state, RESEND, f"the office could not apply bundle {skipped}: sending every record again")
            return True
    finally:
        state.close()


def pending(workdir_path) -> list[Path]:
    """Bundles in the outbox not yet acknowledged by the office, in sequence order."""
    state = _state(workdir_path)
    try:
        rows = state.execute("SELECT file FROM bundles WHERE acknowledged IS NULL ORDER BY sequence").fetchall()
    finally:
        state.close()
    return [outbox_dir(workdir_path) / name for (name,) in rows]


def acknowledge(workdir_path, sequence: int) -> None:
    """The office holds this bundle: stop sending it, and remove it from the outbox."""
    state = _state(workdir_path)
    try:
        with state:
            row = state.execute("SELECT file FROM bundles WHERE sequence = ?", (sequence,)).fetchone()
            state.execute("UPDATE bundles SET acknowledged = ? WHERE sequence = ? AND acknowledged IS NULL",
                          (time.strftime("%Y-%m-%dT%H:%M:%S"), sequence))
    finally:
        state.close()
    if row:
        (outbox_dir(workdir_path) / row[0]).unlink(missing_ok=True)
