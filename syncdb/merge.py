"""The merge engine: apply bundles from the inbox to the shared store.

Per cell, the store keeps its *frontier*: the versions no received change has
named as its base. A change whose base is the cell's one current version
replaces it (a clean apply). Otherwise the frontier holds several concurrent
versions — a conflict — and a policy picks the provisional winner from that
set. The frontier is "every version received, less every version some change
was based on", so it, the winners and the open conflicts are the same in
whatever order the bundles arrive. A base not yet seen is remembered in
``dominated`` so that version, arriving later, does not come back.

Each bundle is applied in one transaction together with its line in the
``applied`` ledger: applied once, or not at all.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from . import audit, bundle, checks, conflicts, limits, migrations, office, outbound
from .crypto import Secret
from .errors import SyncdbError
from .files import is_disk_full, storage_error
from .i18n import _
from .plugins import manager
from .hlc import pack_row_versions
from .rules import Candidate, Decision, latest
from .schema import Domain, Table
from .row import Holders, Row, origin_of
from .masks import mask
from .prepare import Context, Prepared, Preparer, Workers, WorkersFailed, default_jobs, refusal, unkeepable
from .store import Store, table_name, write_columns
from .validate import Problem


@dataclass
class Summary:
    received: int = 0
    duplicates: int = 0
    refused: list = field(default_factory=list)  # (file, message)
    applied: int = 0  # bundles
    held: list = field(default_factory=list)  # (bundle name, why it waits)
    blocked: list = field(default_factory=list)  # names of the held that wait for a person, not a bundle
    changes: int = 0
    rejected: list = field(default_factory=list)  # printable lines
    opened: int = 0
    closed: int = 0
    sent_back: dict = field(default_factory=dict)  # community -> resolutions bundle made for it
    set_aside: list = field(default_factory=list)  # printable lines: changes to records another community holds
    checked: list = field(default_factory=list)  # printable lines: the cross-domain checks run after it (checks.py)

    def lines(self) -> list[str]:
        out = [_("bundles: {received} received, {duplicates} already held, {refused} refused, "
                 "{applied} applied, {held} held").format(
                   received=self.received, duplicates=self.duplicates, refused=len(self.refused),
                   applied=self.applied, held=len(self.held)),
               _("changes: {applied} applied, {rejected} rejected record(s)").format(
                   applied=self.changes, rejected=len(self.rejected)),
               _("conflicts: {opened} opened, {closed} closed").format(opened=self.opened, closed=self.closed)]
        out += [_("refused {name}: {why}").format(name=name, why=why) for name, why in self.refused]
        out += [_("held {name}: {why}").format(name=name, why=why) for name, why in self.held]
        out += [_("rejected {line}").format(line=line) for line in self.rejected]
        out += [_("set aside {line}").format(line=line) for line in self.set_aside]
        out += self.checked
        return out


def merge(store_dir, paths, secret: Secret, domains: dict[str, Domain], progress=None,
          jobs: int | None = 1) -> Summary:
    """Receive bundle files or folders (if any) into the inbox, then apply all that can be.

    ``jobs``: processes preparing the changes (reading, validating, sealing: prepare.py) beside
    this one, which alone writes the store; 1 for none, None for the cores available
    (prepare.default_jobs). The changes are applied in the bundle's order whoever prepared
    them, so the store ends the same whatever the number.
    """
    summary = Summary()
    # Unlock the keyring first: a wrong passphrase or key file must change nothing,
    # not even take the bundles into the inbox.
    with migrations.open_upgraded(store_dir, secret, domains) as store:
        for path, outcome in office.receive_files(store_dir, paths):
            if isinstance(outcome, office.Refused):
                summary.refused.append((path.name, str(outcome)))
            elif outcome.status == "duplicate":
                summary.duplicates += 1
            else:
                summary.received += 1
        apply_inbox(store, Path(store_dir), summary, progress, jobs=jobs)
        # Cross-domain checks on what changed, after the bundles' transactions: they never fail the merge.
        summary.checked = checks.after_merge(store)
        # A USB-only community learns what the office holds from its next pull of this folder.
        outbound.write_acknowledgements(store, store_dir)
    outbound.finish(store_dir)  # resolutions queued by a run that stopped before naming them
    return summary


def apply_inbox(store: Store, store_dir: Path, summary: Summary, progress=None, jobs: int | None = 1) -> Summary:
    """Apply every inbox bundle whose predecessors are applied; hold the others.

    Each bundle file is opened, and its header parsed, once. ``jobs`` as for ``merge``.
    """
    workers = _Pool(store, default_jobs() if jobs is None else jobs)
    try:
        return _apply_inbox(store, store_dir, summary, progress, workers)
    finally:
        workers.close()


class _Pool:
    """The worker processes of one merge, started at the first bundle that has enough changes for them."""

    SMALL = 1_000  # changes: a bundle this small is prepared here (starting workers costs more)

    def __init__(self, store: Store, jobs: int):
        self.store, self.jobs, self.workers = store, jobs, None

    def get(self, changes: int) -> Workers | None:
        if self.jobs <= 1 or changes < self.SMALL:
            return None
        if self.workers is None:
            self.workers = Workers(self.jobs, self.store.keyring, self.store.domains, self.store.seals.row_columns)
        return self.workers

    def close(self) -> None:
        if self.workers is not None:
            self.workers.close()


def _apply_inbox(store: Store, store_dir: Path, summary: Summary, progress, pool: _Pool) -> Summary:
    conn = store.conn
    # Progress counts changes, as the headers said on receipt: one bundle can hold a whole community.
    last, queues = office.not_applied(conn, "sequence, file, coalesce(changes, 0)")
    waiting = {origin: [(sequence, name) for sequence, name, _changes in queue] for origin, queue in queues.items()}
    sizes = {name: changes for queue in queues.values() for _sequence, name, changes in queue}
    total = sum(sizes.values())
    done = 0

    def hold(queue, sequence, why: str, waiting: bool = False):
        """Hold this bundle of the queue and every later one, saying why (the later ones: behind it)."""
        nonlocal total
        why = bundle.utf8(why)  # it may quote a change's table or op, which a hostile line spells with a lone surrogate
        for s, n in queue:
            if s >= sequence:
                summary.held.append((n, why if s == sequence or waiting else
                                     _("waiting behind bundle {sequence} from {code}, which is held").format(
                                         sequence=sequence, code=origin)))
                total -= sizes[n]
        if not waiting:
            summary.blocked.append(dict(queue)[sequence])

    for origin, queue in sorted(waiting.items()):
        for sequence, name in queue:
            expected = last.get(origin, 0) + 1
            if sequence != expected:
                hold(queue, sequence, _("waiting for bundle {sequence} from {code}").format(
                    sequence=expected, code=origin), waiting=True)
                break
            path = office.inbox_dir(store_dir) / name

            def on_batch(n, name=name, before=done):
                if progress:
                    progress(before + n, total, name)
            reader = None
            try:
                reader = bundle.Reader(path)
                mismatch = bundle.schema_mismatch(store.domains, reader.header)
                if mismatch:
                    # Kept in the inbox, applied by the first merge after the schemas agree.
                    hold(queue, sequence, mismatch)
                    break
                apply_bundle(store, reader, summary, on_batch, store_dir, pool.get(sizes[name]))
            except WorkersFailed as e:
                # Not the bundle's fault: the merge stops, and the same command merges it again.
                raise SyncdbError(_("a worker process of the merge stopped ({problem}) while merging {name}; "
                                    "nothing of that bundle was applied and it waits in the inbox with the "
                                    "ones after it. Run `syncdb merge {store}` again; if it happens again, "
                                    "run it with --jobs 1 and see the office log").format(
                                      problem=e, name=name, store=store_dir)) from None
            except bundle.BundleError as e:
                # Nothing of it is applied; the other communities go on.
                if reader is not None and _still_signed(store, reader):
                    # As its community signed it, yet it cannot be applied (taken in by an older
                    # syncdb, or under caps the office has lowered since): held, never guessed at.
                    hold(queue, sequence, _("it cannot be applied as community {code} made it ({problem}); "
                                            "nothing of it was applied, and its later bundles wait behind it").format(
                                              code=origin, problem=e))
                    break
                # Verified when it arrived, so the office's own copy was damaged since.
                office.quarantine_copy(store_dir, path, e)
                summary.refused.append((name, _("the inbox copy no longer verifies ({problem}); it is kept in "
                                                "the inbox and copied to quarantine: restore it from a "
                                                "backup of the store folder, then merge again").format(problem=e)))
                total -= sizes[name]
                break
            except Exception as e:
                if isinstance(e, (OSError, sqlite3.Error)) and is_disk_full(e, store_dir):
                    # Every other bundle would fail the same way: stop here.
                    raise storage_error(e, store_dir, then=_(
                        "run `syncdb merge {store}` again (merging {name} stopped, nothing of it was applied, "
                        "and the bundles wait in the inbox)").format(store=store_dir, name=name)) from None
                # A fault in a rule or plugin holds this community's queue, not everybody's.
                hold(queue, sequence, _("merging it failed ({kind}: {problem}); nothing of it was applied. "
                                        "Fix the cause (see the office log) and merge again").format(
                                          kind=type(e).__name__, problem=e))
                break
            finally:
                if reader is not None:
                    reader.close()
            last[origin] = sequence
            done += sizes[name]
            if progress:
                progress(done, total, name)
    return summary


def _still_signed(store: Store, reader: bundle.Reader) -> bool:
    try:
        reader.verify(office.signer_keys(store.conn, store.keyring.public).get)
        return True
    except (bundle.BundleError, SyncdbError):
        return False


def _without_sensitive(why: str, table: Table, record: dict) -> str:
    """A validator may quote the bad value; never keep a sensitive one in the clear."""
    for col in table.sensitive_columns:
        value = record.get(col)
        if value not in (None, ""):
            for shown in (repr(value), json.dumps(value, ensure_ascii=False), str(value)):
                why = why.replace(shown, repr(mask(value)))
    return why


def apply_bundle(store: Store, reader: bundle.Reader, summary: Summary, on_batch=None, store_dir=None,
                 workers: Workers | None = None) -> None:
    """Apply one bundle in one transaction; ``on_batch(n)`` is told the changes done so far.
    ``workers``: the processes that prepare its changes, if any (prepare.py)."""
    path = reader.path
    store_dir = Path(store_dir) if store_dir is not None else path.parent.parent  # STORE/inbox/NAME
    header = reader.verify(office.signer_keys(store.conn, store.keyring.public).get)
    with store.bundle_cache(), store.transaction() as conn:
        if office.settled_in(conn, header.origin) >= header.sequence:
            return  # another merge (serve's, or a second `syncdb merge`) applied it meanwhile
        caps = limits.load(store_dir)
        if workers is not None and header.origin != store.office_code:
            changes = partial(workers.prepared, reader, store.keyring, caps)
        else:
            changes = reader.changes(store.keyring, caps)
        outcome = apply_changes(store, header, path.name, changes, store_dir, on_batch, caps)
    outcome.report(summary, store_dir)


@dataclass
class Applied:
    """What applying one bundle did, for the run's Summary once its transaction is committed."""
    merger: "_Merger"
    sent: dict  # community -> bundle made for it

    def report(self, summary: Summary, store_dir: Path) -> None:
        if self.sent:
            outbound.finish(store_dir)
            summary.sent_back.update(self.sent)
        merger = self.merger
        summary.applied += 1
        summary.changes += merger.changes
        summary.rejected += merger.rejected
        summary.opened += merger.opened
        summary.closed += merger.closed
        summary.set_aside += merger.set_aside


