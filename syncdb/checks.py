"""Cross-domain checks (信息比对): what one department's records say that another's contradict.

A check is a plugin: a module (or object) whose ``cross_checks()`` hook
returns ``Check`` objects (hookspecs.py; docs/checks.md walks through one).
A check names the tables it reads and the kind of subject its findings are
about, and its ``find`` function, handed a read-only view of the store's
records (``Records``: decrypted in memory, on first read, never written
anywhere) and the subjects to look at, returns ``Finding`` objects. A check
never changes a record: people do.

``run`` runs the checks and hands what they found to cases.py, which keeps
each finding as a case. After a merge (``after_merge``) only the subjects
the merge touched are looked at: the records changed since each check's
last run (``store.changed_since``), mapped to subjects by the check's own
``subjects_of``, and the subjects of its cases built on a changed record.
``run(store, everything=True)`` (``syncdb checks run STORE --all``) looks
at every record, and builds again from them what each check keeps per
record (``Bearings``).

Office-set thresholds live in ``STORE/checks.toml`` (``settings``): a table
per check, overriding the defaults the check declares, and ``today``, the
date the checks count from (default: the day they run).
"""

from __future__ import annotations

import gc
import json
import logging
import re
import time
import tomllib
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from stdnum.cn import ric

from . import cases
from .errors import SyncdbError
from .i18n import N_, _
from .masks import mask
from .plugins import manager
from .schema import Table
from .store import Store, table_name

log = logging.getLogger("syncdb.checks")

SEVERITIES = {"high": N_("high"), "medium": N_("medium"), "low": N_("low")}
SUBJECTS = {"person": N_("person"), "household": N_("household"), "house": N_("house")}
SETTINGS_FILE = "checks.toml"
_CHUNK = 500  # values per IN (...) of one query: well under SQLite's limit on parameters
_MANY = 4 * _CHUNK  # more values asked of an indexed column than this and than 1 / _SHARE of
_SHARE = 4  # its table's rows: see first which it holds at all, reading it whole (Records._many)
_ID_LIKE = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")


class Record(Mapping):
    """One record of the store as a check reads it: ``record["column"]``, its sensitive values
    decrypted in memory the first time one is read. ``table`` is its ``domain.table``;
    ``key`` its blind key; ``live`` False for a deleted record (only ``Records.get`` gives those)."""

    __slots__ = ("table", "key", "live", "_schema", "_cells", "_store", "_opened")

    def __init__(self, store: Store, schema: Table, cells: dict):
        self._store, self._schema, self._cells = store, schema, cells
        self.table, self.key, self.live = schema.qualified, bytes(cells["_key"]), bool(cells["_exists"])
        self._opened: dict | None = None

    def __getitem__(self, column: str):
        spec = self._schema.columns[column]
        if not spec.sensitive:
            return self._cells.get(column)
        if self._opened is None:
            self._opened = self._store.seals.open_row(self._schema, self._cells.get("_sealed"), self.key)
        return self._opened.get(column)

    def get(self, column: str, default=None):
        # Mapping's own get calls __getitem__ and catches its KeyError: a sixth of the checks' time.
        return self[column] if column in self._schema.columns else default

    def __iter__(self) -> Iterator[str]:
        return iter(self._schema.columns)

    def __len__(self) -> int:
        return len(self._schema.columns)

    def key_values(self) -> list:
        """The natural key (decrypted), as the schema lists its columns."""
        return [self[c] for c in self._schema.key]

    def __repr__(self) -> str:  # never the values: a traceback or a log line must show no plaintext
        return f"<Record {self.table} {self.key.hex()}>"


