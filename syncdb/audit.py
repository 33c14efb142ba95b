"""The audit ledger: append-only, tamper-evident.

Every applied change and every resolution is recorded. The changes of one
bundle form one ledger entry (a block; a bundle of more than 10,000 changes
forms several): its columns say which bundle, from which community, how many
changes; its body is the zlib-compressed list of the changes — HLC, table,
blind key, operation, and the cells' old and new
versions. Each entry carries an HMAC, under a key derived from the office
keyring, over the previous entry's HMAC and its own content, and the chain's
head is sealed in ``ledger_head`` in the same transaction: editing, deleting
or reordering any entry by hand — the last one included — breaks the chain,
and ``syncdb audit verify`` names the first bad entry. The ledger's length
is anchored outside it too: every bundle in the ``applied`` table must have
its changes recorded, so deleting the whole ledger and its head together
fails verification as well. The ledger holds versions and blind indexes,
never a plaintext value.
"""

from __future__ import annotations

import json
import time
import zlib

import orjson

from .bundle import file_name, read_json_lines
from .chain import Chain, ChainGap, ChainMismatch, Head
from .errors import SyncdbError
from .i18n import _

COLUMNS = ("id", "at", "bundle", "origin", "changes", "body")

LEDGER_TABLES = """
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, bundle TEXT NOT NULL, origin TEXT NOT NULL,
    changes INTEGER NOT NULL, body BLOB NOT NULL, mac BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_by_time ON ledger (at);
CREATE TABLE IF NOT EXISTS ledger_head (
    one INTEGER PRIMARY KEY CHECK (one = 1), id INTEGER NOT NULL, mac BLOB NOT NULL, seal BLOB NOT NULL);
"""


def audit_key(store) -> bytes:
    return store.suite.derive(store.keyring.index_key, b"", b"syncdb audit ledger")


def ledger_chain(store) -> Chain:
    return Chain(store.suite, audit_key(store))


def _content(row: tuple) -> bytes:
    values = [bytes(v).hex() if isinstance(v, (bytes, memoryview)) else v for v in row]
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode()


class Ledger:
    """Records the changes of one bundle as blocks of at most BLOCK changes.

    Changes are compressed as they come, so memory stays small however large
    the bundle. Call ``commit`` inside the caller's transaction, so the blocks
    and the changes they record are stored together or not at all.
    """

    BLOCK = 10_000

    def __init__(self, store, bundle: str, origin: str):
        self.store, self.bundle, self.origin = store, bundle, origin
        self.chain = ledger_chain(store)
        self._start()

    def _start(self) -> None:
        self.compressor = zlib.compressobj(6)
        self.body = b""
        self.lines: list[bytes] = []
        self.count = 0

    def append(self, hlc: str, tbl: str, key: bytes, op: str, detail: dict) -> None:
        # orjson: the same compact JSON line as json.dumps(ensure_ascii=False), at a fraction of its cost.
        self.lines.append(orjson.dumps([hlc, tbl, key.hex(), op, detail]))
        self.count += 1
        if len(self.lines) >= 500:
            self._compress()
        if self.count >= self.BLOCK:
            self.commit()

    def _compress(self) -> None:
        self.lines.append(b"")
        self.body += self.compressor.compress(b"\n".join(self.lines))
        self.lines = []

    def commit(self) -> int | None:
        """Write the block collected so far (if any); return its entry id."""
        if not self.count:
            return None
        conn = self.store.conn
        last = conn.execute("SELECT id, mac FROM ledger ORDER BY id DESC LIMIT 1").fetchone()
        previous = Head(last[0], bytes(last[1])) if last else Head()
        if self.lines:
            self._compress()
        body = self.body + self.compressor.flush()
        row = (previous.id + 1, time.strftime("%Y-%m-%dT%H:%M:%S"), self.bundle, self.origin, self.count, body)
        head = self.chain.link(previous, _content(row))
        conn.execute("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?)", row + (head.mac,))
        conn.execute("INSERT OR REPLACE INTO ledger_head VALUES (1, ?, ?, ?)",
                     (head.id, head.mac, self.chain.seal(head)))
        self._start()
        return row[0]


def entry_count(store) -> int:
    """How many entries (blocks of changes) the ledger holds."""
    return store.conn.execute("SELECT count(*) FROM ledger").fetchone()[0]


def entries(body: bytes) -> list[dict]:
    """The changes recorded in one ledger entry's body."""
    return [dict(zip(FIELDS, line)) for line in lines(body)]


