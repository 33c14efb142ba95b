"""The street office's store folder: keys, enrolled communities, the inbox.

    STORE/keyring.json      the office's secret keys, sealed (passphrase or key file)
    STORE/office.pub.json   the office public key, for every community
    STORE/store.db          the shared store (see store.py)
    STORE/limits.json       the caps on one bundle (limits.py; defaults when absent)
    STORE/inbox/            bundles received and verified, waiting to be merged
    STORE/quarantine/       a small record (.reason.json) of each refused bundle, not its bytes

A bundle is received once: the same bytes again are "already have it"; other
bytes under a sequence number already received are a replay or a fork and
are refused. Nothing is written before the signature checks out against the
key enrolled for that community.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import bundle, limits
from .crypto import Keyring, PublicKey, Secret
from .errors import SyncdbError
from .files import disk_error, fsync_dir, storage_error, write_atomic
from .i18n import _
from .sql import immediate
from .validate import VALIDATORS, Invalid


@dataclass
class Receipt:
    origin: str
    sequence: int
    status: str  # "accepted" or "duplicate"
    path: Path

    def as_dict(self) -> dict:
        return {"status": self.status, "origin": self.origin, "sequence": self.sequence}


class Refused(bundle.BundleError):
    """A bundle the office will not take; ``reason`` is the machine word."""


def keyring_path(store) -> Path:
    return Path(store) / "keyring.json"


def public_key_path(store) -> Path:
    return Path(store) / "office.pub.json"


def inbox_dir(store) -> Path:
    return Path(store) / "inbox"


def quarantine_dir(store) -> Path:
    return Path(store) / "quarantine"




def store_file(store) -> Path:
    """STORE/store.db, if it is there and not emptied (whether it is a store is for SQLite to say)."""
    path = Path(store) / "store.db"
    if not path.exists():
        raise SyncdbError(_("{store} is not an office store; create one with `syncdb office init {store}`").format(
            store=store))
    _refuse_if_not_a_store(path)
    return path


def connect(store) -> sqlite3.Connection:
    """store.db, to write (readers: store.open_store). Its tables are made by migrations.py."""
    path = store_file(store)
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    try:
        # Before any PRAGMA or write: a store.db that is not a store stays byte for byte as found.
        try:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'communities'").fetchone()
        except sqlite3.DatabaseError as e:
            if "not a database" in str(e):
                raise SyncdbError(_not_a_store(path)) from None
            raise
        if not found:
            raise SyncdbError(_not_a_store(path))
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 30000")
    except SyncdbError:
        conn.close()
        raise
    except sqlite3.Error as e:
        conn.close()
        raise storage_error(e, store) from None
    return conn


def _not_a_store(path: Path) -> str:
    return _("{path} is empty or not an office store; restore it from a backup of the store folder; "
             "nothing was written to it (only `syncdb office init` creates a store)").format(path=path)


def _refuse_if_not_a_store(path: Path) -> None:
    """An emptied store.db (zero bytes) is refused before SQLite opens it: opening it to write would
    turn it into an empty database and destroy the evidence. (Never open() the file itself to look:
    closing any descriptor of a database file drops the POSIX locks every SQLite connection of this
    process holds on it, and a store open elsewhere in this process, by `serve`, say, could then be
    corrupted. A file that is not SQLite is caught by the first read, below, which writes nothing.)"""
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise storage_error(e, path.parent) from None
    if empty:
        raise SyncdbError(_not_a_store(path))


OFFICE_TABLES = """
CREATE TABLE IF NOT EXISTS communities (
    code TEXT PRIMARY KEY, public_key TEXT NOT NULL, key_id TEXT NOT NULL, enrolled TEXT NOT NULL, name TEXT);
CREATE TABLE IF NOT EXISTS received (
    origin TEXT NOT NULL, sequence INTEGER NOT NULL, sha256 TEXT NOT NULL, file TEXT NOT NULL,
    received TEXT NOT NULL, changes INTEGER, PRIMARY KEY (origin, sequence));