class Records:
    """The store's live records, read-only, decrypted in memory as they are read.

    ``rows(table)`` gives every live record of a table; ``where(table,
    column, values)`` those whose column holds one of the values. With
    ``everything`` each table is read once and indexed in memory (a run over
    all records). Without (a run after a merge, over what it touched), an
    ID-number column is asked by the store's blind index and any column the
    store indexes by an ``IN`` query; any other column is read once for the
    whole run (its values and blind keys only, one scan) and looked up in
    memory after that: asked per house or per household, it would be one
    scan of the table per question. A record read twice is one ``Record``,
    so each of its cells is decrypted once in a run, whichever check reads it.
    """

    def __init__(self, store: Store, everything: bool = False):
        self.store, self.everything = store, everything
        self._tables: dict[str, list[Record]] = {}  # table -> every live record
        self._known: dict[str, dict[bytes, Record]] = {}  # table -> blind key -> the record read, live or not
        self._indexes: dict[tuple[str, str], dict] = {}  # (table, column) -> value -> records, over rows()
        self._scanned: dict[tuple[str, str], dict] = {}  # (table, column) -> value -> blind keys, one scan
        self._asked: dict[tuple[str, str], dict] = {}  # (table, column) -> value asked -> records
        self._present_values: dict[tuple[str, str], set] = {}  # (table, indexed column) -> every value held
        self._blind: dict = {}  # ID number -> its blind index, computed once a run
        self._store_indexed: dict[str, set[str]] = {}
        self._keys: dict[str, dict] = {}  # table -> key value -> its blind key
        self._absent: dict[str, set[bytes]] = {}  # table -> blind keys asked that no record has
        self._size: dict[str, int] = {}  # table -> about how many rows it has (_many)

    def rows(self, table: str) -> list[Record]:
        if table not in self._tables:
            self._tables[table] = self._select(table, "_exists = 1", ())
        return self._tables[table]

    def where(self, table: str, column: str, values: Iterable) -> list[Record]:
        wanted = {v for v in values if v is not None}
        schema = self.store.table(table)
        if column not in schema.columns:
            raise SyncdbError(_("{table} has no column {column}").format(table=table, column=column))
        by_id = column in schema.id_columns
        in_memory = self.everything or table in self._tables or (schema.columns[column].sensitive and not by_id)
        if not in_memory and tuple(schema.key) == (column,):  # the blind key's UNIQUE index finds it (an ID's too)
            return self._by_key(table, schema, wanted)
        lookups = {self.blind_id(v) for v in wanted} if by_id else wanted
        if in_memory:
            index = self._index(table, column, by_id)
            return [r for k in lookups for r in index.get(k, ())]
        stored = f"{column}__bi" if by_id else column
        if by_id or stored in self._indexed(table):
            asked = self._ask(table, stored, lookups)
            return [r for k in lookups for r in asked[k]]
        scanned = self._scan(table, column)
        return self.get_many(table, [k for v in lookups for k in scanned.get(v, ())], live=True)

    def one(self, table: str, column: str, value) -> Record | None:
        """The first record whose column holds ``value``, or None."""
        found = self.where(table, column, [value])
        return found[0] if found else None

    def meaning(self, table: str, column: str, code) -> str:
        """A code as people read it: its meaning from the schema's code table (the code itself if none)."""
        schema = self.store.table(table)
        name = schema.columns[column].codes
        if code is None or name is None:
            return "" if code is None else str(code)
        return self.store.domains[schema.domain].code_table(name).get(str(code), str(code))

    def get(self, table: str, key: bytes) -> Record | None:
        """The record with this blind key, deleted or not (what a change touched), or None."""
        found = self.get_many(table, [key])
        return found[0] if found else None

    def get_many(self, table: str, keys: Iterable[bytes], live: bool = False) -> list[Record]:
        """The records with these blind keys (only the live ones if ``live``), read by chunks, in order."""
        known = self._known.setdefault(table, {})
        missing = list(dict.fromkeys(k for k in keys if k not in known))
        for start in range(0, len(missing), _CHUNK):
            part = missing[start:start + _CHUNK]
            self._select(table, f"_key IN ({', '.join('?' * len(part))})", part)
        found = [known[k] for k in keys if k in known]
        return [r for r in found if r.live] if live else found

    def _by_key(self, table: str, schema: Table, values) -> list[Record]:
        """The live records of a table keyed by one column, whose key is one of ``values``: by their blind
        keys. Thousands asked (the ID numbers one digit from some people's): the key index, read whole
        once, says first which are there."""
        blind, absent = self._keys.setdefault(table, {}), self._absent.setdefault(table, set())
        keys = []
        for value in values:
            key = blind.get(value)
            if key is None:
                key = blind[value] = self.store.blind_key(schema, [value])
            if key not in absent:
                keys.append(key)
        known = self._known.setdefault(table, {})
        if self._many(table, sum(k not in known for k in keys)):
            present = self._present(table, "_key")
            absent.update(k for k in keys if k not in present)
            keys = [k for k in keys if k in present]
        found = self.get_many(table, keys)
        absent.update(k for k in keys if k not in known)
        return [r for r in found if r.live]

    def blind_id(self, value) -> bytes | None:
        """The store's blind index of an ID number, kept for the run (a look-up by neighbours asks many)."""
        if value not in self._blind:
            self._blind[value] = self.store.blind_id(value)
        return self._blind[value]

    def _index(self, table: str, column: str, by_id: bool) -> dict:
        if (table, column) not in self._indexes:
            index: dict = {}
            for record in self.rows(table):
                index.setdefault(record._cells.get(f"{column}__bi") if by_id else record[column], []).append(record)
            self._indexes[table, column] = index
        return self._indexes[table, column]

    def _indexed(self, table: str) -> set[str]:
        """The columns the store keeps an index on (first in the index): those are asked directly."""
        if table not in self._store_indexed:
            name, conn = table_name(self.store.table(table)), self.store.conn
            firsts = set()
            for index in conn.execute(f"PRAGMA index_list([{name}])").fetchall():
                columns = conn.execute(f"PRAGMA index_info([{index[1]}])").fetchall()
                if columns and columns[0][2]:
                    firsts.add(columns[0][2])
            self._store_indexed[table] = firsts
        return self._store_indexed[table]

    def _ask(self, table: str, stored: str, lookups) -> dict:
        """Value -> the live records holding it in ``stored`` (an indexed column), asked by chunks."""
        asked = self._asked.setdefault((table, stored), {})
        missing = [k for k in lookups if k not in asked]
        if self._many(table, len(missing)):
            # Thousands of values (the ID numbers one digit from some people's): most are nobody's. The
            # index says which are there, read whole once; only those are asked.
            present = self._present(table, stored)
            for k in missing:
                if k not in present:
                    asked[k] = ()  # nobody's: no list made for each of thousands
            missing = [k for k in missing if k in present]
        for start in range(0, len(missing), _CHUNK):
            part = missing[start:start + _CHUNK]
            for k in part:
                asked[k] = []
            for record in self._select(table, f"_exists = 1 AND [{stored}] IN ({', '.join('?' * len(part))})", part):
                asked[record._cells[stored]].append(record)
        return asked

    def _many(self, table: str, asked: int) -> bool:
        """Are so many values asked of an indexed column of ``table`` that the whole index, read once
        (_present), costs less than looking each up? Past _MANY values and a quarter of the table's rows:
        a night asks thousands (the ID numbers one digit from those of the people it changed), and at 50
        communities reading every person's key for them took a third of its checks (docs/checks.md); a
        first load asks more values than the table has rows."""
        if asked <= _MANY:
            return False
        if table not in self._size:
            name = table_name(self.store.table(table))
            # A schema may name a column rowid: that name is then its column (text, say), not the rowid.
            columns = {row[1].lower() for row in self.store.conn.execute(f"PRAGMA table_info([{name}])")}
            alias = next((a for a in ("rowid", "_rowid_", "oid") if a not in columns), None)
            self._size[table] = 0 if alias is None else self.store.conn.execute(
                f"SELECT max({alias}) FROM [{name}]").fetchone()[0] or 0
        return asked * _SHARE > self._size[table]

    def _present(self, table: str, stored: str) -> set:
        """Every value an indexed column holds, deleted records' too (read from the index alone)."""
        if (table, stored) not in self._present_values:
            name = table_name(self.store.table(table))
            self._present_values[table, stored] = {v for (v,) in self.store.conn.execute(
                f"SELECT [{stored}] FROM [{name}] WHERE [{stored}] IS NOT NULL")}
        return self._present_values[table, stored]

    def _scan(self, table: str, column: str) -> dict:
        """Value -> the blind keys of the live records holding it: the column and the keys alone, read once."""
        if (table, column) not in self._scanned:
            index: dict = {}
            cursor = self.store.conn.execute(
                f"SELECT _key, [{column}] FROM [{table_name(self.store.table(table))}] WHERE _exists = 1")
            for key, value in cursor:
                index.setdefault(value, []).append(bytes(key))
            self._scanned[table, column] = index
        return self._scanned[table, column]

    def _select(self, table: str, where: str, params) -> list[Record]:
        """The records the query finds; one already read is given again as it was (its cells opened once)."""
        schema = self.store.table(table)
        known = self._known.setdefault(table, {})
        cursor = self.store.conn.execute(f"SELECT * FROM [{table_name(schema)}] WHERE {where}", params)
        names = [d[0] for d in cursor.description]
        at = names.index("_key")
        out = []
        for row in cursor:
            key = bytes(row[at])
            record = known.get(key)
            if record is None:
                record = known[key] = Record(self.store, schema, dict(zip(names, row)))
            out.append(record)
        return out


