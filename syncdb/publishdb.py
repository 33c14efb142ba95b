"""The database ``syncdb publish`` owns: ``STORE/publish.db``, beside the store.

``publish`` opens store.db read-only; everything it writes itself lives here:

    staff             the staff accounts: scrypt hashes of their passwords,
                      their roles (staff.py)
    sessions, sign_in_tries, sign_in_locks, lockouts
                      sessions held at the server, the sign-in throttle and
                      its lock-out log (signin.py)
    page_views        every page that showed plaintext to someone: who, when,
                      which page (filter values as blind indexes, so the log
                      holds no plaintext); chained by HMAC like the store's
                      audit ledger (chain.py), with its head sealed in
                      ``chain_heads``

This module makes and upgrades the file (its tables are declared here, in one
place) and keeps the page-view log. The file is readable by its owner only:
it holds password hashes.

A store made by an earlier release kept its page-view log in store.db;
``carry_page_views`` moves it here, entry for entry, when the store is
upgraded (migrations.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from .chain import Chain, ChainGap, ChainMismatch, Head
from .crypto import Keyring
from .errors import SyncdbError
from .i18n import _
from .files import storage_error
from .sql import immediate

VERSION = 1  # PRAGMA user_version of a publish.db this release made or upgraded

SCHEMA = """
CREATE TABLE IF NOT EXISTS staff (
    name TEXT PRIMARY KEY, salt TEXT NOT NULL, hash TEXT NOT NULL, roles TEXT NOT NULL,
    epoch TEXT NOT NULL, added TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, account TEXT NOT NULL, started REAL NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sign_in_tries (
    id INTEGER PRIMARY KEY, subject BLOB NOT NULL, at REAL NOT NULL, failed INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS sign_in_tries_subject ON sign_in_tries (subject, at);
CREATE TABLE IF NOT EXISTS sign_in_locks (
    subject BLOB PRIMARY KEY, until REAL NOT NULL, streak INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lockouts (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, kind TEXT NOT NULL, account TEXT NOT NULL,
    address TEXT NOT NULL, seconds INTEGER NOT NULL, failures INTEGER NOT NULL, mac BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS page_views (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, page TEXT NOT NULL, mac BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS chain_heads (
    log TEXT PRIMARY KEY, id INTEGER NOT NULL, mac BLOB NOT NULL, seal BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def db_path(store_dir) -> Path:
    return Path(store_dir) / "publish.db"


def connect(store_dir) -> sqlite3.Connection:
    """publish.db, to read and write; made (owner-only) and brought up to date first if need be."""
    path = db_path(store_dir)
    try:
        _owner_only(path)
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=10)
    except (OSError, sqlite3.Error) as e:
        raise storage_error(e, store_dir) from None
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        if conn.execute("PRAGMA user_version").fetchone()[0] < VERSION:
            _upgrade(conn)
        conn.execute("PRAGMA journal_mode = WAL")  # the per-page session look-up never waits for a sign-in
    except sqlite3.Error as e:
        conn.close()
        raise storage_error(e, store_dir) from None
    return conn


def _owner_only(path: Path) -> None:
    """Create publish.db readable by its owner only, or take away what others could read of it.

    SQLite gives its -wal and -shm files the database file's permissions. The
    descriptor is opened only to create the file (O_EXCL): closing a descriptor
    of a database some connection of this process holds would drop its locks.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    if os.name == "nt":
        return
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if name.stat().st_mode & 0o077:
                os.chmod(name, 0o600)  # made by an earlier release, under the default umask
        except FileNotFoundError:
            pass


def _upgrade(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < VERSION:  # not done meanwhile by another process
            for statement in (s for s in SCHEMA.split(";") if s.strip()):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def connect_read_only(store_dir) -> sqlite3.Connection | None:
    """publish.db opened so that nothing can be written through it; None when there is none yet."""
    path = db_path(store_dir)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
        conn.execute("PRAGMA query_only = 1")
    except sqlite3.Error as e:
        raise storage_error(e, store_dir) from None
    return conn


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


# ---------------------------------------------------------------- the page-view log

def views_chain(keyring: Keyring) -> Chain:
    return Chain(keyring.suite, keyring.suite.derive(keyring.index_key, b"", b"syncdb page views"))


def _view_content(at: str, actor: str, page: str) -> bytes:
    # As the log has always been written: entries carried from store.db verify unchanged.
    return json.dumps([at, actor, page], ensure_ascii=False).encode()


def log_view(store_dir, keyring: Keyring, actor: str, page: str) -> None:
    """Record that ``actor`` was shown plaintext on ``page`` (logged as published pages log it)."""
    chain = views_chain(keyring)
    conn = connect(store_dir)
    try:
        with immediate(conn):
            last = conn.execute("SELECT id, mac FROM page_views ORDER BY id DESC LIMIT 1").fetchone()
            at = time.strftime("%Y-%m-%dT%H:%M:%S")
            head = chain.link(Head(last[0], bytes(last[1])) if last else Head(), _view_content(at, actor, page))
            conn.execute("INSERT INTO page_views (id, at, actor, page, mac) VALUES (?, ?, ?, ?, ?)",
                         (head.id, at, actor, page, head.mac))
            _seal_head(conn, chain, "page_views", head)
    finally:
        conn.close()


def _seal_head(conn: sqlite3.Connection, chain: Chain, log: str, head: Head) -> None:
    conn.execute("INSERT OR REPLACE INTO chain_heads (log, id, mac, seal) VALUES (?, ?, ?, ?)",
                 (log, head.id, head.mac, chain.seal(head)))


def _views(conn: sqlite3.Connection) -> list[tuple]:
    """(id, at, actor, page, mac) of every entry, in order; [] where there is no log."""
    if not has_table(conn, "page_views"):
        return []
    return [(i, at, actor, page, bytes(mac)) for i, at, actor, page, mac in
            conn.execute("SELECT id, at, actor, page, mac FROM page_views ORDER BY id")]


def _walk(chain: Chain, entries: list[tuple], where: str) -> Head:
    head = Head()
    for entry_id, at, actor, page, mac in entries:
        try:
            head = chain.follow(head, entry_id, _view_content(at, actor, page), mac)
        except (ChainGap, ChainMismatch):
            raise SyncdbError(_("page-view log entry {entry} in {where} was edited, deleted or reordered "
                                "by hand").format(entry=entry_id, where=where)) from None
    return head


def verify_views(store) -> int:
    """Walk the page-view log; return its length or raise naming the first bad entry.

    ``store`` is open (read-only is enough): the log of a store not yet
    upgraded, still in store.db, is walked too and counted with this one.
    """
    chain = views_chain(store.keyring)
    where = db_path(store.folder)
    conn = connect_read_only(store.folder)
    try:
        entries = _views(conn) if conn else []
        head = _walk(chain, entries, str(where))
        sealed = conn.execute("SELECT id, mac, seal FROM chain_heads WHERE log = 'page_views'").fetchone() \
            if conn and has_table(conn, "chain_heads") else None
    finally:
        if conn:
            conn.close()
    if sealed is None and head.id:
        raise SyncdbError(_("the page-view log's sealed head in {where} is missing: it was deleted by hand")
                          .format(where=where))
    if sealed is not None:
        stored = Head(sealed[0], bytes(sealed[1]))
        if not chain.sealed(stored, sealed[2]):
            raise SyncdbError(_("the page-view log's sealed head in {where} was edited by hand").format(where=where))
        if stored != head:
            raise SyncdbError(_("page-view log entries after entry {entry} in {where} are missing (the sealed "
                                "head says the last is {last}): they were deleted by hand").format(
                                    entry=head.id, where=where, last=stored.id))
    old = _views(store.conn)
    _walk(chain, old, _("{db} (not yet carried to publish.db)").format(db=store.folder / "store.db"))
    return head.id + len(old) - _carried(old, entries)


def _carried(old: list[tuple], entries: list[tuple]) -> int:
    """How many of store.db's entries publish.db already holds: a common beginning, or none at all."""
    common = min(len(old), len(entries))
    return common if [e[4] for e in old[:common]] == [e[4] for e in entries[:common]] else 0


def carry_page_views(store) -> int:
    """Move the page-view log of a store made by an earlier release from store.db into publish.db.

    For the store's upgrade (migrations.py), inside its transaction: the
    entries are copied as they are, MACs and all, so the chain goes on
    unbroken (an entry edited by hand stays evident to ``syncdb audit
    verify``); publish.db commits them, then the table is dropped from
    store.db in the caller's transaction. Run again after a crash, it finds
    the entries already carried and copies none twice. Returns how many it
    copied.
    """
    old = _views(store.conn)
    if not old and not has_table(store.conn, "page_views"):
        return 0
    chain = views_chain(store.keyring)
    conn = connect(store.folder)
    try:
        with immediate(conn):
            entries = _views(conn)
            if _carried(old, entries) < min(len(old), len(entries)):
                raise SyncdbError(_(
                    "the page-view log in {old} and the one in {new} began apart, so the old one cannot be "
                    "carried over; keep a copy of both files and ask for support; the store was not changed")
                    .format(old=store.folder / "store.db", new=db_path(store.folder)))
            added = old[len(entries):]
            conn.executemany("INSERT INTO page_views (id, at, actor, page, mac) VALUES (?, ?, ?, ?, ?)", added)
            if added:
                _seal_head(conn, chain, "page_views", Head(added[-1][0], added[-1][4]))
    finally:
        conn.close()
    store.conn.execute("DROP TABLE IF EXISTS page_views")
    return len(added)
