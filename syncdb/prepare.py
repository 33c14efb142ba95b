"""The merge's per-change work that needs no store, and the worker processes that do it (--jobs).

A merge applies a bundle's changes in order with one SQLite writer (merge.py).
What each change needs before that depends on the change alone: its line
read and checked, the community's right to make it, its values validated,
its blind key, and for a record new to the store its whole row sealed. So it
is done ahead: in the merging process (``--jobs 1``), or in a pool of worker
processes (``--jobs N``) on chunks of the bundle's lines, handed back in the
bundle's order, so the store ends as a one-process merge leaves it.

The keyring reaches the workers in memory (inherited on fork, through the
pool's pipe on spawn), never through a file. A worker that dies fails the
merge: the bundle's transaction rolls back and it waits in the inbox.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

from . import bundle, i18n, limits, validate
from .crypto import Keyring
from .errors import SyncdbError
from .hlc import Stamp, one_row_version
from .i18n import _
from .row import origin_of
from .schema import Domain, Table
from .store import SQLITE_LEAST, SQLITE_MOST, Seals
from .validate import Problem, TableChecker


@dataclass(frozen=True)
class Context:
    """What judging one bundle's changes takes beside the changes: who sent it and what came before."""

    origin: str
    office_code: str
    floor: str  # the origin's latest stamp applied before this bundle
    relayed: bool
    max_value: int

    @property
    def from_office(self) -> bool:
        return self.origin == self.office_code


class Prepared(NamedTuple):
    """One change made ready: its blind key; the problems that refuse it ([] if none; None when the
    merge judges it itself: a delete or a rekey, which may look at the store); and for an insert with
    no base, the row as the store would keep it if the record is new there (the merge decides)."""

    key: bytes
    problems: list | None
    row: dict | None


def refusal(table: Table, change: dict, ctx: Context) -> tuple[str, str] | None:
    """(field, why) when a community may not make this change at all, else None.

    Decided from the change alone, never from what the store holds, so the
    same bundles are refused the same way in any arrival order.
    """
    hlc = change["hlc"]
    try:
        node = Stamp.parse(hlc).node
    except (ValueError, AttributeError):
        return "-", _("its time stamp is not a syncdb stamp; the bundle was not made by syncdb")
    if ctx.relayed:
        return "-", _("it came through a relay, which this office does not accept yet")
    if set(change["key"]) != set(table.key) or (change["op"] == bundle.REKEY
                                                and set(change["new_key"]) != set(table.key)):
        return "-", _("its key names {names}, not the table's key ({key}); the bundle was not made by "
                      "syncdb").format(names=', '.join(map(str, change['key'])), key=', '.join(table.key))
    if node != ctx.origin:
        return "-", _("it is stamped as community {node}'s change but signed by {code}: "
                      "a community sends only its own changes").format(node=node, code=ctx.origin)
    if hlc <= ctx.floor:
        return "-", _("its time stamp is not later than those of the bundles {code} sent before; "
                      "a community's clock never runs backwards (was the community folder restored "
                      "from a backup? or did a stolen key send stamps from the future? then give the "
                      "community a new key and enrol it again: that clears its old stamps)").format(
            code=ctx.origin)
    owner = table.owner
    base = change.get("base") or {}
    if change["op"] != "delete" and owner in change["cells"] and change["cells"][owner] != ctx.origin:
        return owner, _("it files the record under community {other}; "
                        "community {code} may file records only under its own code").format(
            other=change['cells'][owner], code=ctx.origin)
    if change["op"] == "update" and owner in change["cells"] and owner not in base:
        return owner, _("it files a record anew without naming the version of its community code it "
                        "replaces; a community re-files only its own copy of a record")
    for version in base.values():
        if not isinstance(version, str):
            return "-", _("its base versions are not stamps; the bundle was not made by syncdb")
        made_by = origin_of(version) if version.count(".") >= 2 else ""
        if made_by not in (ctx.origin, ctx.office_code):
            return "-", _("it changes community {code}'s version of the record: a community "
                          "changes only records it holds; a resident who moved in is registered anew").format(
                code=made_by or '?')
    if change["op"] != "insert" and not base:
        return "-", _("it changes a record without naming the version it changes; a community "
                      "changes only records it holds")
    return None


SURROGATE = re.compile("[\ud800-\udfff]")  # what a JSON escape may spell and UTF-8 cannot


