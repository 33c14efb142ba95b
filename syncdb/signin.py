"""Sign-in for ``syncdb publish``: sessions held at the server, and guessing slowed down.

``publish`` opens the store read-only; what it writes about signing in lives
in the database it owns beside the store, ``STORE/publish.db`` (publishdb.py):

    sessions        one row per signed-in browser. The cookie carries the
                    session's id (signed); the row holds only its hash, so a
                    copy of this file opens no session. Signing out deletes the
                    row: a copy of the cookie stops working at once, not when
                    the session would have expired.
    sign_in_tries   recent sign-ins not known to have succeeded, per account
                    name and per client address, both as keyed hashes (a name
                    typed at the form may be anything, an ID number too)
    sign_in_locks   until when an account name or an address is refused, and
                    how many lock-outs it has had in a row
    lockouts        each lock-out, chained by HMAC like the page-view log (chain.py)

A try is counted when it starts, not when its password check ends, so a
burst of tries sent at once gets no more checks than one sent after the other.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import sqlite3
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from . import publishdb
from .chain import Chain, ChainGap, ChainMismatch, Head
from .crypto import Keyring
from .errors import SyncdbError
from .i18n import _, ngettext

DELAY_VARIABLE = "SYNCDB_SIGN_IN_DELAY"

def connect(store_dir) -> sqlite3.Connection:
    return publishdb.connect(store_dir)


def _keys(keyring: Keyring) -> tuple[bytes, Chain]:
    """(subject key, lock-out chain), both derived from the office's blind-index key."""
    suite = keyring.suite
    return (suite.derive(keyring.index_key, b"", b"syncdb sign-in subjects"),
            Chain(suite, suite.derive(keyring.index_key, b"", b"syncdb sign-in lockouts")))