CREATE TABLE IF NOT EXISTS office_clock (one INTEGER PRIMARY KEY CHECK (one = 1), hlc TEXT NOT NULL);
"""


def not_applied(conn: sqlite3.Connection, columns: str) -> tuple[dict[str, int], dict[str, list[tuple]]]:
    """Each sender's last bundle applied (0 for none), and the ``columns`` of its bundles received after
    it, in order. Read through the primary keys, a few rows a sender: the bundles of the years before
    are never read, so a merge and ``syncdb status`` cost the same in the fifth year as in the first
    (bench/years.py)."""
    last: dict[str, int] = {}
    queues: dict[str, list[tuple]] = {}
    for origin in origins(conn, "received"):
        last[origin] = settled_in(conn, origin)
        queue = conn.execute(f"SELECT {columns} FROM received WHERE origin = ? AND sequence > ? ORDER BY sequence",
                             (origin, last[origin])).fetchall()
        if queue:
            queues[origin] = queue
    return last, queues


def last_bundle(conn: sqlite3.Connection, table: str, origin: str) -> tuple:
    """(sequence, when) of ``origin``'s last bundle in ``table`` (applied or received, each with its
    time in a column of its name), or (None, None): by the primary key, never the bundles before it."""
    return conn.execute(f"SELECT sequence, {table} FROM {table} WHERE origin = ? ORDER BY sequence DESC LIMIT 1",
                        (origin,)).fetchone() or (None, None)


def origins(conn: sqlite3.Connection, table: str) -> list[str]:
    """Every sender of a bundle in ``table`` (received or applied), in order: one step into its
    primary key per sender (a skip-scan), however many bundles each has sent."""
    return [origin for (origin,) in conn.execute(
        f"WITH RECURSIVE o(origin) AS (SELECT min(origin) FROM {table} UNION ALL "
        f"SELECT (SELECT min(origin) FROM {table} WHERE origin > o.origin) FROM o WHERE o.origin IS NOT NULL) "
        "SELECT origin FROM o WHERE origin IS NOT NULL")]


def create(store, secret: Secret, suite_name: str = "std", code: str = "office") -> Path:
    """Create the store folder, the office keys and store.db with the office's tables; return the
    public key file. ``migrations.init`` (``syncdb office init``) then makes the store whole."""
    folder = Path(store)
    if keyring_path(folder).exists():
        raise SyncdbError(_("{folder} already holds an office store; nothing was changed").format(folder=folder))
    folder.mkdir(parents=True, exist_ok=True)
    for sub in (inbox_dir(folder), quarantine_dir(folder)):
        sub.mkdir(exist_ok=True)
    ring = Keyring.generate("office", code, suite_name)
    ring.save(keyring_path(folder), secret)
    write_atomic(public_key_path(folder), ring.public.to_json().encode())
    limits.save(folder, limits.DEFAULT)  # there to be seen and edited; absent means the same
    conn = sqlite3.connect(str(folder / "store.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(OFFICE_TABLES)
    conn.close()
    return public_key_path(folder)


def enroll(store, code: str, public_key_file, name: str | None = None) -> PublicKey:
    """Let the bundles signed by this community's key in; ``name`` is what people call it (岗贝社区).

    Enrolling again replaces the key (a community set up anew) and keeps the
    name unless a new one is given.
    """
    try:
        VALIDATORS["community_code"](code)
    except Invalid as e:
        raise SyncdbError(_("community code {code}: {problem}").format(code=repr(code), problem=e)) from None
    office_code = PublicKey.read(public_key_path(store)).code
    if code == office_code:
        raise SyncdbError(_("{code} is the office's own code; a community needs its own").format(code=code))
    if re.fullmatch(r"[0-9]{9}", office_code) and not code.startswith(office_code):
        # A 9-digit office code is its street's 统计用区划代码: its communities' codes begin with it.
        raise SyncdbError(_("community {code} is not in this office's street {office} (its code would begin "
                            "with {office}); check the code, or enrol it at its own street office").format(
            code=code, office=office_code))
    name = _checked_name(name) if name is not None else None
    key = PublicKey.read(public_key_file)
    if key.role != "community":
        raise SyncdbError(_("{file} is an {role} key; enrol the community's CODE.pub.json").format(
            file=public_key_file, role=key.role))
    if key.code != code:
        raise SyncdbError(_("{file} belongs to community {theirs}, not {code}; "
                            "check which file you copied").format(file=public_key_file, theirs=key.code, code=code))
    conn = connect(store)
    try:
        add_missing_columns(conn)  # a store from before names: enrolling gives one
        with immediate(conn):
            before = conn.execute("SELECT key_id FROM communities WHERE code = ?", (code,)).fetchone()
            conn.execute("INSERT INTO communities (code, public_key, key_id, enrolled, name) VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT (code) DO UPDATE SET public_key = excluded.public_key, "
                         "key_id = excluded.key_id, enrolled = excluded.enrolled, "
                         "name = coalesce(excluded.name, communities.name)",
                         (code, key.to_json(), key.id, time.strftime("%Y-%m-%dT%H:%M:%S"), name))
            if before and before[0] != key.id and _has_table(conn, "origin_clock"):
                # A new key for a community (its old one stolen, say): stamps from the future that
                # the old key sent no longer hold the community's own later bundles out.
                conn.execute("DELETE FROM origin_clock WHERE origin = ?", (code,))
    finally:
        conn.close()
    return key


def _has_table(conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def rename(store, code: str, name: str) -> str | None:
    """Give an enrolled community a (new) name; return the name it had."""
    name = _checked_name(name)
    conn = connect(store)
    try:
        add_missing_columns(conn)  # a store from before names: naming gives one
        with immediate(conn):
            row = conn.execute("SELECT name FROM communities WHERE code = ?", (code,)).fetchone()
            if row is None:
                raise SyncdbError(_("community {code} is not enrolled at {store}; enrol it with "
                                    "`syncdb office enroll {store} {code} {code}.pub.json --name {name}`").format(
                    code=code, store=store, name=name))
            conn.execute("UPDATE communities SET name = ? WHERE code = ?", (name, code))
    finally:
        conn.close()
    return row[0]


MAX_NAME = 40  # characters: 街道 and 社区 names run to a dozen or so


def _checked_name(name: str) -> str:
    text = name.strip()
    if not text:
        raise SyncdbError(_("a community's name cannot be empty; give it as people write it, e.g. 岗贝社区"))
    if len(text) > MAX_NAME or any(not ch.isprintable() for ch in text):
        raise SyncdbError(_("{name} is not a community name: at most {most} printable characters, "
                            "e.g. 岗贝社区").format(name=repr(name), most=MAX_NAME))
    return text


def add_missing_columns(conn: sqlite3.Connection) -> None:
    """Columns the office's tables gained since earlier releases (migrations.py runs this)."""
    for table, column, kind in (("communities", "name", "TEXT"),  # what people call the community
                                ("received", "changes", "INTEGER")):  # from the header, for progress
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as e:
                if "duplicate column" not in str(e):  # another process added it meanwhile: fine
                    raise