def _surely_fine(change: dict, max_value: int) -> bool:
    """True when no key or cell value of ``change`` can be over ``max_value`` bytes (limits.oversized
    finds none) or be one the store cannot keep (``unkeepable`` finds none), seen at a glance: strings
    of at most a quarter as many characters (UTF-8 takes 4 bytes at most for one) and, unless ASCII,
    without a lone surrogate, null, booleans, floats and integers of under 16 digits (at most 24
    characters as JSON) under a cap of at least 64 bytes; floats but NaN. Anything else is measured."""
    if max_value < 64:
        return False
    quarter = max_value // 4
    for part in ("key", "cells"):
        for value in change[part].values():
            kind = value.__class__
            if kind is str:
                if len(value) > quarter or (not value.isascii() and SURROGATE.search(value)):
                    return False
            elif kind is int:
                if not -10**15 < value < 10**15:
                    return False
            elif kind is float:
                if value != value:  # NaN
                    return False
            elif not (value is None or kind is bool):
                return False
    return True


def unkeepable(table: Table, change: dict) -> list[tuple[str, str]]:
    """(field, why) for each key or cell value of ``change`` the store cannot keep; [] if none.

    Text holding a lone surrogate (a JSON escape such as \\ud800, which no UTF-8 spells: SQLite and
    a seal's JSON take UTF-8 only), and a whole number past SQLite's 64 bits or NaN in a column the store
    keeps as itself (a sensitive column keeps the number in its seal, which takes any: store.values_bytes).
    syncdb never sends any of them; another program, or a stolen key, may. Binding one failed the whole
    bundle, and every later bundle of the community waited behind it: now the record alone is
    rejected. ``why`` never quotes the value.
    """
    found = []
    for part in ("key", "cells"):
        for name, value in change[part].items():
            if value.__class__ is str and SURROGATE.search(value):
                found.append((str(name), _("the text holds a character no UTF-8 can spell (a lone surrogate "
                                           "of a JSON escape); syncdb does not write it: correct the value in "
                                           "the community's database, or ask who wrote the bundle")))
            elif value.__class__ is int and not SQLITE_LEAST <= value <= SQLITE_MOST \
                    and not (name in table.columns and table.columns[name].sensitive):
                found.append((str(name), _("the whole number is beyond those the store keeps ({least:,} to "
                                           "{most:,}); correct it in the community's database").format(
                                               least=SQLITE_LEAST, most=SQLITE_MOST)))
            elif value.__class__ is float and value != value \
                    and not (name in table.columns and table.columns[name].sensitive):
                # JSON's reader takes NaN, and SQLite keeps it as NULL: the store would say the cell
                # was set and hold nothing. No SQLite database holds NaN, so syncdb never sends it.
                found.append((str(name), _("the value is NaN (not a number), which the store keeps as empty; "
                                           "syncdb does not write it: correct the value in the community's "
                                           "database, or ask who wrote the bundle")))
    return found


def mistyped(text) -> str | None:
    """Why a text a person typed (a name, a reason, a value) cannot be taken, or None: bytes the
    terminal's encoding did not spell as the office's (GBK typed where the locale is UTF-8) reach
    Python as lone surrogates, which no file of the office takes, as ``unkeepable`` says of a bundle's."""
    if isinstance(text, str) and SURROGATE.search(text):
        return _("what was typed is not text in the terminal's encoding (was it typed in a terminal set to "
                 "another one, such as GBK?); set the terminal to UTF-8 and type it again; nothing was changed")
    return None