def account_key(name: str) -> str:
    """The name as throttled: ``LiLei``, ``lilei `` and a full-width ``ｌｉｌｅｉ`` are one account."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def wait_text(seconds: float) -> str:
    """How long to wait, for the page: "30 seconds", "2 minutes"."""
    seconds = max(1, math.ceil(seconds))
    if seconds < 60:
        return ngettext("{count} second", "{count} seconds", seconds).format(count=seconds)
    minutes = math.ceil(seconds / 60)
    return ngettext("{count} minute", "{count} minutes", minutes).format(count=minutes)


@dataclass(frozen=True)
class Limits:
    """When tries are refused. An office's PCs may reach the site through one
    address (a NAT or proxy), so an address may fail more often than an account."""

    account: int = 5        # failed tries per account name …
    address: int = 20       # … and per client address, within
    window: float = 900.0   # seconds; older failures are forgotten
    delay: float = 30.0     # the first lock-out; each one in a row doubles it …
    cap: float = 900.0      # … up to this
    in_flight: float = 60.0  # a try still unanswered after this no longer counts

    @classmethod
    def from_environment(cls) -> "Limits":
        value = os.environ.get(DELAY_VARIABLE)
        if not value:
            return cls()
        try:
            delay = float(value)
        except ValueError:
            delay = -1.0
        if not 0 < delay <= 3600:
            raise SyncdbError(_("{variable}={value} is not a number of seconds between 0 and 3600; set it to the "
                                "first sign-in lock-out's length, or unset it for 30").format(
                                    variable=DELAY_VARIABLE, value=repr(value)))
        return cls(delay=delay, cap=max(delay, cls.cap))


@dataclass
class Attempt:
    """One sign-in try: what it counts against, and whether it may go ahead."""

    name: str
    address: str
    subjects: dict  # kind ("account" / "address") -> keyed hash
    tries: list = field(default_factory=list)  # its rows in sign_in_tries
    wait: float = 0.0  # > 0: refused; try again after this many seconds


@dataclass
class Lockout:
    kind: str
    account: str  # the account's name, or "" when the name typed is no account
    address: str
    seconds: int
    failures: int


class SignIn:
    """Sessions and the sign-in throttle of one published store."""

    def __init__(self, store_dir, keyring: Keyring, limits: Limits | None = None):
        self.store_dir = Path(store_dir)
        self.subject_key, self.chain = _keys(keyring)
        self.limits = limits or Limits.from_environment()
        self._reader: sqlite3.Connection | None = None
        connect(self.store_dir).close()  # made, or brought up to date, before the first page

    # ------------------------------------------------------------ sessions

    def start_session(self, account: str, expires: float) -> str:
        """A new session for ``account``; returns its id, for the signed cookie."""
        sid = os.urandom(24).hex()
        conn = connect(self.store_dir)
        try:
            conn.execute("DELETE FROM sessions WHERE expires < ?", (time.time(),))
            conn.execute("INSERT INTO sessions (id, account, started, expires) VALUES (?, ?, ?, ?)",
                         (_session_row_id(sid), account, time.time(), expires))
        finally:
            conn.close()
        return sid

    def session_account(self, sid: str) -> str | None:
        """The account of a live session, else None. Called on every page, on the
        event loop's thread only: one connection kept open, and a WAL read never waits."""
        if self._reader is None:
            self._reader = connect(self.store_dir)
        row = self._reader.execute("SELECT account, expires FROM sessions WHERE id = ?",
                                   (_session_row_id(sid),)).fetchone()
        if row is None or row[1] < time.time():
            return None
        return row[0]

    def end_session(self, sid: str) -> None:
        conn = connect(self.store_dir)
        try:
            conn.execute("DELETE FROM sessions WHERE id = ?", (_session_row_id(sid),))
        finally:
            conn.close()

    # ------------------------------------------------------------ the throttle

    def _subject(self, kind: str, value: str) -> bytes:
        return hmac.new(self.subject_key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def admit(self, name: str, address: str) -> Attempt:
        """Count a try against the account name and the address, or refuse it (``wait`` > 0)."""
        attempt = Attempt(name, address, {"account": self._subject("account", account_key(name)),
                                          "address": self._subject("address", address)})
        now = time.time()
        conn = connect(self.store_dir)
        try:
            conn.execute("BEGIN IMMEDIATE")  # one admission at a time, across threads and processes
            conn.execute("DELETE FROM sign_in_tries WHERE at < ?", (now - self.limits.window,))
            conn.execute("DELETE FROM sign_in_locks WHERE until < ?", (now - self.limits.window,))
            for kind, subject in attempt.subjects.items():
                attempt.wait = max(attempt.wait, self._refusal(conn, kind, subject, now))
            if not attempt.wait:
                for subject in attempt.subjects.values():
                    attempt.tries.append(conn.execute(
                        "INSERT INTO sign_in_tries (subject, at) VALUES (?, ?)", (subject, now)).lastrowid)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return attempt

    def _refusal(self, conn, kind: str, subject: bytes, now: float) -> float:
        """Seconds this subject must still wait, or 0."""
        lock = conn.execute("SELECT until FROM sign_in_locks WHERE subject = ?", (subject,)).fetchone()
        if lock and lock[0] > now:
            return lock[0] - now
        failed, unanswered = conn.execute(
            "SELECT coalesce(sum(failed), 0), coalesce(sum(failed = 0 AND at >= ?), 0) "
            "FROM sign_in_tries WHERE subject = ?", (now - self.limits.in_flight, subject)).fetchone()
        # Tries still being checked count as failures until they are answered; past the
        # limit (a lock-out just over) one try at a time.
        if unanswered and failed + unanswered >= getattr(self.limits, kind):
            return 1.0
        return 0.0

    def failed(self, attempt: Attempt, account: str) -> list[Lockout]:
        """The password was wrong: lock what reached its limit. ``account`` is the name
        typed if it is an account, else "" (a name typed by mistake is never written)."""
        now = time.time()
        locked = []
        conn = connect(self.store_dir)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("UPDATE sign_in_tries SET failed = 1 WHERE id = ?", [(t,) for t in attempt.tries])
            for kind, subject in attempt.subjects.items():
                failures = conn.execute("SELECT count(*) FROM sign_in_tries WHERE subject = ? AND failed = 1 "
                                        "AND at >= ?", (subject, now - self.limits.window)).fetchone()[0]
                if failures >= getattr(self.limits, kind):
                    seconds = self._lock(conn, subject, now)
                    locked.append(Lockout(kind, account, attempt.address, seconds, failures))
            for lockout in locked:
                self._record(conn, lockout)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return locked

    def _lock(self, conn, subject: bytes, now: float) -> int:
        previous = conn.execute("SELECT streak FROM sign_in_locks WHERE subject = ?", (subject,)).fetchone()
        streak = (previous[0] if previous else 0) + 1  # old locks were pruned with the window
        seconds = math.ceil(min(self.limits.delay * 2 ** min(streak - 1, 30), self.limits.cap))
        conn.execute("INSERT OR REPLACE INTO sign_in_locks (subject, until, streak) VALUES (?, ?, ?)",
                     (subject, now + seconds, streak))
        return seconds

    def succeeded(self, attempt: Attempt) -> None:
        """The right password: the account starts afresh; the address keeps its other failures."""
        account = attempt.subjects["account"]
        conn = connect(self.store_dir)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("DELETE FROM sign_in_tries WHERE id = ?", [(t,) for t in attempt.tries])
            conn.execute("DELETE FROM sign_in_tries WHERE subject = ?", (account,))
            conn.execute("DELETE FROM sign_in_locks WHERE subject = ?", (account,))
            conn.execute("COMMIT")
        finally:
            conn.close()

    # ------------------------------------------------------------ the lock-out log

    def _record(self, conn, lockout: Lockout) -> None:
        last = conn.execute("SELECT id, mac FROM lockouts ORDER BY id DESC LIMIT 1").fetchone()
        at = time.strftime("%Y-%m-%dT%H:%M:%S")
        fields = [at, lockout.kind, lockout.account, lockout.address, lockout.seconds, lockout.failures]
        head = self.chain.link(Head(last[0], bytes(last[1])) if last else Head(), _content(fields))
        conn.execute("INSERT INTO lockouts (id, at, kind, account, address, seconds, failures, mac) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (head.id, *fields, head.mac))


def _session_row_id(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _content(fields: list) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode()


def verify_lockouts(store_dir, keyring: Keyring) -> int:
    """Walk the lock-out chain; return its length or raise naming the first bad entry."""
    _subjects, chain = _keys(keyring)
    conn = publishdb.connect_read_only(store_dir)
    if conn is None:
        return 0
    try:
        if not publishdb.has_table(conn, "lockouts"):
            return 0
        head = Head()
        for entry_id, *fields, mac in conn.execute("SELECT id, at, kind, account, address, seconds, failures, mac "
                                                   "FROM lockouts ORDER BY id"):
            try:
                head = chain.follow(head, entry_id, _content(fields), mac)
            except (ChainGap, ChainMismatch):
                raise SyncdbError(_("sign-in lock-out log entry {entry} in {db} was edited, deleted or reordered "
                                    "by hand").format(entry=entry_id, db=publishdb.db_path(store_dir))) from None
        return head.id
    finally:
        conn.close()
