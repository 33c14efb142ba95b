"""The street office's store folder: keys, enrolled communities, the inbox.

    STORE/keyring.json      the office's secret keys, sealed (passphrase or key file)
    STORE/office.pub.json   the office public key, for every community
    STORE/store.db          the shared store (see store.py)
    STORE/inbox/            bundles received and verified, waiting to be merged
    STORE/quarantine/       refused bundle files, each with a .reason.json beside it

A bundle is received once: the same bytes again are "already have it"; other
bytes under a sequence number already received are a replay or a fork and
are refused. Nothing is written before the signature checks out against the
key enrolled for that community.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from . import bundle
from .crypto import Keyring, PublicKey, Secret
from .errors import SyncdbError
from .files import storage_error, write_atomic
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


def connect(store) -> sqlite3.Connection:
    path = Path(store) / "store.db"
    if not path.exists():
        raise SyncdbError(f"{store} is not an office store; create one with `syncdb office init {store}`")
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 30000")
    except sqlite3.Error as e:
        conn.close()
        raise storage_error(e, store) from None
    return conn


OFFICE_TABLES = """
CREATE TABLE IF NOT EXISTS communities (
    code TEXT PRIMARY KEY, public_key TEXT NOT NULL, key_id TEXT NOT NULL, enrolled TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS received (
    origin TEXT NOT NULL, sequence INTEGER NOT NULL, sha256 TEXT NOT NULL, file TEXT NOT NULL,
    received TEXT NOT NULL, PRIMARY KEY (origin, sequence));
"""


def init(store, secret: Secret, suite_name: str = "std", code: str = "office") -> Path:
    """Create the store folder and the office keys; return the public key file."""
    folder = Path(store)
    if keyring_path(folder).exists():
        raise SyncdbError(f"{folder} already holds an office store; nothing was changed")
    folder.mkdir(parents=True, exist_ok=True)
    for sub in (inbox_dir(folder), quarantine_dir(folder)):
        sub.mkdir(exist_ok=True)
    ring = Keyring.generate("office", code, suite_name)
    ring.save(keyring_path(folder), secret)
    write_atomic(public_key_path(folder), ring.public.to_json().encode())
    conn = sqlite3.connect(str(folder / "store.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(OFFICE_TABLES)
    conn.close()
    return public_key_path(folder)


def enroll(store, code: str, public_key_file) -> PublicKey:
    """Let the bundles signed by this community's key in."""
    try:
        VALIDATORS["community_code"](code)
    except Invalid as e:
        raise SyncdbError(f"community code {code!r}: {e}") from None
    if code == PublicKey.read(public_key_path(store)).code:
        raise SyncdbError(f"{code} is the office's own code; a community needs its own")
    key = PublicKey.read(public_key_file)
    if key.role != "community":
        raise SyncdbError(f"{public_key_file} is an {key.role} key; enrol the community's CODE.pub.json")
    if key.code != code:
        raise SyncdbError(f"{public_key_file} belongs to community {key.code}, not {code}; "
                          "check which file you copied")
    conn = connect(store)
    try:
        conn.execute("INSERT OR REPLACE INTO communities VALUES (?, ?, ?, ?)",
                     (code, key.to_json(), key.id, time.strftime("%Y-%m-%dT%H:%M:%S")))
    finally:
        conn.close()
    return key


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
    store = Path(store)
    conn = connect(store)
    try:
        keys = signer_keys(conn, PublicKey.read(public_key_path(store)))
        try:
            header = bundle.verify(io.BytesIO(data), keys.get)
        except bundle.BundleError as e:
            _refuse(store, data, None, e.reason, str(e), source)
        if header.kind != "changes":
            _refuse(store, data, header, "wrong-kind",
                    f"a '{header.kind}' bundle is for a community, not for the office", source)
        # One receiver at a time per store (serve and merge may both run): the
        # check, the inbox file and its record go together.
        try:
            conn.execute("BEGIN IMMEDIATE")
            receipt = keep(conn, store, data, header, source)
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


def keep(conn, store: Path, data: bytes, header, source: str) -> Receipt:
    """Put a verified bundle in the inbox and record it; the caller holds an IMMEDIATE transaction."""
    digest = hashlib.sha256(data).hexdigest()
    name = bundle.file_name(header.origin, header.sequence)
    seen = conn.execute("SELECT sha256 FROM received WHERE origin = ? AND sequence = ?",
                        (header.origin, header.sequence)).fetchone()
    if seen and seen[0] == digest:
        return Receipt(header.origin, header.sequence, "duplicate", inbox_dir(store) / name)
    if seen:
        _refuse(store, data, header, "replay",
                f"community {header.origin} already sent a different bundle numbered "
                f"{header.sequence}: this is a replay or a fork (two copies of the community "
                "folder pushing). Keep the community's outbox as it is and call the data administrator",
                source)
    path = write_atomic(inbox_dir(store) / name, data)
    # The bundle is on disk before it is acknowledged; only then is it recorded.
    conn.execute("INSERT INTO received VALUES (?, ?, ?, ?, ?)",
                 (header.origin, header.sequence, digest, name, time.strftime("%Y-%m-%dT%H:%M:%S")))
    return Receipt(header.origin, header.sequence, "accepted", path)


def _refuse(store, data, header, reason, message, source="upload"):
    """Quarantine the refused bytes with the reason beside them, then raise.

    The store database is not touched: the quarantine folder is the record.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S")
    origin = header.origin if header else "unknown"
    sequence = header.sequence if header else None
    name = f"{stamp}-{origin}-{sequence if sequence is not None else 'x'}-{hashlib.sha256(data).hexdigest()[:12]}"
    qdir = quarantine_dir(store)
    write_atomic(qdir / f"{name}.bundle", data)
    write_atomic(qdir / f"{name}.reason.json", json.dumps(
        {"reason": reason, "message": message, "source": source, "origin": origin, "sequence": sequence},
        ensure_ascii=False, indent=2).encode())
    raise Refused(message, reason)


def quarantine_copy(store, path: Path, error: bundle.BundleError) -> None:
    """Copy a damaged inbox bundle to quarantine with the reason beside it."""
    qdir = quarantine_dir(store)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    write_atomic(qdir / f"{stamp}-inbox-{path.name}", path.read_bytes())
    write_atomic(qdir / f"{stamp}-inbox-{path.name}.reason.json", json.dumps(
        {"reason": error.reason, "message": str(error), "source": f"inbox {path.name}"},
        ensure_ascii=False, indent=2).encode())


def receive_files(store, paths) -> list[tuple[Path, Receipt | Refused]]:
    """Receive bundle files or folders of them (a USB stick, a copied outbox)."""
    results = []
    for path in _bundle_files(paths):
        try:
            results.append((path, receive(store, path.read_bytes(), source=str(path))))
        except Refused as e:
            results.append((path, e))
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
        seqs = [s for (s,) in conn.execute(
            "SELECT sequence FROM received WHERE origin = ? ORDER BY sequence", (origin,))]
    finally:
        conn.close()
    n = 0
    for s in seqs:
        if s != n + 1:
            break
        n = s
    return n