@dataclass
class Finding:
    """What a check found about one subject.

    ``subject``: the value the finding is about (an ID number, a 户号, a
    房屋编码), one finding per subject and check. ``message``: the sentence
    saying what is wrong, through ``_()``, with no name or ID number in it
    (the subject and the records carry who it is). ``records``: the records
    concerned. ``figures``: the numbers and dates behind it, for the page.
    ``evidence``: the data that shows the problem: a dismissed case stays
    dismissed while it is the same (default: the records' keys and figures,
    so leave out of the figures what changes by itself, such as months
    counted up to today, or give the evidence). ``community``: the
    community code the case is listed under (default: the first record's).
    """
    subject: str
    message: str
    records: Sequence[Record]
    figures: dict = field(default_factory=dict)
    evidence: object = None
    community: str | None = None


@dataclass(frozen=True)
class Check:
    """One cross-domain check, as a plugin's ``cross_checks()`` returns it.

    ``name``: a stable identifier (cases are kept under it). ``title``: what
    staff read, in English through ``N_`` for syncdb's catalogue, or in
    Chinese directly in an office's own plugin. ``reads``: the tables it
    reads (``domain.table``): it is skipped where the office's schemas lack
    one. ``subject``: ``person``, ``household`` or ``house`` (or a kind of
    its own). ``find(records, subjects, settings)``: the findings, looking
    only at ``subjects`` unless it is None (every subject). ``subjects_of(
    table, record)``: the subjects a changed record of a table it reads
    bears on. ``severity``: ``high``, ``medium`` or ``low``. ``settings``:
    its office-set thresholds and their defaults (STORE/checks.toml).
    ``watches``: optionally, per table it reads, the columns its findings
    depend on (key, figures, what ``subjects_of`` reads): an update that
    changed none of them is not looked at again after a merge. A table left
    out, or no ``watches`` at all, means any column. Declare it only where the
    check's cost calls for it, and make the random-history test cover it: a
    column missed here is a case missed until the next ``--all``.
    ``lookups``: optionally, per table it reads, the columns its ``find``
    looks records up by (``Records.where``) other than an ID number (the
    store's blind index serves those) and a one-column key (the blind key
    does): the store keeps an index on each (``lookup_indexes``), so a run
    after a merge asks for the records it needs instead of reading the
    column of the whole table. Each costs bytes in the store: declare those
    a run after a merge asks often.
    """
    name: str
    title: str
    reads: tuple[str, ...]
    subject: str
    find: Callable[[Records, "set[str] | None", dict], Iterable[Finding]]
    subjects_of: Callable[[str, Record], Iterable[str]]
    severity: str = "medium"
    settings: Mapping = field(default_factory=dict)
    description: str = ""
    watches: Mapping[str, frozenset] | None = None
    lookups: Mapping[str, tuple[str, ...]] | None = None