def names(conn: sqlite3.Connection) -> dict[str, str]:
    """Enrolled code -> name, for those that have one (a store from before names: none)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(communities)")}
    if "name" not in columns:
        return {}
    return dict(conn.execute("SELECT code, name FROM communities WHERE name IS NOT NULL"))


def read_names(store) -> dict[str, str]:
    """``names`` of a store folder, read without writing anything (for output only: {} if it cannot be read)."""
    try:
        conn = sqlite3.connect(Path(store, "store.db").resolve().as_uri() + "?mode=ro", uri=True)
        try:
            return names(conn)
        finally:
            conn.close()
    except sqlite3.Error:
        return {}


def label(code: str, known: dict[str, str]) -> str:
    """``441900003001 岗贝社区``: a code as people read it, with its name when it has one."""
    name = known.get(code)
    return f"{code} {name}" if name else code


_CODE = re.compile(r"(?<![\w-])([0-9]{12})(?![\w-])")


def named(text: str, known: dict[str, str]) -> str:
    """Put each enrolled community's name after its code in a line of output (file names untouched)."""
    if not known:
        return text
    return _CODE.sub(lambda m: f"{m[1]}（{known[m[1]]}）" if m[1] in known else m[1], text)


def enrolled_keys(conn: sqlite3.Connection) -> dict[str, PublicKey]:
    return {code: PublicKey.from_json(text) for code, text in
            conn.execute("SELECT code, public_key FROM communities")}


