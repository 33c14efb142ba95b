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


@dataclass
class ExportResult:
    sequence: int | None  # the first bundle made; None when there was nothing to send
    path: Path | None
    changes: int
    counts: dict = field(default_factory=dict)
    full_compares: dict = field(default_factory=dict)  # domain -> why
    held: list = field(default_factory=list)  # "table / key / field: why" of records not sent until fixed
    bundles: list = field(default_factory=list)  # (sequence, path, changes) of each bundle made, in order

    def add(self, sequence: int, path: Path, changes: int, counts: dict) -> None:
        """One more bundle of this export; ``sequence`` and ``path`` name the first."""
        if not self.bundles:
            self.sequence, self.path = sequence, path
        self.bundles.append((sequence, path, changes))
        for table, ops in counts.items():
            mine = self.counts.setdefault(table, dict.fromkeys(ops, 0))
            for op, n in ops.items():
                mine[op] = mine.get(op, 0) + n


def state_dir(workdir_path) -> Path:
    return Path(workdir_path) / STATE_DIR


def outbox_dir(workdir_path) -> Path:
    return state_dir(workdir_path) / "outbox"


def init(workdir_path, code: str, office_key_file, domains: dict[str, Domain], secret: Secret) -> Path:
    """Set up capture and keys in a community folder; return the public key file path."""
    try:
        VALIDATORS["community_code"](code)
    except Invalid as e:
        raise SyncdbError(f"community code {code!r}: {e}") from None
    folder = Path(workdir_path)
    folder.mkdir(parents=True, exist_ok=True)
    office_key = PublicKey.read(office_key_file)
    if office_key.role != "office":
        raise SyncdbError(f"{office_key_file} is a {office_key.role} key, not the office key; "
                          "use the office.pub.json that `syncdb office init` wrote")
    sdir = state_dir(folder)
    if (sdir / "keyring.json").exists():
        raise SyncdbError(f"{folder} is already set up for community "
                          f"{read_config(folder).get('code')}; nothing was changed")
    sdir.mkdir(exist_ok=True)
    outbox_dir(folder).mkdir(exist_ok=True)
    ring = Keyring.generate("community", code, office_key.suite)
    ring.save(sdir / "keyring.json", secret)
    write_atomic(sdir / "office.pub.json", office_key.to_json().encode())
    write_atomic(sdir / "config.json", json.dumps(
        {"code": code, "office_key": office_key.id}, indent=2).encode())
    found = [d for d in domains.values() if workdir.db_path(folder, d.name).exists()]
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


def _diff(table: Table, key_json: str, current: dict | None, shadow: tuple | None):
    """The change that turns the shadow row into the current row, or None."""
    old_row = json.loads(shadow[0]) if shadow else None
    versions = unpack_versions(shadow[1], [c for c in table.columns if c not in table.key]) if shadow else {}
    key = dict(zip(table.key, json.loads(key_json)))
    if current is None and old_row is None:
        return None
    if current is None:
        return {"table": table.qualified, "op": "delete", "key": key, "cells": {},
                "base": {c: v for c, v in versions.items() if v}}
    if old_row is None:
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


def _changes_of(conn, state, domain: Domain, full_reason, vetted: dict):
    """(ms, table, key_json, change) for one working database, and the last log seq.

    A record that fails validation is not sent: it is held back (``vetted``
    collects table/key → why, or None once it passes) and looked at again at
    every push until it is fixed, so the office never gets half a record.
    """
    out = []

    def consider(ms, table, key_json, current):
        shadow = state.execute("SELECT row, versions FROM shadow WHERE tbl = ? AND key = ?",
                               (table.qualified, key_json)).fetchone()
        change = _diff(table, key_json, current, shadow)
        if current is not None:
            errors = [p for p in check_record(table, current, domain) if p.severity == "error"]
            vetted[(table.qualified, key_json)] = "; ".join(f"{p.field}: {p.why}" for p in errors) or None
            if errors:
                return
        else:
            vetted[(table.qualified, key_json)] = None
        if change:
            out.append((ms, table, key_json, change))

    now = int(time.time() * 1000)
    if full_reason:
        last_seq = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {capture.LOG}").fetchone()[0] \
            if capture.meta(conn) else 0
        for table in domain.tables.values():
            seen = set()
            for key_json, row in capture.all_rows(conn, table):
                seen.add(key_json)
                consider(now, table, key_json, row)
            for key_json, srow, sversions in state.execute(
                    "SELECT key, row, versions FROM shadow WHERE tbl = ?", (table.qualified,)).fetchall():
                if key_json not in seen:
                    consider(now, table, key_json, None)
        return last_seq, out
    last_seq, logged = capture.logged_keys(conn, domain)
    for tname, key_json in state.execute("SELECT tbl, key FROM held").fetchall():
        domain_name, _, table_name = tname.partition(".")
        if domain_name == domain.name and table_name in logged:
            logged[table_name].setdefault(key_json, now)
    for tname, keys in logged.items():
        table = domain.tables[tname]
        for key_json, ms in keys.items():
            consider(ms, table, key_json, capture.read_row(conn, table, json.loads(key_json)))
    return last_seq, out