def registered() -> list[Check]:
    """Every check the plugins add, by name; two checks of the same name are refused."""
    found: dict[str, Check] = {}
    for result in manager().hook.cross_checks():
        for check in result or []:
            if check.name in found:
                raise SyncdbError(_("two plugins add a check named {name}; rename one of them").format(name=check.name))
            if check.severity not in SEVERITIES:
                raise SyncdbError(_("check {name} has severity {severity}; use high, medium or low")
                                  .format(name=check.name, severity=check.severity))
            if check.lookups is not None and not (isinstance(check.lookups, Mapping) and all(
                    isinstance(columns, (tuple, list)) and all(isinstance(c, str) for c in columns)
                    for columns in check.lookups.values())):
                raise SyncdbError(_("check {name}: its lookups must map each table to a tuple of column names")
                                  .format(name=check.name))
            found[check.name] = check
    return [found[name] for name in sorted(found)]


def lookup_indexes(store: Store, checks: Iterable[Check] | None = None) -> dict[str, str]:
    """Index name -> its CREATE statement, for each column the checks (the registered ones unless given)
    look records up by (``Check.lookups``), on the tables the store has made. A sensitive column is left
    out: its sealed values differ each time, an index of them finds nothing."""
    made = {n for (n,) in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    wanted: dict[str, str] = {}
    for check in registered() if checks is None else checks:
        for qualified, columns in (check.lookups or {}).items():
            schema = store.tables.get(qualified)
            if schema is None or table_name(schema) not in made:
                continue
            name = table_name(schema)
            for column in columns:
                spec = schema.columns.get(column)
                if spec is None or spec.sensitive:
                    continue
                index = f"{name}__by_{column}"
                wanted[index] = f"CREATE INDEX IF NOT EXISTS [{index}] ON [{name}] ([{column}])"
    return wanted


def make_lookup_indexes(store: Store, checks: Iterable[Check] | None = None) -> list[str]:
    """Make the indexes the checks look records up by that the store lacks (a check or a table added since
    the store was made or upgraded); inside the caller's transaction. Return their names."""
    have = {n for (n,) in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    missing = {name: sql for name, sql in lookup_indexes(store, checks).items() if name not in have}
    for sql in missing.values():
        store.conn.execute(sql)
    return sorted(missing)


LOOKUPS_KEPT_DAYS = 30  # a check that has not run for this long no longer keeps its look-up indexes


def stale_lookup_indexes(store: Store, have: set[str]) -> list[str]:
    """The look-up indexes (``<table>__by_<column>``, syncdb's own names) no check declares any more: a
    check removed, or its ``lookups`` changed. Each would cost every merge a write and the store its
    bytes. An index is kept while a registered check declares it, or a check that ran in the last
    LOOKUPS_KEPT_DAYS did (check_lookups): a process started with fewer plugins (a `checks run` from a
    shell without SYNCDB_PLUGINS beside a `serve` with them) drops none of the others' indexes."""
    try:
        wanted = set(lookup_indexes(store, registered()))
    except Exception:  # noqa: BLE001 - a check plugin's bad declaration: drop nothing while unsure
        return []
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - LOOKUPS_KEPT_DAYS * 86400))
    claimed = cases.lookups_claimed(store, since)
    if claimed is None:  # a store that has not kept what each check declared: drop nothing yet
        return []
    prefixes = tuple(f"{table_name(t)}__by_" for t in store.tables.values())
    return sorted(n for n in have if n.startswith(prefixes) and n not in wanted | claimed)