def apply_changes(store: Store, header: bundle.Header, name: str, changes, store_dir: Path, on_batch=None,
                  caps: limits.Limits | None = None) -> Applied:
    """Apply a verified bundle's changes, inside the caller's transaction: the engine's one way in,
    for the inbox's bundles and for the office's own edits made in this process (resolve.py).

    ``changes``: the change dicts, or for a community's bundle a callable that, given the
    bundle's prepare.Context, yields them prepared by worker processes (Workers.prepared).
    """
    conn = store.conn
    caps = caps or limits.load(store_dir)
    ledger = audit.Ledger(store, name, header.origin)
    (floor,) = conn.execute("SELECT coalesce(max(hlc), '') FROM origin_clock WHERE origin = ?",
                            (header.origin,)).fetchone()
    merger = _Merger(store, ledger, name, header.origin, header.sequence, on_batch,
                     floor=floor, relayed=bool(header.fields.get("relay")), max_value=caps.max_value)
    sent = {}
    if header.origin == store.office_code:
        # An office resolution or edit (a few changes): it also goes to the communities
        # that own the records, recorded in this same transaction so none is ever lost.
        changes = list(changes)
        owners = [outbound.owner_of(store, store.table(c["table"]), c) for c in changes]
        merger.apply_all(changes)
        sent = outbound.send_back(store, store_dir, changes, owners, merger.rejected_keys)
    elif callable(changes):
        merger.apply_all(changes(merger.ctx), prepared=True)
        if merger.lost:
            sent = outbound.send_to(store, store_dir, header.origin, merger.lost)
    else:
        merger.apply_all(changes)
        if merger.lost:
            sent = outbound.send_to(store, store_dir, header.origin, merger.lost)
    ledger.commit()
    if merger.last_hlc > floor:
        conn.execute("INSERT OR REPLACE INTO origin_clock VALUES (?, ?)", (header.origin, merger.last_hlc))
    (digest,) = conn.execute("SELECT sha256 FROM received WHERE origin = ? AND sequence = ?",
                             (header.origin, header.sequence)).fetchone()
    conn.execute("INSERT INTO applied VALUES (?, ?, ?, ?, ?, ?)", (
        header.origin, header.sequence, digest, time.strftime("%Y-%m-%dT%H:%M:%S"),
        merger.changes, merger.rejected_count))
    return Applied(merger, sent)