def signer_keys(conn: sqlite3.Connection, office_key: PublicKey) -> dict[str, PublicKey]:
    """Who may sign bundles for this store: the enrolled communities, and the office itself
    (its resolutions travel as bundles too, so they merge like any change)."""
    keys = enrolled_keys(conn)
    keys[office_key.code] = office_key
    return keys


def receive(store, data: bytes, source: str = "upload") -> Receipt:
    """Verify one bundle and keep it durably in the inbox. Raises Refused."""
    return receive_file(store, io.BytesIO(data), source)


def receive_file(store, f: BinaryIO, source: str = "upload") -> Receipt:
    """``receive`` from a seekable binary file (an upload spooled to disk, a bundle on a USB stick).

    Everything that can be known without the office's secret key is checked
    before anything is kept: signature, kind, recipient and the office's caps.
    """
    store = Path(store)
    caps = limits.load(store)
    conn = connect(store)
    try:
        office_key = PublicKey.read(public_key_path(store))
        keys = signer_keys(conn, office_key)
        try:
            f.seek(0)
            header = bundle.verify(f, keys.get)
        except bundle.BundleError as e:
            _refuse(store, f, None, e.reason, str(e), source)
        unfit = _unfit(header, office_key, caps)
        if unfit:
            _refuse(store, f, header, *unfit, source)
        # One receiver at a time per store (serve and merge may both run): the
        # check, the inbox file and its record go together.
        try:
            conn.execute("BEGIN IMMEDIATE")
            receipt = keep(conn, store, f, header, source)
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(e, (OSError, sqlite3.Error)):
                raise storage_error(e, store) from None
            raise
        return receipt
    finally:
        conn.close()


def _unfit(header: bundle.Header, office_key: PublicKey, caps: limits.Limits) -> tuple[str, str] | None:
    """(reason, message) when a verified bundle is not for this office's inbox, else None."""
    if header.kind != "changes":
        return "wrong-kind", _("a '{kind}' bundle is for a community, not for the office").format(kind=header.kind)
    if header["recipient"] != office_key.id:
        # Refused now, not at the merge: stored, it would be acknowledged, the community would
        # delete its only copy, and the office could never read it.
        return "wrong-recipient", _(
            "{code} encrypted bundle {sequence} to key {theirs}, not to this "
            "office's key {ours}: the community was set up with another office's key "
            "(its .syncdb/office.pub.json), or before this office's key changed, and this office cannot "
            "read it. Nothing was kept and the community keeps its bundles; give the community this "
            "office's office.pub.json to use with `syncdb community set-office-key WORKDIR office.pub.json`").format(
            code=header.origin, sequence=header.sequence, theirs=header['recipient'], ours=office_key.id)
    if header["changes"] > caps.max_changes:
        return "too-large", _(
            "bundle {sequence} from {code} holds {changes:,} changes, more than the "
            "{most:,} this office takes in one bundle; a current syncdb splits large exports "
            "to fit, or the data administrator may raise max_changes in STORE/limits.json").format(
            sequence=header.sequence, code=header.origin, changes=header['changes'], most=caps.max_changes)
    return None