def title(name: str) -> str:
    """A check's title in the user's language (its name if no plugin adds it any more)."""
    for check in registered():
        if check.name == name:
            return _(check.title)
    return name


def settings(store_folder, check: Check) -> dict:
    """The check's settings: its defaults, overridden by its table in STORE/checks.toml; ``today`` added."""
    path = Path(store_folder) / SETTINGS_FILE
    try:
        given = tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SyncdbError(_("{path} is not valid TOML ({why}); correct it, then run the checks again")
                          .format(path=path, why=e)) from None
    own = given.get(check.name, {})
    unknown = sorted(set(own) - set(check.settings) - {"enabled"})
    if unknown:
        raise SyncdbError(_("{path}: check {name} has no setting {setting}; it has: {known}").format(
            path=path, name=check.name, setting=", ".join(unknown), known=", ".join(check.settings) or "-"))
    today = given.get("today", date.today())
    if not isinstance(today, date):
        raise SyncdbError(_("{path}: today must be a date such as 2026-06-30").format(path=path))
    return {**check.settings, **own, "today": today}


# ---------------------------------------------------------------- running them

@dataclass
class Report:
    """What a run did: per check, the subjects looked at (None: all) and how its cases moved."""
    looked: dict = field(default_factory=dict)  # check name -> subjects looked at, or None for all
    tallies: dict = field(default_factory=dict)  # check name -> cases.Tally
    failed: list = field(default_factory=list)  # (check name, why): its cases were left as they were
    skipped: list = field(default_factory=list)  # (check name, why)

    def lines(self) -> list[str]:
        opened = sum(t.opened + t.reopened for t in self.tallies.values())
        fixed = sum(t.fixed for t in self.tallies.values())
        out = [_("checks: {checks} run, {opened} case(s) opened, {fixed} closed as fixed").format(
            checks=len(self.tallies), opened=opened, fixed=fixed)]
        out += [_("check {name} failed and was left as it was: {why}").format(name=n, why=w) for n, w in self.failed]
        out += [_("check {name} skipped: {why}").format(name=n, why=w) for n, w in self.skipped]
        return out


def run(store: Store, everything: bool = False, names: Iterable[str] | None = None) -> Report:
    """Run the checks (``names``, or all) and keep what they find as cases.

    Without ``everything``, each check looks only at what changed since its
    last run; a check never run before, or whose settings changed, or that
    counts from the day when the day has changed, looks at everything. A check that
    raises is reported and its cases are left as they were; the others go on.
    """
    collecting = gc.isenabled()
    gc.disable()  # millions of small objects that never form a cycle: collecting them again and again cost a fifth
    try:
        return _run(store, everything, names)
    finally:
        if collecting:
            gc.enable()


