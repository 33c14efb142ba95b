"""HMAC chains: the tamper evidence shared by every append-only log at the office.

A log's entries are numbered 1, 2, 3…; each carries a MAC, under a key of its
own log, over the previous entry's MAC (32 zero bytes before the first) and
its own content. A sealed head (the last entry's number and MAC, MACed again)
kept beside the log catches what the chain alone cannot: entries cut off at
the end. Editing, deleting, reordering or replacing any entry breaks the chain
from that entry on.

Used by the audit ledger in store.db (audit.py), and by the page-view log and
the sign-in lock-out log in publish.db (publishdb.py, signin.py). Each log
says how its entries' content is written: the bytes must never change for
entries already written.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from .crypto import Suite
from .i18n import _

GENESIS = b"\x00" * 32


@dataclass(frozen=True)
class Head:
    """Where a chain ends: the last entry's number and MAC (0 and GENESIS for an empty chain)."""

    id: int = 0
    mac: bytes = GENESIS


class ChainGap(Exception):
    """An entry's number is not the one after the previous entry's."""

    def __init__(self, expected: int, found: int):
        super().__init__(_("entry {expected} missing (the next entry is {found})").format(expected=expected, found=found))
        self.expected, self.found = expected, found


class ChainMismatch(Exception):
    """An entry's MAC is not the one its content and the previous MAC give."""

    def __init__(self, entry: int):
        super().__init__(_("entry {entry} does not match its MAC").format(entry=entry))
        self.entry = entry


class Chain:
    """One log's chain: its key, and how an entry links to the one before."""

    def __init__(self, suite: Suite, key: bytes):
        self.suite, self.key = suite, key

    def link(self, head: Head, content: bytes) -> Head:
        """The head once an entry with this content follows ``head``."""
        return Head(head.id + 1, self.suite.mac(self.key, head.mac + content))

    def follow(self, head: Head, entry_id: int, content: bytes, mac: bytes) -> Head:
        """Check one stored entry against the head before it; the new head, or ChainGap / ChainMismatch."""
        if entry_id != head.id + 1:
            raise ChainGap(head.id + 1, entry_id)
        after = self.link(head, content)
        if not hmac.compare_digest(after.mac, bytes(mac)):
            raise ChainMismatch(entry_id)
        return after

    def seal(self, head: Head) -> bytes:
        """The seal kept with the head, so that cutting entries off the end shows."""
        return self.suite.mac(self.key, b"head|" + str(head.id).encode() + b"|" + head.mac)

    def sealed(self, head: Head, seal: bytes) -> bool:
        return hmac.compare_digest(self.seal(head), bytes(seal))
