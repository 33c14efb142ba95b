"""The record rules that look past one record: ``references``, ``implies`` and ``one_per``.

A validator (validate.py) judges one value; these rules judge a record with
the others it names (docs/schemas.md, "Record rules"). The rules are written
once, here, against a small look-up interface (``Records``), and both sides
bring their own records:

- at a community, ``WorkingRecords`` reads the working databases in the
  folder, read-only; a domain whose database is not there is not checked.
  ``syncdb validate`` reports what breaks a rule and ``push`` holds it back.
- at the office, ``MemoryRecords`` holds the store's live records decrypted
  in memory (never in a file; status.py reads them), and ``office_warnings`` lists what breaks a rule
  for ``syncdb status``: never a rejection, since a household may arrive in a
  later bundle than its persons and the merge must not depend on the order.

Messages never hold a sensitive value in clear: they are masked as keys are.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple, Protocol

from .i18n import _
from .masks import mask
from .schema import Column, Domain, Table
from .workdir import db_path


class Problem(NamedTuple):
    """A broken rule: the field to correct and why (validate.py makes it an error Finding)."""

    field: str
    why: str


class NotKept(Exception):
    """The referenced table is not kept here (its domain's working database is absent): not checked."""


class Records(Protocol):
    def find(self, table: Table, key: list) -> dict | None:
        """The live record of ``table`` with this natural key, or None; NotKept when not kept here."""

    def holding(self, table: Table, group) -> int:
        """How many live records of ``group`` (a value of table.one_per.group) hold the one_per value."""


def has_rules(table: Table) -> bool:
    """Whether any record rule applies to the table's records."""
    return bool(table.one_per) or any(c.references or c.implies for c in table.columns.values())


def rule_problems(table: Table, record: dict, domains: dict[str, Domain], records: Records) -> list[Problem]:
    """Every record rule the record breaks, as errors on the field to correct."""
    problems = []
    for column in table.columns.values():
        if column.implies:
            problems += _implies(table, column, record, domains[table.domain])
        if column.references:
            problems += _reference(table, column, record, domains, records)
    if table.one_per:
        problems += _one_per(table, record, domains[table.domain], records)
    return problems


def _text(value) -> str | None:
    """A value as the rules compare it; None for an empty one (which no rule checks)."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _shown(column: Column, value) -> str:
    return mask(value) if column.sensitive else str(value)


def _meaning(domain: Domain, column: Column, code: str) -> str:
    """A value as a message shows it: a code with its meaning, a sensitive value masked."""
    if column.sensitive:
        return mask(code)
    if not column.codes:
        return code
    meaning = domain.code_table(column.codes).get(code)
    return f"{code} ({meaning})" if meaning else code


def _implies(table: Table, column: Column, record: dict, domain: Domain) -> list[Problem]:
    code = _text(record.get(column.name))
    problems = []
    for other, wanted in column.implies.get(code, {}).items():
        actual = _text(record.get(other))
        if actual is None or actual == wanted:
            continue
        other_column = table.columns[other]
        problems.append(Problem(
            other,
            _("{column} {code} needs {other} {wanted}, but it is {actual}; correct one of them").format(
                column=column.name, code=_meaning(domain, column, code), other=other,
                wanted=_meaning(domain, other_column, wanted), actual=_meaning(domain, other_column, actual))))
    return problems


def target_table(domains: dict[str, Domain], column: Column) -> Table | None:
    """The table a ``references`` column names, or None when its domain is not loaded."""
    domain_name, __, table_name = column.references.partition(".")
    domain = domains.get(domain_name)
    return domain.tables.get(table_name) if domain else None


def _reference(table: Table, column: Column, record: dict, domains, records: Records) -> list[Problem]:
    value = _text(record.get(column.name))
    target = target_table(domains, column)
    if value is None or target is None:
        return []
    try:
        found = records.find(target, [value])
    except NotKept:
        return []
    shown = _shown(column, value)
    if found is None:
        return [Problem(column.name,
                        _("{value} is no record of {table} ({label}); enter that record first, "
                          "or correct the {column}").format(
                            value=shown, table=target.qualified, label=target.label, column=column.name))]
    problems = []
    for left, right in column.same.items():
        mine, theirs = _text(record.get(left)), _text(found.get(right))
        if mine != theirs:
            left_column, right_column = table.columns[left], target.columns[right]
            empty = _("(empty)")
            problems.append(Problem(
                column.name,
                _("{table} {value} has {right} {theirs}, but this record's {left} is {mine}; "
                  "they must be the same").format(
                    table=target.qualified, value=shown, right=right, left=left,
                    theirs=empty if theirs is None else _shown(right_column, theirs),
                    mine=empty if mine is None else _shown(left_column, mine))))
    return problems


def _one_per(table: Table, record: dict, domain: Domain, records: Records) -> list[Problem]:
    rule = table.one_per
    group = _text(record.get(rule.group))
    if group is None or not rule.counts(record):
        return []
    count = records.holding(table, group)
    column = table.columns[rule.column]
    value = _meaning(domain, column, rule.value)
    shown_group = _shown(table.columns[rule.group], group)
    if count == 0:
        return [Problem(rule.group,
                        _("{group} {value} has no record with {column} {wanted}; exactly one must have it").format(
                            group=rule.group, value=shown_group, column=rule.column, wanted=value))]
    if count > 1 and _text(record.get(rule.column)) == rule.value:
        return [Problem(rule.column,
                        _("{group} {value} has {count} records with {column} {wanted}; exactly one may have it").format(
                            group=rule.group, value=shown_group, count=count, column=rule.column, wanted=value))]
    return []


def shown_key(table: Table, record: dict) -> str:
    """A record's key as messages show it: sensitive values masked."""
    return " / ".join(_shown(table.columns[k], record.get(k)) for k in table.key)


# ---------------------------------------------------------------- at a community

class WorkingRecords:
    """The live records of a community's working databases, read-only, for the rules."""

    def __init__(self, folder, domains: dict[str, Domain]):
        self.folder = Path(folder)
        self.domains = domains
        self._conns: dict[str, sqlite3.Connection | None] = {}
        self._groups: dict[str, Counter] = {}
        self._kept: dict[str, bool] = {}

    def __enter__(self) -> "WorkingRecords":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for conn in self._conns.values():
            if conn is not None:
                conn.close()
        self._conns.clear()

    def _conn(self, table: Table) -> sqlite3.Connection:
        if table.domain not in self._conns:
            path = db_path(self.folder, table.domain)
            conn = None
            if path.is_file():
                conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
            self._conns[table.domain] = conn
        conn = self._conns[table.domain]
        # Asked once per table (find runs once per reference of every record pushed).
        if table.qualified not in self._kept:
            self._kept[table.qualified] = conn is not None and conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table.name,)).fetchone() is not None
        if not self._kept[table.qualified]:
            raise NotKept(table.qualified)
        return conn

    def find(self, table: Table, key: list) -> dict | None:
        conn = self._conn(table)
        where = " AND ".join(f"[{k}] = ?" for k in table.key)
        cursor = conn.execute(f"SELECT * FROM [{table.name}] WHERE {where} LIMIT 1", [str(k) for k in key])
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip((d[0] for d in cursor.description), row))

    def holding(self, table: Table, group) -> int:
        # One pass per table (cached): a per-record count would read the table once per record.
        if table.qualified not in self._groups:
            rule = table.one_per
            where = "".join(f" AND trim([{c}]) = ?" for c, _value in rule.where)
            rows = self._conn(table).execute(
                f"SELECT [{rule.group}], count(*) FROM [{table.name}] WHERE trim([{rule.column}]) = ?{where} "
                f"GROUP BY [{rule.group}]", (rule.value, *(v for _column, v in rule.where)))
            counts = Counter()
            for value, n in rows:
                if _text(value) is not None:
                    counts[_text(value)] += n
            self._groups[table.qualified] = counts
        return self._groups[table.qualified][_text(group)]

    def record(self, table: Table, key_json: str) -> dict | None:
        """The current row of a key as push knows it (JSON list of the key values)."""
        try:
            return self.find(table, json.loads(key_json))
        except NotKept:
            return None