def export(workdir_path, domains: dict[str, Domain], secret: Secret, notify=lambda message: None,
           caps: limits.Limits | None = None) -> ExportResult:
    """Turn what changed since the last push into the next bundle(s) in the outbox.

    Bundles stay within ``caps`` (default: the office's as last learnt, see
    ``office_limits``): a large export becomes several bundles in sequence.
    Crash-safe in every step: the bundle files are written before the state
    that remembers them is committed, and orphan bundles from a crash
    between the two are removed here before anything else. A full disk
    stops it the same way, with a message that says so.
    """
    try:
        return _export(Path(workdir_path), domains, secret, notify, caps or office_limits(workdir_path))
    except (OSError, sqlite3.Error) as e:
        raise storage_error(e, workdir_path, then="run `syncdb push` again") from None


def _export(folder: Path, domains: dict[str, Domain], secret: Secret, notify, caps: limits.Limits) -> ExportResult:
    config = read_config(folder)
    code = config["code"]
    ring = Keyring.load(state_dir(folder) / "keyring.json", secret)
    office_key = PublicKey.read(state_dir(folder) / "office.pub.json")
    state = _state(folder)
    try:
        next_seq = int(_meta(state, "next_sequence", 1))
        _remove_orphans(folder, code, next_seq)
        clock = Clock(code, Stamp.parse(_meta(state, "hlc")) if _meta(state, "hlc") else None)
        _follow_schema_changes(state, domains)

        collected, cleanups, full_compares, vetted = [], [], {}, {}
        for domain in domains.values():
            path = workdir.db_path(folder, domain.name)
            if not path.exists():
                continue
            conn = workdir.connect(path)
            expected = state.execute("SELECT capture_id, generation FROM sources WHERE domain = ?",
                                     (domain.name,)).fetchone()
            expected = None if expected is None else {"capture_id": expected[0], "generation": expected[1]}
            reason = capture.needs_full_compare(conn, domain, expected)
            if reason:
                full_compares[domain.name] = reason
                notify(f"{domain.name}.db: {reason}; comparing every row with what was last sent")
                capture.install(conn, domain)
            last_seq, changes = _changes_of(conn, state, domain, reason, vetted)
            collected.extend(changes)
            current = capture.meta(conn)
            cleanups.append((domain, conn, last_seq, current["capture_id"], int(current["generation"])))

        # Stamp in the order the PC clock saw the writes; the HLC keeps them monotonic.
        collected.sort(key=lambda item: item[0])
        for ms, _, _, change in collected:
            change["hlc"] = str(clock.tick(ms))

        collected = _within_limits(collected, caps, vetted)
        held = [f"{tbl} / {' / '.join(map(str, json.loads(key_json)))} / {why}"
                for (tbl, key_json), why in sorted(vetted.items()) if why]
        for line in held:
            notify(f"not sent until fixed: {line}")
        result = ExportResult(None, None, len(collected), full_compares=full_compares, held=held)
        # Every bundle is written before the state that remembers them is committed.
        for index, part in enumerate(_split(collected, caps)):
            sequence = next_seq + index
            path = outbox_dir(folder) / bundle.file_name(code, sequence)
            header = bundle.write(
                path,
                {"origin": code, "sequence": sequence, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "schemas": {d.name: {"version": d.version, "fingerprint": d.fingerprint}
                             for d in domains.values()}},
                (change for _, _, _, change in part), ring, office_key)
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
            for domain, _, _, capture_id, generation in cleanups:
                state.execute("INSERT OR REPLACE INTO sources VALUES (?, ?, ?)",
                              (domain.name, capture_id, generation + 1))
            _set_meta(state, "hlc", clock.last)
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


def _within_limits(collected: list, caps: limits.Limits, vetted: dict) -> list:
    """The changes the office will take; a record with a value or a line over its caps is
    held back like an invalid one (``vetted``), told to the worker, and sent once shortened."""
    kept = []
    for item in collected:
        _, table, key_json, change = item
        why = limits.fits(change, caps)
        if why:
            vetted[(table.qualified, key_json)] = why
        else:
            kept.append(item)
    return kept


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