class Preparer:
    """Makes changes ready (``prepare``) with the keyring's value cryptography and the schemas.

    Validators are compiled once per table and remember each value's verdict
    for as long as the preparer lives (one bundle in the merging process, one
    merge in a worker).
    """

    def __init__(self, seals: Seals, domains: dict[str, Domain]):
        self.seals, self.domains = seals, domains
        self.tables = {t.qualified: t for d in domains.values() for t in d.tables.values()}
        self.checkers: dict[str, TableChecker] = {}
        self.plans: dict[str, tuple] = {}

    def checker(self, table: Table) -> TableChecker:
        checker = self.checkers.get(table.qualified)
        if checker is None:
            checker = self.checkers[table.qualified] = TableChecker(table, self.domains[table.domain])
        return checker

    def problems(self, table: Table, change: dict, max_value: int) -> list[Problem]:
        """The errors of an insert's or update's values (a delete's are the merge's: ``_Merger._problems``)."""
        if not _surely_fine(change, max_value):
            found = limits.oversized(change, max_value) + unkeepable(table, change)
            if found:
                return [Problem("error", name, why) for name, why in found]
        record = dict(change["key"])
        record.update(change["cells"])
        problems = self.checker(table)(record)
        if change["op"] == "update":
            # A partial record: only judge the cells it carries (and its key, always).
            problems = [p for p in problems if p.field in record or p.field in table.key]
        return [p for p in problems if p.severity == "error"]

    def prepare(self, change: dict, ctx: Context) -> Prepared | None:
        """The change made ready, or None for a change the merge must look at alone (an unknown table)."""
        table = self.tables.get(change["table"])
        if table is None:
            return None
        key_values = [change["key"].get(k) for k in table.key]
        key = self.seals.blind_key(table, key_values)
        op = change["op"]
        if op not in ("insert", "update"):
            return Prepared(key, None, None)
        if not ctx.from_office:
            refused = refusal(table, change, ctx)
            if refused:
                return Prepared(key, [Problem("error", refused[0], refused[1])], None)
        problems = self.problems(table, change, ctx.max_value)
        row = None
        if not problems and op == "insert" and not change.get("base"):
            row = self.new_row(table, key, key_values, change)
        return Prepared(key, problems, row)

    def _plan(self, table: Table) -> tuple:
        """How a new row of ``table`` is made: its key's columns, its other columns, its blind IDs
        (with the key column each is, if any), and whether it has any column outside its key."""
        plan = self.plans.get(table.qualified)
        if plan is None:
            plan = self.plans[table.qualified] = (
                list(table.key), table.non_key,
                [(c, table.key.index(c) if c in table.key else None) for c in table.id_columns],
                1 if table.non_key else 0)
        return plan

    def new_row(self, table: Table, key: bytes, key_values: list, change: dict) -> dict:
        """The row of a record the store has never seen, as the store keeps it (with its values in
        plaintext too, for a later change of the batch): every cell's version is this change's
        stamp (one version for every cell in ``_versions``), its sensitive values sealed together in ``_sealed``."""
        keyed, others, ids, exists = self._plan(table)
        blind_id = self.seals.blind_id
        cells, hlc = change["cells"], change["hlc"]
        values = dict(zip(keyed, key_values))
        for col in others:
            values[col] = cells.get(col)
        values["_sealed"] = self.seals.seal_row(table, values, key)
        values["_key"] = key
        for col, at in ids:
            values[f"{col}__bi"] = blind_id(key_values[at] if at is not None else cells.get(col))
        values["_versions"] = one_row_version(hlc) if exists else "{}"
        values["_exists"] = exists
        return values


# ---------------------------------------------------------------- worker processes (--jobs)

CHUNK = 500  # change lines a worker takes at a time
CHUNK_BYTES = 1 << 20  # and at most about this many bytes of them: the lines read ahead stay few MiB


def default_jobs() -> int:
    """The cores available to this process: those it may run on, as many as a container's CPU quota
    allows, less those other work keeps busy (the load average of the last minute). Workers only help
    on free cores: on busy ones their hand-offs cost more than they save (bench/city.py measured
    --jobs 2 at 0.75x of one process with a load of 3 on 2 cores)."""
    cores = available_cores()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no load average
        busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def available_cores() -> int:
    """The cores this process may run on, as many as a container's CPU quota allows."""
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = quota_cores()
    if quota is not None:
        cores = max(1, min(cores, int(quota)))
    return cores


