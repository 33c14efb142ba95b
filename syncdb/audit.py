"""The audit ledger: append-only, tamper-evident.

Every applied change and every resolution is one ledger row. Each row carries
an HMAC, under a key derived from the office keyring, over the previous row's
HMAC and its own content: editing, deleting or reordering a row by hand breaks
the chain from there on, and ``syncdb audit verify`` names the first bad row.
The ledger holds versions and blind indexes, never a plaintext value.
"""

from __future__ import annotations

import json
import time

from .errors import SyncdbError

GENESIS = b"\x00" * 32
COLUMNS = ("id", "at", "bundle", "origin", "hlc", "tbl", "key", "op", "detail")


def audit_key(store) -> bytes:
    return store.suite.derive(store.keyring.index_key, b"", b"syncdb audit ledger")


def _content(row: tuple) -> bytes:
    values = [bytes(v).hex() if isinstance(v, (bytes, memoryview)) else v for v in row]
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode()


class Ledger:
    """Appends to the ledger inside the caller's transaction."""

    def __init__(self, store):
        self.store = store
        self.key = audit_key(store)
        self._last = None

    def _previous(self) -> tuple[int, bytes]:
        if self._last is None:
            row = self.store.conn.execute("SELECT id, mac FROM ledger ORDER BY id DESC LIMIT 1").fetchone()
            self._last = (row[0], bytes(row[1])) if row else (0, GENESIS)
        return self._last

    def reset(self) -> None:
        """Forget the cached chain head (after a rollback)."""
        self._last = None

    def append(self, bundle: str, origin: str, hlc: str, tbl: str, key: bytes, op: str, detail: dict) -> None:
        last_id, last_mac = self._previous()
        row = (last_id + 1, time.strftime("%Y-%m-%dT%H:%M:%S"), bundle, origin, hlc, tbl, key, op,
               json.dumps(detail, ensure_ascii=False, separators=(",", ":"), sort_keys=True))
        mac = self.store.suite.mac(self.key, last_mac + _content(row))
        self.store.conn.execute("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row + (mac,))
        self._last = (row[0], mac)


def verify(store) -> int:
    """Walk the chain; return the number of entries, or raise naming the first bad one."""
    key = audit_key(store)
    previous_mac, expected_id = GENESIS, 1
    count = 0
    cursor = store.conn.execute(f"SELECT {', '.join(COLUMNS)}, mac FROM ledger ORDER BY id")
    for *row, mac in cursor:
        if row[0] != expected_id:
            raise SyncdbError(f"audit ledger entry {expected_id} is missing (the next entry is {row[0]}): "
                              "entries were deleted by hand")
        if store.suite.mac(key, previous_mac + _content(tuple(row))) != bytes(mac):
            raise SyncdbError(f"audit ledger entry {row[0]} (bundle {row[2]}, {row[5]}) does not match its "
                              "seal: it was edited, reordered or replaced by hand")
        previous_mac, expected_id = bytes(mac), expected_id + 1
        count += 1
    return count
