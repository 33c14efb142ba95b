"""A community's ``.syncdb`` folder, and the one module that owns its state database.

    .syncdb/config.json       code, office key id (``community.init`` writes it)
    .syncdb/state.db          the tables below; made here and nowhere else
    .syncdb/limits.json       the office's caps on one bundle, as last learnt from it (limits.py)
    .syncdb/outbox/           the bundles made (outbox.py)

state.db holds:

    meta         name -> value: next_sequence, hlc (the clock), pulled, resend, columns:TABLE …
    shadow       every record as last sent, with each cell's version (the HLC that set it)
    held         records not sent until fixed, and deletions waiting for ``--confirm-deletes``
    moves        key changes held back, sent as one once their new record is valid
    sources      per working database, the capture id and generation last read
    bundles      the bundle ledger: each bundle made, and when the office acknowledged it
    superseded   cells whose value here the office did not keep (pull.py)
    pull_intent  the working-database writes of the last bundle pulled, until committed (pull.py)

Every other module reads and writes them through a ``State`` (``open_state``),
never with SQL of its own; ``syncdb status`` reads the file read-only.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import capture, limits
from .errors import SyncdbError
from .i18n import _
from .hlc import Clock, Stamp, pack_versions, unpack_versions
from .schema import Domain, Table

STATE_DIR = ".syncdb"
RESEND = "resend"  # meta: why the next push sends every record whole
VERSION = 1  # PRAGMA user_version once every table below exists

TABLES = """
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
CREATE TABLE IF NOT EXISTS superseded (
    tbl TEXT NOT NULL, key TEXT NOT NULL, col TEXT NOT NULL, owner TEXT, version TEXT NOT NULL,
    pulled TEXT NOT NULL, PRIMARY KEY (tbl, key, col)) WITHOUT ROWID;
-- key, before and after are JSON objects of column -> value; after is null for a delete.
CREATE TABLE IF NOT EXISTS pull_intent (
    n INTEGER PRIMARY KEY, tbl TEXT NOT NULL, key TEXT NOT NULL, op TEXT NOT NULL,
    before TEXT NOT NULL, after TEXT);
"""


def state_dir(workdir) -> Path:
    return Path(workdir) / STATE_DIR


def outbox_dir(workdir) -> Path:
    return state_dir(workdir) / "outbox"


def state_path(workdir) -> Path:
    return state_dir(workdir) / "state.db"


def read_config(workdir) -> dict:
    path = state_dir(workdir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SyncdbError(_("{folder} is not a community folder set up for sync; "
                            "run `syncdb community init` there first").format(folder=workdir)) from None


def office_limits(workdir) -> limits.Limits:
    """The office's caps as last learnt from it (``remember_office_limits``), else the defaults."""
    try:
        return limits.load(state_dir(workdir))
    except SyncdbError:
        return limits.DEFAULT  # a damaged copy: the defaults are what every office starts with


def remember_office_limits(workdir, caps: limits.Limits) -> None:
    """Keep the office's caps in .syncdb/limits.json, for the exports to follow (a USB push too)."""
    if caps != office_limits(workdir):
        limits.save(state_dir(workdir), caps)