def quota_cores(cgroup: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPUs a quota gives this process (cgroup v2 ``cpu.max``, or v1's CFS quota), or None where there
    is none (no quota, no cgroup file system: Windows, macOS). The group this process is in (``own``) and
    every group above it count, the smallest quota binding: a container sees itself at the root, a
    systemd service with CPUQuota= is a group below the host's root, whose own has no quota."""
    v2 = v1 = "/"
    try:
        for line in own.read_text().splitlines():
            number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
            if number == "0" and not controllers:
                v2 = path or "/"
            elif "cpu" in controllers.split(","):
                v1 = path or "/"
    except (OSError, ValueError):
        pass
    quotas = [q for q in (_v2_quota(folder) for folder in _upwards(cgroup, v2)) if q is not None]
    if not quotas:
        quotas = [q for q in (_v1_quota(folder) for folder in _upwards(cgroup / "cpu", v1)) if q is not None]
    return min(quotas) if quotas else None


def _upwards(root: Path, path: str) -> list[Path]:
    """The cgroup ``path`` under ``root`` and each group above it, up to ``root``."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _ratio(int(quota), int(period))
    except (OSError, ValueError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        return _ratio(int((folder / "cpu.cfs_quota_us").read_text()), int((folder / "cpu.cfs_period_us").read_text()))
    except (OSError, ValueError):
        return None


def _ratio(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None


class WorkersFailed(SyncdbError):
    """A worker process of the merge stopped; the bundle being merged was rolled back."""


_worker: Preparer | None = None  # in a worker process: its preparer, made once by _start


def _start(keyring: Keyring, domains: dict[str, Domain], language: str, row_columns: dict) -> None:
    global _worker
    _end_with_parent()
    i18n.use(language)
    _worker = Preparer(Seals(keyring, row_columns), domains)


def _end_with_parent() -> None:
    """In a worker: end as soon as the merging process is gone. Killed (SIGKILL, out of memory),
    it never tells its workers to stop, and each would wait for work for ever with the office
    keyring in its memory."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns when the parent's end of the pipe closes: it has exited
        os._exit(1)

    threading.Thread(target=watch, name="syncdb-merge-parent", daemon=True).start()


def prepare_chunk(lines: list[bytes], first: int, lists_allowed: bool, ctx: Context):
    """In a worker: ``prepare_lines`` with the worker's preparer."""
    return prepare_lines(_worker, lines, first, lists_allowed, ctx)


def prepare_lines(preparer: Preparer, lines: list[bytes], first: int, lists_allowed: bool, ctx: Context):
    """Each line read and made ready, as (change, Prepared or None); and the BundleError of the
    first line that is no change, as (message, reason), or None."""
    out = []
    for number, line in enumerate(lines, start=first):
        try:
            change = bundle.parse_line(line, number, lists_allowed)
        except bundle.BundleError as e:
            return out, (str(e), e.reason)
        try:
            prepared = preparer.prepare(change, ctx)
        except Exception:  # noqa: BLE001 - the merge does this change itself and meets the same fault in order
            prepared = None
        out.append((change, prepared))
    return out, None


class Workers:
    """A pool of worker processes preparing changes for one merge; ``close`` it.

    The merging process prepares a chunk itself whenever the workers have not
    finished the one it needs next (the cores may be busy with other work), so
    a merge with workers is never much slower than one without.
    """

    def __init__(self, jobs: int, keyring: Keyring, domains: dict[str, Domain], row_columns: dict):
        """``row_columns``: what the store's row seals hold (Seals.row_columns)."""
        self.jobs = jobs
        validate.warm()
        self.here = Preparer(Seals(keyring, row_columns), domains)
        # fork where there is one (Linux), spawn elsewhere (Windows, macOS): the platform's default.
        self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context(), initializer=_start,
                                        initargs=(keyring, domains, i18n.language(), row_columns))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def prepared(self, reader: bundle.Reader, keyring: Keyring, caps: limits.Limits,
                 ctx: Context) -> Iterator[tuple[dict, Prepared | None]]:
        """The bundle's changes, read, checked against its header and made ready, in its order.

        A fault is raised where a one-process merge meets it: a fault of the
        payload's reading waits until every line before it is handed on.
        """
        lines, raw = reader.lines(keyring, caps)
        pending: deque = deque()  # (first line's number, Future, the lines), in the payload's order
        fault = None
        number = 0

        def chunk_of_lines() -> list[bytes]:
            nonlocal fault
            chunk, size = [], 0
            try:
                for line in raw:
                    chunk.append(line)
                    size += len(line)
                    if len(chunk) >= CHUNK or size >= CHUNK_BYTES:
                        break
            except Exception as e:  # noqa: BLE001 - raised below, in the payload's order
                fault = e
            return chunk

        try:
            while True:
                while fault is None and len(pending) < 2 * self.jobs + 1:
                    chunk = chunk_of_lines()
                    if not chunk:
                        break
                    pending.append((number + 1, self.pool.submit(prepare_chunk, chunk, number + 1,
                                                                 lines.lists_allowed, ctx), chunk))
                    number += len(chunk)
                if not pending:
                    break
                if not pending[0][1].done() and fault is None:
                    # The workers are behind: take the next chunk here rather than wait.
                    chunk = chunk_of_lines()
                    if chunk:
                        done = Future()
                        done.set_result(prepare_lines(self.here, chunk, number + 1, lines.lists_allowed, ctx))
                        pending.append((number + 1, done, chunk))
                        number += len(chunk)
                first, future, chunk = pending.popleft()
                try:
                    out, error = future.result()
                except BrokenProcessPool:
                    raise
                except Exception:  # noqa: BLE001 - see below
                    # The worker's answer could not come back (a change line may carry a field the
                    # merge never reads, nested too deep for pickle): this chunk is prepared here,
                    # as a one-process merge does, and meets any fault of its own in order.
                    out, error = prepare_lines(self.here, chunk, first, lines.lists_allowed, ctx)
                for n, (change, prepared) in enumerate(out, start=first):
                    yield lines.account(change, n), prepared
                if error:
                    raise bundle.BundleError(*error)
            if fault is not None:
                raise fault
            lines.finish()
        except BrokenProcessPool as e:
            # Met at a result, or at the next chunk's hand-out when a worker died in between.
            raise WorkersFailed(str(e) or type(e).__name__) from None
        finally:
            for __, future, __ in pending:
                future.cancel()