FIELDS = ("hlc", "table", "key", "op", "detail")  # a ledger line's, in its order


def lines(body: bytes) -> list[list]:
    """The changes recorded in one ledger entry's body, each as its line lists FIELDS (a reader of
    hundreds of thousands, ``Store.cells_changed_since``, makes no dict of each)."""
    return read_json_lines(zlib.decompress(bytes(body)))


def changes_after(store, at: str):
    """(origin, change) for every change recorded at or after ``at`` (a ledger time, %Y-%m-%dT%H:%M:%S)."""
    # The first entry at or after ``at`` by the index of times (store version 5), then the entries from it
    # on in their order: the dashboard's last weeks, never the years before them. A clock set back
    # leaves entries from there on earlier than ``at``; the second test leaves them out.
    for origin, body in store.conn.execute(
            "SELECT origin, body FROM ledger WHERE id >= (SELECT min(+id) FROM ledger WHERE at >= ?) AND at >= ? "
            "ORDER BY id", (at, at)):
        for change in entries(body):
            yield origin, change


def verify(store) -> int:
    """Walk the chain; return the number of changes recorded, or raise naming the first bad entry."""
    chain = ledger_chain(store)
    head = Head()
    changes = 0
    recorded: dict[str, int] = {}  # bundle -> changes the ledger records for it
    cursor = store.conn.execute(f"SELECT {', '.join(COLUMNS)}, mac FROM ledger ORDER BY id")
    for *row, mac in cursor:
        try:
            head = chain.follow(head, row[0], _content(tuple(row)), mac)
        except ChainGap as gap:
            raise SyncdbError(_("audit ledger entry {expected} is missing (the next entry is {found}): "
                                "entries were deleted by hand").format(expected=gap.expected, found=gap.found)) from None
        except ChainMismatch:
            raise SyncdbError(_("audit ledger entry {id} (bundle {bundle} from {code}) does not match "
                                "its seal: it was edited, reordered or replaced by hand").format(
                id=row[0], bundle=row[2], code=row[3])) from None
        try:
            if len(entries(row[5])) != row[4]:
                raise ValueError
        except (zlib.error, ValueError, UnicodeDecodeError):
            raise SyncdbError(_("audit ledger entry {id} (bundle {bundle}) has a damaged body").format(
                id=row[0], bundle=row[2])) from None
        changes += row[4]
        recorded[row[2]] = recorded.get(row[2], 0) + row[4]
    stored = store.conn.execute("SELECT id, mac, seal FROM ledger_head").fetchone()
    if stored is None:
        if head.id:
            raise SyncdbError(_("the audit ledger's sealed head is missing: it was deleted by hand"))
    else:
        sealed = Head(stored[0], bytes(stored[1]))
        if not chain.sealed(sealed, stored[2]):
            raise SyncdbError(_("the audit ledger's sealed head was edited by hand"))
        if sealed != head:
            raise SyncdbError(_("audit ledger entries after entry {id} are missing "
                                "(the sealed head says the last is {last}): they were deleted by hand").format(
                id=head.id, last=sealed.id))
    _check_anchors(store, recorded)
    return changes


def _check_anchors(store, recorded: dict[str, int]) -> None:
    """The ledger against what the store says it applied: a ledger emptied with its head still fails."""
    conn = store.conn
    for origin, sequence, count, name in conn.execute(
            "SELECT a.origin, a.sequence, a.changes, r.file FROM applied a "
            "LEFT JOIN received r ON r.origin = a.origin AND r.sequence = a.sequence "
            "WHERE a.changes > 0 ORDER BY a.applied, a.origin, a.sequence"):
        name = name or file_name(origin, sequence)
        if recorded.get(name, 0) != count:
            raise SyncdbError(_("the audit ledger records {recorded} of the {count} changes the store "
                                "applied from bundle {sequence} of {code}: ledger entries were deleted or "
                                "replaced by hand; restore the store folder from a backup").format(
                recorded=recorded.get(name, 0), count=count, sequence=sequence, code=origin))
    if not recorded:
        for table in store.tables.values():
            name = f"{table.domain}__{table.name}"
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
                    and conn.execute(f"SELECT 1 FROM [{name}] LIMIT 1").fetchone():
                raise SyncdbError(_("the store holds records in {table} but the audit ledger is empty: "
                                    "the ledger was deleted by hand; restore the store folder from a backup").format(
                    table=table.qualified))