def now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def open_state(workdir) -> "State":
    """Open (making it if needed) a community's state.db: ``with open_state(folder) as state: …``."""
    conn = sqlite3.connect(str(state_path(workdir)), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        # The tables are made once; a state.db of an earlier release gains the ones it lacks.
        if conn.execute("PRAGMA user_version").fetchone()[0] < VERSION:
            conn.executescript(f"BEGIN IMMEDIATE; {TABLES} PRAGMA user_version = {VERSION}; COMMIT;")
    except BaseException:
        conn.close()
        raise
    return State(conn)


class State:
    """One open state.db. Writes made outside ``transaction()`` commit one statement at a time."""

    def __init__(self, conn: sqlite3.Connection):
        # A connection opened elsewhere (``syncdb status`` opens the file read-only) works too.
        self.conn = conn

    def __enter__(self) -> "State":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    # -- transactions: pull commits state.db between its working databases' writes and commits
    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    @contextmanager
    def transaction(self) -> Iterator["State"]:
        self.begin()
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        self.commit()

    # -- meta
    def meta(self, name: str, default=None):
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, name: str, value) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, str(value)))

    def drop_meta(self, name: str) -> None:
        self.conn.execute("DELETE FROM meta WHERE name = ?", (name,))

    # -- the clock
    def clock(self, code: str) -> Clock:
        """The community's hybrid logical clock, from its last stamp."""
        last = self.meta("hlc")
        return Clock(code, Stamp.parse(last) if last else None)

    def keep_clock(self, clock: Clock) -> None:
        self.set_meta("hlc", clock.last)

    # -- the bundle ledger
    def next_sequence(self) -> int:
        return int(self.meta("next_sequence", 1))

    def made(self) -> int:
        """How many bundles this community has made (its last sequence number)."""
        return self.next_sequence() - 1

    def record_bundles(self, made: list) -> None:
        """Remember the bundles (sequence, path, changes) an export wrote, in order."""
        if not made:
            return
        self.set_meta("next_sequence", made[-1][0] + 1)
        self.conn.executemany("INSERT INTO bundles VALUES (?, ?, ?, ?, NULL)",
                              [(sequence, path.name, n, now_text()) for sequence, path, n in made])

    def unacknowledged(self) -> list[tuple[int, str]]:
        """(sequence, file name) of the bundles the office has not acknowledged, in order."""
        return self.conn.execute("SELECT sequence, file FROM bundles WHERE acknowledged IS NULL "
                                 "ORDER BY sequence").fetchall()

    def acknowledge(self, sequence: int) -> str | None:
        """Mark a bundle as held by the office; return its file name (None if no such bundle)."""
        row = self.conn.execute("SELECT file FROM bundles WHERE sequence = ?", (sequence,)).fetchone()
        self.conn.execute("UPDATE bundles SET acknowledged = ? WHERE sequence = ? AND acknowledged IS NULL",
                          (now_text(), sequence))
        return row[0] if row else None

    def forget_bundles(self, sequences: list[int]) -> None:
        """Bundles the office refused at receipt: their sequence numbers are used again."""
        self.conn.executemany("DELETE FROM bundles WHERE sequence = ?", [(seq,) for seq in sequences])
        if sequences:
            self.set_meta("next_sequence", min(sequences))

    # -- sources: what each working database's capture looked like at the last push
    def source(self, domain: str) -> dict | None:
        row = self.conn.execute("SELECT capture_id, generation FROM sources WHERE domain = ?",
                                (domain,)).fetchone()
        return None if row is None else {"capture_id": row[0], "generation": row[1]}

    def set_source(self, domain: str, capture_id: str, generation: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO sources VALUES (?, ?, ?)", (domain, capture_id, generation))

    # -- the shadow: every record as last sent
    def shadow_row(self, qualified: str, key_json: str) -> tuple[str, str] | None:
        """(row JSON, packed versions) of one record as last sent; row is 'null' for a deleted one."""
        return self.conn.execute("SELECT row, versions FROM shadow WHERE tbl = ? AND key = ?",
                                 (qualified, key_json)).fetchone()

    def shadow_keys(self, qualified: str) -> list[str]:
        return [key for (key,) in self.conn.execute("SELECT key FROM shadow WHERE tbl = ?", (qualified,))]

    def live_rows(self, qualified: str) -> int:
        """How many records of a table the office holds from this community (as last sent)."""
        return self.conn.execute("SELECT count(*) FROM shadow WHERE tbl = ? AND row != 'null'",
                                 (qualified,)).fetchone()[0]

    def apply(self, table: Table, key_json: str, change: dict) -> None:
        """Record a change as sent (or as the office's, pulled): the shadow follows it."""
        if change["op"] == "rekey":
            self._apply_rekey(table, change)
            return
        non_key = table.non_key
        if change["op"] == "delete":
            # Kept as a tombstone (row null): a later insert of the same key is based on it.
            self.conn.execute("INSERT OR REPLACE INTO shadow VALUES (?, ?, 'null', ?)", (
                table.qualified, key_json, pack_versions({c: change["hlc"] for c in non_key}, non_key)))
            return
        old = self.shadow_row(table.qualified, key_json)
        row = (json.loads(old[0]) if old else None) or {}
        versions = unpack_versions(old[1], non_key) if old else {}
        row.update(change["key"])
        row.update(change["cells"])
        # An insert sets every cell, the empty ones too (the office versions them all),
        # so a later delete or update names the right base for each.
        for column in (non_key if change["op"] == "insert" else change["cells"]):
            versions[column] = change["hlc"]
        self.conn.execute("INSERT OR REPLACE INTO shadow VALUES (?, ?, ?, ?)", (
            table.qualified, key_json, json.dumps(row, ensure_ascii=False), pack_versions(versions, non_key)))

    def _apply_rekey(self, table: Table, change: dict) -> None:
        """The record moves to its new key: every cell versioned by the rekey's stamp there, and the
        old key a tombstone with that stamp (a later record under it is based on the move)."""
        non_key = table.non_key
        stamped = pack_versions({c: change["hlc"] for c in non_key}, non_key)
        row = {**change["new_key"], **change["cells"]}
        self.conn.executemany("INSERT OR REPLACE INTO shadow VALUES (?, ?, ?, ?)", [
            (table.qualified, capture.key_json(table, change["key"]), "null", stamped),
            (table.qualified, capture.key_json(table, change["new_key"]), json.dumps(row, ensure_ascii=False),
             stamped)])

    def follow_schema_changes(self, domains: dict[str, Domain]) -> None:
        """A column added to a schema was never covered by a shadow row's shared version:
        mark it unset in every shadow row of that table, once."""
        with self.transaction():
            for domain in domains.values():
                for table in domain.tables.values():
                    self._follow_columns(table)

    def _follow_columns(self, table: Table) -> None:
        non_key = table.non_key
        known = self.meta(f"columns:{table.qualified}")
        if known is not None and json.loads(known) != non_key:
            before = [c for c in non_key if c in json.loads(known)]
            rows = self.conn.execute("SELECT key, versions FROM shadow WHERE tbl = ?",
                                     (table.qualified,)).fetchall()
            self.conn.executemany("UPDATE shadow SET versions = ? WHERE tbl = ? AND key = ?", [
                (pack_versions(unpack_versions(text, before), non_key), table.qualified, key)
                for key, text in rows])
        self.set_meta(f"columns:{table.qualified}", json.dumps(non_key))

    # -- held: records not sent until fixed
    def held_keys(self) -> list[tuple[str, str]]:
        return self.conn.execute("SELECT tbl, key FROM held").fetchall()

    def held_for(self, why: str) -> set[tuple[str, str]]:
        """The (table, key) pairs held for this reason."""
        return set(self.conn.execute("SELECT tbl, key FROM held WHERE why = ?", (why,)).fetchall())

    def hold(self, qualified: str, key_json: str, why: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO held VALUES (?, ?, ?)", (qualified, key_json, why))

    def release(self, qualified: str, key_json: str) -> None:
        self.conn.execute("DELETE FROM held WHERE tbl = ? AND key = ?", (qualified, key_json))

    # -- moves: key changes held back
    def moves(self, domain: str) -> list[tuple[str, str, str, int]]:
        """(table name, old key, new key, ms) of the key changes held back in one domain."""
        rows = self.conn.execute("SELECT tbl, key, new_key, ms FROM moves WHERE substr(tbl, 1, ?) = ?",
                                 (len(domain) + 1, domain + ".")).fetchall()
        return [(tbl.partition(".")[2], old, new, ms) for tbl, old, new, ms in rows]

    def replace_moves(self, domains: list[str], moves: list[tuple[str, str, str, int]]) -> None:
        """The key changes held back in these domains are now ``moves`` (qualified table, old, new, ms)."""
        for domain in domains:
            self.conn.execute("DELETE FROM moves WHERE substr(tbl, 1, ?) = ?", (len(domain) + 1, domain + "."))
        self.conn.executemany("INSERT OR REPLACE INTO moves VALUES (?, ?, ?, ?)", moves)

    # -- superseded: cells whose value here the office did not keep
    def note_superseded(self, qualified: str, key_json: str, cols: list[str], owner: str | None,
                        version: str) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO superseded VALUES (?, ?, ?, ?, ?, datetime('now'))",
                              [(qualified, key_json, col, owner, version) for col in cols])

    def settle_superseded(self, qualified: str, key_json: str, cols: list[str] | None = None) -> None:
        """The office's value of these cells (every cell: None) is taken here now."""
        if cols is None:
            self.conn.execute("DELETE FROM superseded WHERE tbl = ? AND key = ?", (qualified, key_json))
        else:
            self.conn.executemany("DELETE FROM superseded WHERE tbl = ? AND key = ? AND col = ?",
                                  [(qualified, key_json, c) for c in cols])

    # -- pull_intent: a pull's working-database writes, until every one is committed
    def record_intent(self, writes: list[tuple]) -> None:
        """(table, key JSON, op, before JSON, after JSON or None) of each write, in order."""
        self.conn.executemany("INSERT INTO pull_intent (tbl, key, op, before, after) VALUES (?, ?, ?, ?, ?)",
                              writes)

    def intent(self) -> list[tuple]:
        return self.conn.execute("SELECT tbl, key, op, before, after FROM pull_intent ORDER BY n").fetchall()

    def clear_intent(self) -> None:
        self.conn.execute("DELETE FROM pull_intent")