def _upsert_sql(table: Table, cols: list[str]) -> str:
    """Write whole rows of a record table: new ones appended, stored ones updated where they are."""
    names = ", ".join(f"[{c}]" for c in cols)
    sets = ", ".join(f"[{c}] = excluded.[{c}]" for c in cols if c != "_key")
    return (f"INSERT INTO [{table_name(table)}] ({names}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT ([_key]) DO UPDATE SET {sets}")


class _Special(set):
    """The records with conflict state, looked up one by one: an office edit touches a few records,
    and reading every such record of the store for each would make `conflicts review` quadratic."""

    def __init__(self, store: Store):
        super().__init__()
        self.store = store

    def __contains__(self, item) -> bool:
        if set.__contains__(self, item):
            return True
        tbl, key = item
        conn = self.store.conn
        return bool(conn.execute("SELECT 1 FROM frontier WHERE tbl = ? AND key = ? LIMIT 1", item).fetchone()
                    or conn.execute("SELECT 1 FROM dominated WHERE tbl = ? AND key = ? LIMIT 1", item).fetchone()
                    or conflicts.open_columns(self.store, tbl, key))


class _New:
    """_Merger._check: a record the store has never seen, for the short path (with its row if prepared)."""

    __slots__ = ("row",)

    def __init__(self, row: dict | None):
        self.row = row