# ---------------------------------------------------------------- at the office

class MemoryRecords:
    """Live records read once per table by ``read(table)`` (the office's, decrypted) and kept in memory."""

    def __init__(self, read: Callable[[Table], Iterable[dict]], domains: dict[str, Domain]):
        self.read = read
        self.domains = domains
        self._tables: dict[str, dict[str, dict]] = {}
        self._groups: dict[str, Counter] = {}

    def records(self, table: Table) -> dict[str, dict]:
        """{key as JSON: record} of the table's live records."""
        if table.qualified not in self._tables:
            self._tables[table.qualified] = {_key_text(r.get(k) for k in table.key): r for r in self.read(table)}
        return self._tables[table.qualified]

    def find(self, table: Table, key: list) -> dict | None:
        return self.records(table).get(_key_text(key))

    def holding(self, table: Table, group) -> int:
        if table.qualified not in self._groups:
            rule = table.one_per
            self._groups[table.qualified] = Counter(
                _text(r.get(rule.group)) for r in self.records(table).values()
                if _text(r.get(rule.column)) == rule.value and _text(r.get(rule.group)) is not None
                and rule.counts(r))
        return self._groups[table.qualified][_text(group)]


def read_columns(table: Table, domains: dict[str, Domain]) -> list[str]:
    """The columns of ``table`` the rules read, as its own or as another table's target, in
    schema order: the office decrypts only these (a name or a phone no rule needs stays sealed)."""
    wanted = set(table.key) | {table.owner}
    if table.one_per:
        wanted |= {table.one_per.group, table.one_per.column, *(c for c, __ in table.one_per.where)}
    for column in table.columns.values():
        if column.references:
            wanted |= {column.name, *column.same}
        for needs in column.implies.values():
            wanted |= {column.name, *needs}
    for other in (t for d in domains.values() for t in d.tables.values()):
        for column in other.columns.values():
            if column.references and target_table(domains, column) is table:
                wanted |= set(column.same.values())
    return [c for c in table.columns if c in wanted]


def _key_text(values) -> str:
    return json.dumps([_text(v) for v in values], ensure_ascii=False)


def office_warnings(read: Callable[[Table], Iterable[dict]], domains: dict[str, Domain]) -> list[str]:
    """Every broken record rule among the live records ``read(table)`` gives, one line each:
    ``community / table / masked key / field: why``."""
    records = MemoryRecords(read, domains)
    lines = []
    for domain in domains.values():
        for table in domain.tables.values():
            if not has_rules(table):
                continue
            for record in records.records(table).values():
                for p in rule_problems(table, record, domains, records):
                    lines.append(f"{record.get(table.owner) or '?'} / {table.qualified} / "
                                 f"{shown_key(table, record)} / {p.field}: {p.why}")
    return lines