def keep(conn, store: Path, data: bytes | BinaryIO, header, source: str) -> Receipt:
    """Put a verified bundle in the inbox and record it; the caller holds an IMMEDIATE transaction."""
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    digest, _size = _digest(f)
    name = bundle.file_name(header.origin, header.sequence)
    seen = conn.execute("SELECT sha256 FROM received WHERE origin = ? AND sequence = ?",
                        (header.origin, header.sequence)).fetchone()
    if seen and seen[0] == digest:
        return Receipt(header.origin, header.sequence, "duplicate", inbox_dir(store) / name)
    if seen:
        _refuse(store, f, header, "replay",
                _("community {code} already sent a different bundle numbered "
                  "{sequence}: this is a replay or a fork (two copies of the community "
                  "folder pushing). Keep the community's outbox as it is and call the data administrator").format(
                    code=header.origin, sequence=header.sequence),
                source)
    path = _copy_atomic(f, inbox_dir(store) / name)
    # The bundle is on disk before it is acknowledged; only then is it recorded.
    record(conn, header, digest)
    return Receipt(header.origin, header.sequence, "accepted", path)


def record(conn, header, digest: str) -> str:
    """Record a bundle now in the inbox under its own name (returned); in the caller's transaction."""
    name = bundle.file_name(header.origin, header.sequence)
    conn.execute("INSERT INTO received (origin, sequence, sha256, file, received, changes) VALUES (?, ?, ?, ?, ?, ?)",
                 (header.origin, header.sequence, digest, name, time.strftime("%Y-%m-%dT%H:%M:%S"),
                  int(header.fields.get("changes", 0))))
    return name