def _run(store: Store, everything: bool, names: Iterable[str] | None) -> Report:
    report, checks = Report(), _selected(names)
    current = {c.name for c in registered()} if names is not None else {c.name for c in checks}
    if not store.read_only:
        have = {n for (n,) in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        stale = stale_lookup_indexes(store, have) if names is None else []
        if set(lookup_indexes(store, checks)) - have or stale:
            with store.transaction():
                make_lookup_indexes(store, checks)
                for name in stale:
                    store.conn.execute(f"DROP INDEX IF EXISTS [{name}]")
    point = store.change_point()
    last, used = cases.points(store), cases.settings_used(store)
    views = {True: Records(store, everything=True), False: Records(store, everything=False)}
    changes: dict[int, dict] = {}
    results = []
    for check in checks:
        lacking = [t for t in check.reads if t not in store.tables]
        if lacking:
            report.skipped.append((check.name, _("the office's schemas lack {tables}").format(tables=", ".join(lacking))))
            continue
        try:
            options = settings(store.folder, check)
            if options.get("enabled", True) is False:
                report.skipped.append((check.name, _("turned off in {file}").format(file=SETTINGS_FILE)))
                continue
            previous, since = used.get(check.name), last.get(check.name)
            # --all builds again from every record what the check keeps of each (a repair, not only a look),
            # and needs nothing of the ledger: since a check's last run it may be months of changes.
            incremental = not everything and since is not None and _kept(previous, check)
            if incremental and since not in changes:
                changes[since] = store.cells_changed_since(since)
            changed = watched_changes(changes[since], check) if incremental else None
            # Other settings, or another day for a check that counts from it, may change any finding; without
            # what it kept of the subjects records bore on, it could not see which ones they left.
            whole = changed is None or _moved(previous, options)
            bearings = Bearings(store, views[whole], check, changed)
            if any(bearings.now.values()) and cases.needs_bit(store, check.name):
                with store.transaction():  # its bit of the rows the checks share, or this check fails alone
                    cases.ensure(store)
                    cases.claim_bit(store, check.name, current)
            subjects = None if whole else bearings.subjects | cases.subjects_on(
                store, check.name, {t: bearings.changed.get(t, set()) for t in check.reads})
            watched = _Watched(options)
            found = [] if subjects == set() else _found(store, check, views[whole], subjects, watched)
        except Exception as e:  # a plugin's bug must not stop the others, nor a merge
            report.failed.append((check.name, _why(e)))
            log.error("check %s failed: %s", check.name, _why(e))
            continue
        report.looked[check.name] = None if subjects is None else len(subjects)
        dated = watched.dated or bool((previous or {}).get("dated"))
        results.append((check, subjects, found, bearings, _used(options, dated, check)))
    declared = {}
    for check, *_rest in results:
        try:
            declared[check.name] = sorted(lookup_indexes(store, [check]))
        except Exception:  # noqa: BLE001 - refused as the check's alone when its indexes were made
            declared[check.name] = []
    with store.transaction():
        cases.ensure(store)
        for check, subjects, found, bearings, using in results:
            scope = None if subjects is None else {bearings.blind_index(s) for s in subjects}
            report.tallies[check.name] = cases.reconcile(store, check.name, check.severity, check.subject, found, scope)
            bearings.keep()
            cases.set_point(store, check.name, point)
            cases.set_settings_used(store, check.name, using)
            cases.set_lookups(store, check.name, declared.get(check.name, []))
    return report


def watched_changes(cells: dict[str, dict[bytes, frozenset | None]], check: Check) -> dict[str, set[bytes]]:
    """The changed records a check looks at again: every one, but updates of only columns it does not watch."""
    changed: dict[str, set[bytes]] = {}
    for table, keys in cells.items():
        columns = (check.watches or {}).get(table)
        changed[table] = {key for key, touched in keys.items()
                          if columns is None or touched is None or touched & columns}
    return changed


# What a check keeps per record (Bearings); another version of it is built again, by a run over everything.
BEARINGS_KEPT = 3  # 3: the bearings of store version 3 (cases.py); a check that kept another looks at all once


def _kept(previous: dict | None, check: Check) -> bool:
    """Does the store keep, for this check, the subjects each record bore on, for the tables it reads now?"""
    return bool(previous) and previous.get("bearings") == [BEARINGS_KEPT, sorted(check.reads)]


class Bearings:
    """The subjects the records a check reads bear on through their values, kept per record (cases.py).

    A person moving to another household, a migrant to another house, a
    deleted record: the store keeps the record as it is now, so the
    household or house it left, which may now show a problem (no head any
    more) or not (no longer overfull), is known only from what was kept of
    the record when it was last checked. Built from every record the first
    time and by every run over everything (``changed`` None), then brought up
    to date from the records changed since the check last ran; ``subjects``
    are those the changed records bear on now and bore on before, the ones an
    incremental run looks at.
    """

    def __init__(self, store: Store, records: Records, check: Check, changed: dict[str, set[bytes]] | None):
        self.store, self.check = store, check
        self.changed = changed or {}
        self.subjects: set = set()
        self.now: dict[tuple[str, bytes], dict[bytes, tuple[object, bool]]] = {}
        self._blind: dict = {}  # (type, subject) -> its blind index, made once a run: many records share one
        if changed is None:
            for table in check.reads:
                for record in records.rows(table):
                    self.now[table, record.key] = self._by_values(table, record, self._subjects(table, record))
            self.before = cases.all_bearings(store, check.name, check.subject)
            return
        self.before = {}
        for table in check.reads:
            keys = list(changed.get(table, ()))
            for record in records.get_many(table, keys):
                mine = self._subjects(table, record)
                self.subjects.update(mine)
                self.now[table, record.key] = self._by_values(table, record, mine) if record.live else {}
            for key, held in cases.bearings(store, check.name, check.subject, table, keys).items():
                self.before[table, key] = set(held)
                left = set(held) - set(self.now.get((table, key), {}))
                self.subjects.update(held[s] for s in left)

    def _subjects(self, table: str, record: Record) -> set:
        return {s for s in self.check.subjects_of(table, record) if s}

    def _by_values(self, table: str, record: Record, mine: set) -> dict[bytes, tuple[object, bool]]:
        """Blind subject -> (subject, whether it may be kept in clear), for those of ``mine`` (the subjects
        the record bears on) it bears on through a value other than its key. In clear only a subject that
        is the value of one of the record's columns the schema does not mark sensitive: its row holds it
        in clear already."""
        if not mine:
            return {}
        try:
            keyed = set(self.check.subjects_of(table, _KeyOnly(record)))
        except Exception:  # a subjects_of that needs more than the key: keep every subject
            keyed = set()
        # A sensitive column's cell is sealed (bytes): a str the row holds is held in clear.
        cells = record._cells.values()
        return {self.blind_index(s): (s, isinstance(s, str) and s in cells) for s in mine - keyed}

    def blind_index(self, subject) -> bytes:
        """The subject's blind index (cases.subject_index), made once for the run."""
        known = (type(subject), subject)  # 1 and 1.0 are one dict key, not one blind index
        index = self._blind.get(known)
        if index is None:
            index = self._blind[known] = cases.subject_index(self.store, self.check.subject, subject)
        return index

    def keep(self) -> None:
        """Write what changed (inside the run's transaction)."""
        cases.keep_bearings(self.store, self.check.name, self.now, self.before)


class _KeyOnly(Mapping):
    """A record as its key alone gives it, every other cell None: as a deleted record reads."""

    def __init__(self, record: Record):
        self._record, self.table, self.key, self.live = record, record.table, record.key, record.live

    def __getitem__(self, column: str):
        schema = self._record._schema
        if column not in schema.columns:
            raise KeyError(column)
        return self._record[column] if column in schema.key else None

    def __iter__(self) -> Iterator[str]:
        return iter(self._record)

    def __len__(self) -> int:
        return len(self._record)


class _Watched(dict):
    """The settings handed to a check, noting whether it read ``today``: a check that counts from the
    day (a permit expires, a resident turns 80) must look at everything again when the day moves on,
    though no record changed; one that never reads it need not."""

    dated = False

    def __getitem__(self, key):
        self.dated = self.dated or key == "today"
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.dated = self.dated or key == "today"
        return super().get(key, default)


def _plain(options: Mapping) -> dict:
    """The settings but the day, as JSON keeps them (so a kept copy compares equal)."""
    return json.loads(json.dumps({k: v for k, v in options.items() if k != "today"}, sort_keys=True, default=str))


def _used(options: Mapping, dated: bool, check: Check) -> dict:
    return {"settings": _plain(options), "today": str(options["today"]), "dated": dated,
            "bearings": [BEARINGS_KEPT, sorted(check.reads)]}


def _moved(previous: dict | None, options: Mapping) -> bool:
    """Did the settings change since the check's last run, or the day, for a check that reads it?"""
    if previous is None:
        return True
    return previous["settings"] != _plain(options) or (previous["dated"] and previous["today"] != str(options["today"]))


def after_merge(store: Store) -> list[str]:
    """Run the checks on what changed; never raises: a merge's data stays whatever the checks do.
    Return the lines to report with the merge."""
    try:
        report = run(store)
    except Exception as e:
        log.error("the checks after the merge failed: %s", _why(e))
        return [_("checks: not run after this merge ({why}); run `syncdb checks run {store} --all`")
                .format(why=_why(e), store=store.folder)]
    # Only what moved or failed: a check skipped for a domain the office does not keep is no news at each merge.
    moved = any(t.opened or t.reopened or t.fixed for t in report.tallies.values())
    return report.lines()[:1 + len(report.failed)] if moved or report.failed else []


def _selected(names: Iterable[str] | None) -> list[Check]:
    checks = registered()
    if names is None:
        return checks
    known = {c.name: c for c in checks}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SyncdbError(_("no check is named {names}; `syncdb checks list --checks` names them")
                          .format(names=", ".join(unknown)))
    return [known[n] for n in names]


def _found(store: Store, check: Check, records: Records, subjects, options) -> list[cases.Prepared]:
    prepared: dict[bytes, cases.Prepared] = {}
    for finding in check.find(records, subjects, options):
        subject = cases.subject_index(store, check.subject, finding.subject)
        if subject in prepared:
            log.warning("check %s found its subject twice; the first finding is kept", check.name)
            continue
        shown = [{"table": r.table, "key": r.key_values()} for r in finding.records]
        evidence = finding.evidence if finding.evidence is not None else [shown, finding.figures]
        community = finding.community or next((r.get("community_code") for r in finding.records), None)
        prepared[subject] = cases.Prepared(
            subject, cases.digest(store, [check.name, finding.subject, evidence]), community,
            {"subject": finding.subject, "message": finding.message, "figures": finding.figures, "records": shown},
            [(r.table, r.key) for r in finding.records])
    return list(prepared.values())


def _why(error: BaseException) -> str:
    """The error's kind and where it was raised: never its message, which may hold a value a check read."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{where}"


# ---------------------------------------------------------------- for the pages and the CLI

def list_cases(store: Store, check: str | None = None, community: str | None = None, states=cases.ACTIVE,
               masked: bool = True, limit: int | None = None, offset: int = 0) -> list[dict]:
    """The cases by check and community, each with its check's title; subjects masked unless ``masked`` is False;
    with ``limit``, a page of them (cases.listing)."""
    titles = {c.name: _(c.title) for c in registered()}
    return [_shown(store, item, titles.get(item["check"], item["check"]), masked)
            for item in cases.listing(store, check, community, states, limit, offset)]


def show_case(store: Store, case_id: int, masked: bool = True) -> dict:
    """One case in full for a role: decrypted, or with ID numbers and names masked for a masked role."""
    item = cases.get(store, case_id)  # opened once: it decrypts the finding
    return _shown(store, item, title(item["check"]), masked)


def cases_of_records(store: Store, records: set[tuple[str, bytes]], masked: bool = True) -> list[dict]:
    """The open and confirmed cases built on any of these records ((table, blind key)), shown for a
    role, each with the line a person page lists (``text``) and its place on its check's page (``href``)."""
    found = []
    for case_id in cases.naming(store, records):
        item = show_case(store, case_id, masked)
        item["text"] = _("{title} ({state}): {message}").format(
            title=item["title"], state=item["state_label"], message=item["message"])
        item["href"] = f"/-/checks/{item['check']}#case-{case_id}"
        found.append(item)
    return found


def _shown(store: Store, item: dict, check_title: str, masked: bool) -> dict:
    item = dict(item, title=check_title, severity_label=_(SEVERITIES.get(item["severity"], item["severity"])),
                state_label=_(cases.STATES[item["state"]]))
    records = []
    for r in item["records"]:
        schema = store.tables.get(r["table"])
        sensitive = [bool(schema and schema.columns[c].sensitive) for c in (schema.key if schema else [])]
        key = [mask(v) if masked and s else v for v, s in zip(r["key"], sensitive or [False] * len(r["key"]))]
        records.append({"table": r["table"], "label": schema.label if schema else r["table"], "key": key})
    if masked:
        ids = [item["subject"]] if item["subject_kind"] == "person" else []
        ids += [v for r in item["records"] for v in r["key"] if isinstance(v, str) and ric.is_valid(v)]
        item["figures"] = _masked(item["figures"], _born(ids))
        item["message"] = _masked(item["message"], _born(ids))
    item["records"] = records
    if masked and item["subject_kind"] == "person":
        item["subject"] = mask(item["subject"])
    return item


def _born(ids: Iterable[str]) -> dict[str, str]:
    """The birth date each ID number carries (1990-05-17) -> its year: the ID mask hides exactly those
    eight digits, so a date beside a masked number would give the number back."""
    return {f"{i[6:10]}-{i[10:12]}-{i[12:14]}": i[6:10] for i in ids if len(i) == 18}


def _masked(value, born: dict[str, str], key: str = ""):
    """The figures (or the sentence) as a masked role sees them: a birth date cut to its year, whether a
    figure named for one or the date an ID number of the case carries; any valid ID number masked."""
    if isinstance(value, dict):
        return {k: _masked(v, born, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v, born, key) for v in value]
    if not isinstance(value, str):
        return value
    if key.endswith("birth_date") and len(value) >= 4:
        return value[:4]
    for day, year in born.items():
        value = value.replace(day, year)
    return _ID_LIKE.sub(lambda m: mask(m.group()) if ric.is_valid(m.group()) else m.group(), value)


def case_counts(store: Store) -> dict[str, dict[str | None, dict[str, int]]]:
    """check -> community -> state -> cases: the counts per community a 核查 page or dashboard shows."""
    out: dict = {}
    for check, community, state, n in cases.counts(store):
        out.setdefault(check, {}).setdefault(community, {})[state] = n
    return out