MAX_REJECTED = 1_000  # rejected records kept in detail per bundle; the rest are counted
MAX_WHY = 300  # characters of one rejection's reason


class _Merger:
    BATCH = 500

    def __init__(self, store: Store, ledger: audit.Ledger, bundle_name: str, origin: str, sequence: int,
                 on_batch=None, floor: str = "", relayed: bool = False, max_value: int = limits.DEFAULT.max_value,
                 preparer: Preparer | None = None):
        """``floor``: the origin's latest stamp applied before; ``relayed``: the bundle names a relay."""
        self.store, self.ledger, self.on_batch = store, ledger, on_batch
        self.seen = 0
        self.bundle_name, self.origin, self.sequence = bundle_name, origin, sequence
        self.from_office = origin == store.office_code
        self.floor, self.relayed, self.max_value = floor, relayed, max_value
        self.last_hlc = floor
        self.set_aside: list[str] = []
        self.hook = manager().hook
        # Rows with conflict state are few; only they need the side tables read. A community's bundle
        # learns which of a batch's records have any as it reads their rows (_apply_batch): the side
        # tables keep versions set aside for good, and reading them whole for each bundle made a
        # night's merge grow with the years (bench/years.py).
        self.special = _Special(store) if self.from_office else conflicts.open_records(store)
        self.sides: dict[str, list[str]] = {}  # table -> the side tables holding any of its records (_sides)
        self.ctx = Context(origin, store.office_code, floor, relayed, max_value)
        self.preparer = preparer or Preparer(store.seals, store.domains)
        self.changes = 0
        self.rejected: list[str] = []
        self.rejected_count = 0
        self.rejected_keys: set = set()  # (table, blind key) of records rejected here
        self.lost: list[dict] = []  # cells where this community's value lost to the office's, as changes
        self.opened = self.closed = 0
        self.rows: dict = {}  # (table, key) -> the stored row, for the batch being applied
        self.pending: dict = {}  # table -> key -> the row to write at the end of the batch

    def apply_all(self, changes, prepared: bool = False) -> None:
        """Apply changes in order, in batches: rows are read and written per batch. With ``prepared``,
        each change comes as (change, Prepared or None), made ready by worker processes (prepare.py)."""
        self.prepared = prepared
        batch = []
        for change in changes:
            batch.append(change)
            if len(batch) >= self.BATCH:
                self._apply_batch(batch)
                batch = []
        if batch:
            self._apply_batch(batch)
        more = self.rejected_count - MAX_REJECTED
        if more > 0:
            line = _("{n:,} more record(s) rejected that are not listed one by one").format(n=more)
            self.rejected.append(f"{self.origin} / - / - / - / {line}")
            self.store.conn.execute(
                "INSERT INTO rejected (origin, sequence, tbl, key, shown_key, field, why, at) "
                "VALUES (?, ?, '-', X'', '-', '-', ?, ?)",
                (self.origin, self.sequence, line, time.strftime("%Y-%m-%dT%H:%M:%S")))

    def _apply_batch(self, batch: list[dict]) -> None:
        store, preparer, ctx = self.store, self.preparer, self.ctx
        prepared = []
        wanted: dict[str, set] = {}
        for change in batch:
            if self.prepared:
                change, ready = change
            else:
                ready = preparer.prepare(change, ctx)
            table = store.table(change["table"])
            key_values = [change["key"].get(k) for k in table.key]
            key = ready.key if ready is not None else store.blind_key(table, key_values)
            prepared.append((change, table, key_values, key, ready))
            wanted.setdefault(table.qualified, set()).add(key)
            if change["op"] == bundle.REKEY:
                wanted[table.qualified].add(store.blind_key(table, [change["new_key"].get(k) for k in table.key]))
        # The batch's rows, read at once; a write updates this copy and waits for _flush.
        self.rows = {}
        for qualified, keys in wanted.items():
            name = table_name(store.tables[qualified])
            keys = list(keys)
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                cursor = store.conn.execute(
                    f"SELECT * FROM [{name}] WHERE _key IN ({', '.join('?' * len(part))})", part)
                names = [d[0] for d in cursor.description]
                table = store.tables[qualified]
                for found in cursor:
                    stored = store.plain_row(table, dict(zip(names, found)), with_seal=True)
                    self.rows[qualified, stored["_key"]] = stored
                if not self.from_office:
                    # One statement per side table: both in one would pass 1,002 parameters, and SQLite
                    # before 3.32 allows 999 in a statement.
                    marks = ", ".join("?" * len(part))
                    for side in self._sides(qualified):
                        self.special.update((qualified, bytes(k)) for (k,) in store.conn.execute(
                            f"SELECT DISTINCT key FROM {side} WHERE tbl = ? AND key IN ({marks})",
                            [qualified, *part]))
        for change, table, key_values, key, ready in prepared:
            self.apply(change, table, key_values, key, ready)
        self._flush()
        self.seen += len(batch)
        if self.on_batch:
            self.on_batch(self.seen)

    def _sides(self, qualified: str) -> list[str]:
        """The side tables (frontier, dominated) that held any record of this table before the bundle's
        first batch of it: a store without conflicts (most tables of most stores) then costs no look-up a
        batch, 1.4 ms for 500 records. A record the bundle sets aside is in ``special`` from then on."""
        if qualified not in self.sides:
            self.sides[qualified] = [side for side in ("frontier", "dominated") if self.store.conn.execute(
                f"SELECT 1 FROM {side} WHERE tbl = ? LIMIT 1", (qualified,)).fetchone()]
        return self.sides[qualified]

    def _flush(self) -> None:
        seal_row = self.store.seals.seal_row
        for qualified, rows in self.pending.items():
            table = self.store.tables[qualified]
            cols = write_columns(table)
            for key, row in rows.items():
                if "_sealed" not in row:  # its sensitive values changed (or it is new): sealed once, here
                    row["_sealed"] = seal_row(table, row, key)
            # An upsert keeps a stored record's rowid (INSERT OR REPLACE would delete it and append
            # it anew); in key order, each index page the batch touches is visited once.
            self.store.conn.executemany(_upsert_sql(table, cols),
                                        [[rows[k].get(c) for c in cols] for k in sorted(rows)])
        self.pending = {}

    def apply(self, change: dict, table: Table, key_values: list, key: bytes, ready: Prepared | None = None) -> None:
        if change["op"] == bundle.REKEY:
            return self._rekey(change, table, key_values, key)
        checked = self._check(change, table, key_values, key, ready)
        if isinstance(checked, list):
            return self._reject(table, key, key_values, change, checked)
        self._apply(change, table, key_values, key, checked)

    def _rekey(self, change: dict, table: Table, key_values: list, key: bytes) -> None:
        """A corrected natural key: the old record's delete and the new record's insert, both or neither,
        so a typo in the new key never costs the office the resident meanwhile."""
        new_values = [change["new_key"].get(k) for k in table.key]
        new_key = self.store.blind_key(table, new_values)
        gone = {k: v for k, v in change.items() if k != "new_key"} | {"op": "delete", "cells": {}}
        came = {k: v for k, v in change.items() if k != "new_key"} | {
            "op": "insert", "key": change["new_key"], "base": {}}
        first = self._check(gone, table, key_values, key)
        second = self._check(came, table, new_values, new_key)
        problems = [p for checked in (first, second) if isinstance(checked, list) for p in checked]
        if problems:
            return self._reject(table, key, key_values, change, problems)
        self._apply(gone, table, key_values, key, first)
        self._apply(came, table, new_values, new_key, second)

    def _check(self, change: dict, table: Table, key_values: list, key: bytes, ready: Prepared | None = None):
        """The problems that refuse this change (a list), or what to apply it to: the stored
        row, or a _New for a record the store has never seen. ``ready``: the change prepared."""
        if ready is not None and ready.problems is not None:
            if ready.problems:
                return ready.problems
        else:
            if not self.from_office:
                refused = self._refusal(table, change)
                if refused:
                    return [Problem("error", refused[0], refused[1])]
            problems = self._problems(table, change)
            if problems:
                return problems
        stored = self.rows.get((table.qualified, key))
        if stored is None and change["op"] == "insert" and not change.get("base") \
                and (table.qualified, key) not in self.special:
            return _New(ready.row if ready is not None else None)
        row = Row(self.store, table, key, (table.qualified, key) in self.special, stored)
        row.key_values = key_values
        return row

    def _apply(self, change: dict, table: Table, key_values: list, key: bytes, row) -> None:
        self.last_hlc = max(self.last_hlc, change["hlc"])
        if isinstance(row, _New):
            return self._insert_new(table, key, key_values, change, row.row)
        hlc = change["hlc"]
        origin = origin_of(hlc)
        op = change["op"]
        base = change.get("base") or {}
        # An update of a record the office has no trace of builds nothing anyone sees (the rest
        # of the record would be empty): its versions are kept aside until the record arrives.
        row.blank = op == "update" and not row.exists and not row.versions
        old = dict(row.versions)
        non_key = table.non_key
        if not self.from_office and any(origin_of(v) == self.store.office_code for v in base.values()):
            # Who held the record before this change: only they may build on the office's versions
            # (a rival claimant in a duplicate registration may not, or the office's word would go).
            row.claimants_before = {row.holding().holder} - {None}
            row._holding = None  # worked out again once this change's versions are offered
        if op == "update":
            for col, value in change["cells"].items():
                if col in table.columns and col not in table.key:
                    row.offer(col, Candidate(value, hlc, origin), base.get(col))
        else:
            deleted = op == "delete"
            for col in non_key:
                value = None if deleted else change["cells"].get(col)
                row.offer(col, Candidate(value, hlc, origin, deleted), base.get(col))
        self._resolve(row, hlc)
        holding = row._holding
        if not self.from_office and (holding.holder is not None or row.blank) and self.origin not in holding.eligible:
            self.set_aside.append(f"{self.origin} / {table.qualified} / {self._shown(table, key_values)} / "
                                  + _("the record is held by {holder}: this community's version is kept aside "
                                      "and not shown").format(holder=holding.holder or _("nobody")))
        versions = self._write(row, key_values)
        # Compact: the cells the change moved; their old versions where they had one; and
        # the resulting version only where it is not this change's own stamp. Moved: the cells it
        # carried, and those whose winner changed with them (a claim withdrawn hands the record, and
        # the versions kept aside of its other cells, to another community; a plugin's rule may read
        # across the row). The checks after a merge look again only at cells the ledger names.
        moved = row.touched | {c for c in non_key if versions.get(c) != old.get(c)}
        detail = {"cells": sorted(moved)}
        olds = {c: old[c] for c in detail["cells"] if old.get(c)}
        kept = {c: row.winners[c].version for c in detail["cells"]
                if c in row.winners and row.winners[c].version != hlc}
        if olds:
            detail["old"] = olds
        if kept:
            detail["kept"] = kept
        self.ledger.append(hlc, table.qualified, key, op, detail)
        self.changes += 1

    def _insert_new(self, table: Table, key: bytes, key_values: list, change: dict, values: dict | None) -> None:
        """A record the store has never seen, with no conflict state: the common case, made short.

        The same result as the general path: every cell's frontier is this
        change's one version, so it wins, nothing is queued and no rule is asked.
        ``values``: its row, if prepared (Preparer.new_row).
        """
        if values is None:
            values = self.preparer.new_row(table, key, key_values, change)
        self.rows[table.qualified, key] = values
        self.pending.setdefault(table.qualified, {})[key] = values
        self.ledger.append(change["hlc"], table.qualified, key, "insert", {"cells": sorted(table.non_key)})
        self.changes += 1

    def _refusal(self, table: Table, change: dict) -> tuple[str, str] | None:
        """(field, why) when a community may not make this change at all, else None (prepare.refusal)."""
        return refusal(table, change, self.ctx)

    def _shown(self, table: Table, key_values: list) -> str:
        return bundle.utf8("/".join(mask(v) if table.columns[k].sensitive else str(v)
                              for k, v in zip(table.key, key_values)))

    def _reject(self, table: Table, key: bytes, key_values: list, change: dict, problems) -> None:
        self.rejected_keys.add((table.qualified, key))
        self.rejected_count += 1
        if self.rejected_count > MAX_REJECTED:
            return  # counted, and named once at the end of the bundle (_Merger.finish)
        shown = self._shown(table, key_values)
        records = [dict(change["key"], **change["cells"])]
        if "new_key" in change:
            new_values = [change["new_key"].get(k) for k in table.key]
            shown += " -> " + self._shown(table, new_values)
            records.append(dict(change["new_key"], **change["cells"]))
        for p in problems:
            why = p.why
            for record in records:
                why = _without_sensitive(why, table, record)
            if len(why) > MAX_WHY:
                # A validator may quote a value of up to max_value bytes: the record is named, not copied.
                why = why[:MAX_WHY] + "…"
            # A refusal may quote a community code or a name of the change, which may hold a lone surrogate.
            why, name = bundle.utf8(why), bundle.utf8(p.field)
            self.rejected.append(f"{self.origin} / {table.qualified} / {shown} / {name} / {why}")
            self.store.conn.execute(
                "INSERT INTO rejected (origin, sequence, tbl, key, shown_key, field, why, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (self.origin, self.sequence, table.qualified, key, shown, name, why,
                 time.strftime("%Y-%m-%dT%H:%M:%S")))

    def _held(self, table: Table, change: dict) -> bool:
        """Does the store hold a record (live or deleted) under the change's key?"""
        key = self.store.blind_key(table, [change["key"].get(k) for k in table.key])
        return self.store.conn.execute(f"SELECT 1 FROM [{table_name(table)}] WHERE _key = ?", (key,)).fetchone() \
            is not None

    def _problems(self, table: Table, change: dict):
        if change["op"] != "delete":
            return self.preparer.problems(table, change, self.max_value)
        found = limits.oversized(change, self.max_value) + unkeepable(table, change)
        if found:
            return [Problem("error", name, why) for name, why in found]
        # Only the key to judge: a delete of no valid key is nobody's record. A code a newer
        # schema retired (民政's per-person 低保) must not keep its records here, so such a key
        # passes, but only for a record the store holds: a made-up code would otherwise leave a
        # tombstone whose key is any text a community likes, unsealed in the store.
        problems = [p for p in self.preparer.checker(table)(dict(change["key"]))
                    if p.field in table.key and p.severity == "error"]
        if problems and all(table.columns[p.field].codes for p in problems) and self._held(table, change):
            return []
        return problems

    def _resolve(self, row: Row, hlc: str) -> None:
        table = row.table
        # Rules may look across the row, so every cell in conflict is decided again.
        cols = set(row.touched) | row.had_frontier | {c for c, f in row.frontiers.items() if len(f) > 1}
        # Who holds the record decides whose versions may win, even for a clean apply: a change
        # built on the office's version of a record another community holds must not show.
        holding = row.holding()
        for col in sorted(cols):
            frontier = row.candidates(col)
            eligible = [c for c in frontier if c.origin in holding.eligible or c.origin == self.store.office_code
                        or (holding.holder is None and c.deleted)]
            if row.blank:
                eligible = []
            if holding.duplicate and self._queued_as_duplicate(row, col, holding):
                winner = latest(eligible or frontier)
                row.winners[col] = winner
                self._open(row, col, frontier, Decision(winner, True, holding.rule, "duplicate-registration"))
                continue
            if len(eligible) <= 1:
                # Versions of those who do not hold the record never win and are never queued.
                if eligible:
                    row.winners[col] = eligible[0]
                self._close(row, col, _("closed by {version}").format(version=hlc))
                continue
            frontier = eligible
            decision: Decision = self.hook.resolve_conflict(table=table, column=col, candidates=frontier, row=row)
            row.winners[col] = decision.winner
            if decision.review:
                self._open(row, col, frontier, decision)
            else:
                self._close(row, col, _("settled by {rule}").format(rule=decision.rule))
                winner = decision.winner
                if (winner.origin == self.store.office_code != self.origin and winner.live
                        and winner.version != hlc and any(c.version == hlc for c in frontier)):
                    # This community's value lost to the office's without a person looking:
                    # the office's goes back to it (`syncdb pull`), or the two would differ unseen.
                    self.lost.append({"table": table.qualified, "op": "update", "hlc": winner.version,
                                      "key": dict(zip(table.key, row.key_values)),
                                      "cells": {col: winner.value}, "base": {col: [hlc]}})

    @staticmethod
    def _queued_as_duplicate(row: Row, col: str, holding: Holders) -> bool:
        """While two communities hold the record, a person decides the holding rule's columns,
        and every ``manual`` column on which the claimants' copies disagree."""
        if col in holding.review:
            return True
        if row.table.columns[col].policy != "manual":
            return False
        claimants = set(row.claims())
        latest_by = {}
        for c in row.candidates(col):
            if c.origin in claimants and (c.origin not in latest_by or c.version > latest_by[c.origin].version):
                latest_by[c.origin] = c
        return len({(c.deleted, repr(c.value)) for c in latest_by.values()}) > 1

    def _open(self, row: Row, col: str, frontier, decision: Decision) -> None:
        opened = conflicts.open_or_update(self.store, row.table, row.key, col, frontier, decision,
                                          already_open=col in row.open_conflicts)
        if opened:
            self.special.add((row.table.qualified, row.key))
            self.opened += 1

    def _close(self, row: Row, col: str, note: str) -> None:
        if col in row.open_conflicts:
            self.closed += conflicts.close(self.store, row.table.qualified, row.key, col, note)

    def _write(self, row: Row, key_values: list) -> dict[str, str]:
        """Queue the row as its winners make it; return its cells' versions now (deleted ones "~"-headed)."""
        store, table, key = self.store, row.table, row.key
        conn = store.conn
        stored, winners = row.stored, row.winners
        values = {}  # plaintext: the row's sensitive values are sealed together when it is written (_flush)
        versions = {}
        for col in table.non_key:
            winner = winners.get(col)
            if winner is None:
                if row.exists:
                    values[col] = stored.get(col)
                if col in row.versions:
                    versions[col] = row.versions[col]
                continue
            values[col] = None if winner.deleted else winner.value
            versions[col] = ("~" if winner.deleted else "") + winner.version
        for col, value in zip(table.key, key_values):
            values[col] = value
        if row.exists and stored.get("_sealed") is not None and not any(
                col in winners for col in table.sensitive_columns):
            values["_sealed"] = stored["_sealed"]  # no sensitive value changed: its seal stays
        elif row.exists:
            for col in store.seals.sealed(table):
                if col not in table.columns:  # sealed, and no schema declares it any more: resealed as it was
                    values[col] = stored.get(col)
        for col in table.id_columns:
            index = f"{col}__bi"
            if col in table.key:
                values[index] = stored.get(index) or store.blind_id(key_values[table.key.index(col)])
            elif col in winners:
                winner = winners[col]
                values[index] = store.blind_id(winner.value) if winner.live else None
            else:
                values[index] = stored.get(index)
        exists = any(not v.startswith("~") for v in versions.values())
        values["_versions"] = pack_row_versions(versions, table.non_key)
        values["_exists"] = 1 if exists else 0
        values["_key"] = key
        self.rows[table.qualified, key] = values
        self.pending.setdefault(table.qualified, {})[key] = values
        for col in row.touched | set(row.frontiers):
            if col in row.had_frontier:
                conn.execute("DELETE FROM frontier WHERE tbl = ? AND key = ? AND col = ?", (table.qualified, key, col))
            frontier = row.candidates(col)
            # Kept whenever the cell's versions are not just its winner: a version set aside
            # (its community does not hold the record) must not vanish, or the one it replaced
            # would come back and the store would depend on arrival order.
            if len(frontier) > 1 or (frontier and row.winners.get(col) != frontier[0]):
                self.special.add((table.qualified, key))
                conn.executemany("INSERT INTO frontier VALUES (?, ?, ?, ?, ?, ?, ?)", [
                    (table.qualified, key, col, c.version, c.origin,
                     store.stored(table, col, c.value, key), int(c.deleted)) for c in frontier])
        if row.new_dominated:
            self.special.add((table.qualified, key))
            conn.executemany("INSERT OR IGNORE INTO dominated VALUES (?, ?, ?, ?)",
                             [(table.qualified, key, col, v) for col, v in row.new_dominated])
        return versions