def _digest(f: BinaryIO) -> tuple[str, int]:
    """SHA-256 (hex) and size of the whole file, read in blocks."""
    f.seek(0)
    digest, size = hashlib.sha256(), 0
    while block := f.read(1 << 20):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def _copy_atomic(f: BinaryIO, path: Path) -> Path:
    """Copy the whole file to ``path`` durably (see files.write_atomic), a block at a time."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        f.seek(0)
        with open(tmp, "wb") as out:
            while block := f.read(1 << 20):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_error(e, path) from None
    return path


# Refusals are kept as small records, never the refused bytes: anyone who can reach
# the ingest endpoint can be refused, and must not be able to fill the office's disk.
QUARANTINE_PER_SENDER = 100
QUARANTINE_HEADER = 4096  # characters of a refused bundle's header kept in its record
_RECORD_NAME = re.compile(r"[0-9]{8}T[0-9]{6}\.[0-9]{6}-(?P<sender>[0-9A-Za-z_]+)-(?:[0-9]+|x)-[0-9a-f]{12}\.reason\.json")


def _refuse(store, f: BinaryIO, header, reason, message, source="upload"):
    """Record the refusal in quarantine, then raise Refused.

    The record holds the header (a verified one, or the claimed one
    truncated), the bytes' digest and size, the reason and the source: enough
    to recognise the bundle and to say why, bounded per sender. The sender is
    the verified origin, or "unknown": an unverified origin is only a claim,
    and counting it would let anyone open any number of senders. The store
    database is not touched.
    """
    digest, size = _digest(f)
    origin = header.origin if header else "unknown"
    sender = origin if re.fullmatch(r"[0-9A-Za-z_]+", origin) else "unknown"
    sequence = header.sequence if header else None
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now)) + f".{int(now * 1e6) % 1_000_000:06d}"
    name = f"{stamp}-{sender}-{sequence if sequence is not None else 'x'}-{digest[:12]}.reason.json"
    record = {"reason": reason, "message": message, "source": source, "origin": origin, "sequence": sequence,
              "sha256": digest, "size": size, "header": _header_text(f, header),
              "refused": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))}
    qdir = quarantine_dir(store)
    qdir.mkdir(exist_ok=True)
    write_atomic(qdir / name, json.dumps(record, ensure_ascii=False, indent=2).encode())
    _prune(qdir, sender)
    raise Refused(message, reason)


def _header_text(f: BinaryIO, header) -> str | None:
    """The header as it came (the verified one, or the bytes where a header would be), truncated."""
    if header is not None:
        raw = header.raw
    else:
        f.seek(0)
        start = f.read(12)
        if len(start) < 12 or start[:8] != bundle.MAGIC:
            return None
        raw = f.read(min(int.from_bytes(start[8:12], "big"), QUARANTINE_HEADER))
    return raw[:QUARANTINE_HEADER].decode("utf-8", "replace")


def _prune(qdir: Path, sender: str) -> None:
    """Keep the latest QUARANTINE_PER_SENDER records of one sender."""
    mine = sorted(p.name for p in qdir.glob(f"*-{sender}-*.reason.json")
                  if (m := _RECORD_NAME.fullmatch(p.name)) and m["sender"] == sender)
    for name in mine[:-QUARANTINE_PER_SENDER]:
        (qdir / name).unlink(missing_ok=True)


def quarantine_copy(store, path: Path, error: bundle.BundleError) -> None:
    """Copy a damaged inbox bundle to quarantine with the reason beside it.

    Unlike a refused upload, this copy is kept whole: the bytes are the
    office's own, verified and within its caps when received, and a person
    needs them to find out what damaged the inbox. It is bounded too: one
    copy per inbox bundle, the same name each time a merge meets it again.
    """
    qdir = quarantine_dir(store)
    qdir.mkdir(exist_ok=True)
    with open(path, "rb") as f:
        _copy_atomic(f, qdir / f"inbox-{path.name}")
    write_atomic(qdir / f"inbox-{path.name}.reason.json", json.dumps(
        {"reason": error.reason, "message": str(error), "source": f"inbox {path.name}"},
        ensure_ascii=False, indent=2).encode())


def receive_files(store, paths) -> list[tuple[Path, Receipt | Refused]]:
    """Receive bundle files or folders of them (a USB stick, a copied outbox)."""
    results = []
    for path in _bundle_files(paths):
        try:
            with open(path, "rb") as f:
                # A folder named in another encoding (GBK, from a Chinese Windows) is a path Python spells
                # with lone surrogates: the quarantine record names it by the escapes of its bytes.
                source = os.fsencode(path).decode("utf-8", "backslashreplace")
                results.append((path, receive_file(store, f, source=source)))
        except Refused as e:
            results.append((path, e))
        except OSError as e:
            results.append((path, Refused(_("cannot read {path}: {problem}").format(path=path, problem=e.strerror),
                                          "unreadable")))
    return results


def _bundle_files(paths):
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(p.rglob(f"*{bundle.SUFFIX}"))
        else:
            yield p


def load_keyring(store, secret: Secret) -> Keyring:
    return Keyring.load(keyring_path(store), secret)


def acknowledged(store, origin: str) -> int:
    """The highest sequence number N such that bundles 1..N from ``origin`` are all held."""
    conn = connect(store)
    try:
        return acknowledged_in(conn, origin)
    finally:
        conn.close()


def settled_in(conn: sqlite3.Connection, origin: str) -> int:
    """The highest N such that bundles 1..N from ``origin`` are applied (or skipped) here.

    What the office's own bundles tell a community it may remove: a bundle
    received but held (a damaged inbox copy, say) stays in the community's
    outbox, so `syncdb bundles resend` can still have it sent again.
    """
    (n,) = conn.execute("SELECT coalesce(max(sequence), 0) FROM applied WHERE origin = ?", (origin,)).fetchone()
    return n  # applied only ever in order, from 1: the highest is the count


def acknowledged_in(conn: sqlite3.Connection, origin: str) -> int:
    """``acknowledged`` on an open store connection (inside a merge's transaction, say)."""
    n = 0
    for (s,) in conn.execute("SELECT sequence FROM received WHERE origin = ? ORDER BY sequence", (origin,)):
        if s != n + 1:
            break
        n = s
    return n
