"""Load and check the domain schemas (``schemas/<domain>.toml``).

A domain is one declarative file: its tables, their columns, natural keys,
owner columns and per-column conflict policies. Adding a domain is adding a
file; nothing here knows the names of the shipped domains. The format is
documented in docs/schemas.md, and a test fails when a keyword below is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from . import codes, plugins
from .errors import SchemaError
from .i18n import _
from .paths import shipped

# Where the shipped schemas live; SYNCDB_SCHEMAS or --schemas points elsewhere.
DEFAULT_SCHEMAS = shipped("schemas")

DOMAIN_KEYWORDS = {
    "label": "Chinese name of the domain, shown in Datasette",
    "version": "schema version, a positive integer; raise it when a table changes",
    "description": "free text for people",
    "tables": "the tables, one [tables.NAME] section each",
    "codes": "code tables of this domain, one [codes.NAME] section each",
}
TABLE_KEYWORDS = {
    "label": "Chinese name of the table",
    "description": "free text for people",
    "key": "the natural key: a list of column names; records sync by it, never by rowid",
    "owner": "the column naming the community that owns a record (community_code)",
    "policy": "default conflict policy of the table's columns",
    "columns": "the columns, in order, as NAME = { … } inline tables",
    "one_per": "a record-group rule, like { group = \"household_no\", column = \"relationship\", value = \"02\" }: "
               "each group of live records with a non-empty group value has exactly one record holding that value; "
               "an optional where = { status = \"normal\" } counts and checks only the records holding those values",
}
COLUMN_KEYWORDS = {
    "type": "text, integer, real or date (ISO 8601, YYYY-MM-DD)",
    "label": "Chinese name of the column",
    "description": "free text for people",
    "required": "true if the value may not be empty (key columns always are)",
    "sensitive": "true to encrypt the value at the office and mask it in Datasette",
    "validator": "name of a validator: id_number, community_code, phone, division_code, uscc",
    "codes": "name of a code table the value must come from",
    "policy": "conflict policy of this column, overriding the table's",
    "matches": "for an id_number column: the columns its embedded birth_date and sex must agree with",
    "references": "\"domain.table\": a non-empty value must be the key of a live record of that table "
                  "(whose key is one column); or { table = \"domain.table\", same = { THIS = \"THAT\" } }: "
                  "also, the referenced record's column THAT equals this record's column THIS",
    "implies": "{ \"CODE\" = { COLUMN = \"VALUE\" }, … }: when this column holds CODE, "
               "the record's other columns must hold those values",
}
CODE_TABLE_KEYWORDS = {
    "was": "[codes.NAME.was]: what the codes of an earlier version became, OLD = \"NEW\" or "
           "OLD = { code = \"NEW\", set = { COLUMN = \"VALUE\" } }; `syncdb community upgrade` rewrites them",
}
TYPES = {"text": "TEXT", "integer": "INTEGER", "real": "REAL", "date": "TEXT"}
VALIDATORS = ("id_number", "community_code", "phone", "division_code", "uscc")
MATCHES = ("birth_date", "sex")
# The built-in conflict policies (contract 3). Plugins add more through the
# conflict_policies hook; loading a schema asks them (plugins.policies()).
POLICIES = ("lww", "owner", "office", "prefer_non_null", "max", "min", "manual")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    label: str
    policy: str
    required: bool = False
    sensitive: bool = False
    validator: str | None = None
    codes: str | None = None
    matches: dict = field(default_factory=dict)
    description: str = ""
    # "domain.table" whose one-column key a non-empty value must name, or None.
    references: str | None = None
    # With references: {this column: column of the referenced record} that must be equal.
    same: dict = field(default_factory=dict)
    # {code: {other column: value}}: what a code in this column requires of the record.
    implies: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Was:
    """What an old code became (``[codes.NAME.was]``): the new code, and values it sets in the record."""

    code: str
    set: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OnePer:
    """A record-group rule: each group has exactly one record whose ``column`` holds ``value``."""

    group: str
    column: str
    value: str
    where: tuple = ()  # (column, value) pairs: only the records holding them count, and are checked

    def counts(self, record: dict) -> bool:
        """Does the rule look at this record (it holds every ``where`` value)?"""
        return all(str(record.get(c) or "").strip() == v for c, v in self.where)


@dataclass(frozen=True)
class Table:
    domain: str
    name: str
    label: str
    key: tuple[str, ...]
    owner: str
    columns: dict[str, Column]
    description: str = ""
    one_per: OnePer | None = None

    # Cached (the merge asks for them for every change); a frozen dataclass
    # still lets cached_property fill in the instance's __dict__.
    @cached_property
    def qualified(self) -> str:
        """``domain.table``, as messages and bundles name a table."""
        return f"{self.domain}.{self.name}"

    @cached_property
    def sensitive_columns(self) -> list[str]:
        return [c.name for c in self.columns.values() if c.sensitive]

    @cached_property
    def id_columns(self) -> list[str]:
        """Sensitive ID-number columns: the office keeps a blind index of them for look-ups by ID."""
        return [c.name for c in self.columns.values() if c.sensitive and c.validator == "id_number"]

    @cached_property
    def non_key(self) -> list[str]:
        """The columns outside the natural key, in schema order."""
        return [c for c in self.columns if c not in self.key]

    def create_sql(self) -> str:
        """DDL of the table in a community working database.

        The natural key is a UNIQUE constraint over an ordinary rowid table:
        local apps keep whatever rowids they like, syncdb never relies on them.
        """
        cols = []
        for c in self.columns.values():
            not_null = " NOT NULL" if c.required else ""
            cols.append(f"  [{c.name}] {TYPES[c.type]}{not_null}")
        key = ", ".join(f"[{k}]" for k in self.key)
        cols.append(f"  UNIQUE ({key})")
        return f"CREATE TABLE IF NOT EXISTS [{self.name}] (\n" + ",\n".join(cols) + "\n)"


@dataclass(frozen=True)
class Domain:
    name: str
    label: str
    version: int
    tables: dict[str, Table]
    codes: dict[str, dict[str, str]]
    path: Path
    description: str = ""
    # Code table name -> {old code: Was}. Not in the fingerprint: it changes what an upgrade
    # rewrites, not what a record may hold.
    was: dict[str, dict[str, Was]] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the schema's meaning (not its comments or layout), first 16 hex digits.

        Bundles carry it so the office can tell which schema a change was
        written under.
        """
        doc = {
            "name": self.name,
            "version": self.version,
            "tables": {t.name: _table_meaning(t) for t in self.tables.values()},
            # A new code (say, a new benefit type) changes what the office accepts.
            "codes": {name: sorted(table) for name, table in self.codes.items()},
        }
        canonical = json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()
        # 64 bits tell two schemas apart; every bundle header carries one per domain.
        return hashlib.sha256(canonical).hexdigest()[:16]

    def code_table(self, name: str) -> dict[str, str]:
        return self.codes.get(name) or codes.NATIONAL[name]


def _table_meaning(t: Table) -> dict:
    """What of a table the fingerprint covers. The record rules are added only
    where declared, so a schema that uses none keeps the fingerprint it had."""
    columns = []
    for c in t.columns.values():
        meaning = [c.name, c.type, c.required, c.sensitive, c.validator, c.codes, c.matches]
        rules = {k: v for k, v in (("references", c.references), ("same", c.same), ("implies", c.implies)) if v}
        if rules:
            meaning.append(rules)
        columns.append(meaning)
    doc = {"key": t.key, "owner": t.owner, "columns": columns}
    if t.one_per:
        doc["one_per"] = [t.one_per.group, t.one_per.column, t.one_per.value]
        if t.one_per.where:
            doc["one_per"].append([list(pair) for pair in t.one_per.where])
    return doc


def schemas_dir(directory: str | os.PathLike | None = None) -> Path:
    """The folder to read schemas from: the argument, $SYNCDB_SCHEMAS, or the shipped ones."""
    return Path(directory or os.environ.get("SYNCDB_SCHEMAS") or DEFAULT_SCHEMAS)


def load_domains(directory: str | os.PathLike | None = None, extra_policies=()) -> dict[str, Domain]:
    """Load every ``*.toml`` in the schemas folder, keyed by domain name.

    A column's policy may be a built-in one or one a plugin adds, so a
    library caller gets the same schemas as the ``syncdb`` command;
    ``extra_policies`` names more, for rules kept outside the plugin manager.
    """
    folder = schemas_dir(directory)
    if not folder.is_dir():
        raise SchemaError(folder, _("no such schemas folder; point --schemas or SYNCDB_SCHEMAS at one"))
    domains = {}
    for path in sorted(folder.glob("*.toml")):
        domain = load_domain(path, extra_policies)
        domains[domain.name] = domain
    if not domains:
        raise SchemaError(folder, _("holds no *.toml schema file"))
    for domain in domains.values():
        check_references(domain, domains)
    return domains


def check_references(domain: Domain, domains: dict[str, Domain]) -> None:
    """Check the ``references`` of one domain against the loaded ones.

    A reference into a domain that is not loaded is left alone: a domain is
    just a file, and a folder may hold only some of them (the reference is
    then not checked, as at a community that does not keep that domain).
    A reference into a loaded domain must name a table of it whose key is
    one column, and ``same`` must name columns of both tables.
    """
    for table in domain.tables.values():
        for column in table.columns.values():
            if column.references:
                _check_reference(domain, table, column, domains)


def _check_reference(domain, table, column, domains):
    def fail(message):
        raise SchemaError(domain.path, message, table=table.name, column=column.name)

    target_domain, __, target_name = column.references.partition(".")
    if target_domain not in domains:
        return
    target = domains[target_domain].tables.get(target_name)
    if target is None:
        fail(_("'references' names '{references}', but domain '{domain}' has no table "
               "'{table}'; use one of {tables}").format(
            references=column.references, domain=target_domain, table=target_name,
            tables=", ".join(domains[target_domain].tables)))
    if len(target.key) != 1:
        fail(_("'references' names '{references}', whose key ({key}) is not one column; "
               "only a table keyed by one column can be referenced").format(
            references=column.references, key=", ".join(target.key)))
    # A column holding another record's key (or, by 'same', another record's value) holds that
    # value: sensitive there, it must be sensitive here, or it would lie in plaintext at the office.
    if target.columns[target.key[0]].sensitive and not column.sensitive:
        fail(_("'references' names '{references}', whose key {key} is sensitive; "
               "mark this column sensitive = true too").format(references=column.references, key=target.key[0]))
    for left, right in column.same.items():
        if right not in target.columns:
            fail(_("'same' names '{right}', which is not a column of {references}").format(
                right=right, references=column.references))
        if target.columns[right].sensitive and not table.columns[left].sensitive:
            fail(_("'same' makes '{left}' equal to {references}.{right}, which is sensitive; "
                   "mark '{left}' sensitive = true too").format(left=left, references=column.references, right=right))


def load_domain(path: str | os.PathLike, extra_policies=()) -> Domain:
    """Load and check one schema file; every complaint names file, table and column.

    Policies are checked as ``load_domains`` checks them.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SchemaError(path, _("is not valid TOML: {error}").format(error=e))
    except (OSError, UnicodeDecodeError) as e:
        raise SchemaError(path, _("cannot be read: {error}").format(error=e))
    name = path.stem
    if not name.isidentifier() or not name.isascii():
        raise SchemaError(path, _("the file name is the domain name and must be a plain identifier, like huji.toml"))
    _unknown_keys(path, doc, DOMAIN_KEYWORDS)
    label = _text(path, doc, "label", required=True)
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SchemaError(path, _("'version' must be a positive integer"))
    domain_codes, was = _load_codes(path, doc.get("codes", {}))
    # name → codes; a domain's own table of a name stands before the national one (as code_table does)
    known_codes = {**codes.NATIONAL, **domain_codes}
    policies = set(POLICIES) | set(plugins.policies()) | set(extra_policies)
    raw_tables = doc.get("tables")
    if not isinstance(raw_tables, dict) or not raw_tables:
        raise SchemaError(path, _("declares no tables; add a [tables.NAME] section"))
    tables = {
        tname: _load_table(path, name, tname, raw, known_codes, policies)
        for tname, raw in raw_tables.items()
    }
    _check_was_sets(path, was, known_codes, tables)
    return Domain(name, label, version, tables, domain_codes, path, doc.get("description", ""), was)


def _load_table(path, domain, name, raw, known_codes, policies) -> Table:
    if not isinstance(raw, dict):
        raise SchemaError(path, _("must be a [tables.NAME] section"), table=name)
    if not name.isidentifier():
        raise SchemaError(path, _("table names must be plain identifiers"), table=name)
    _unknown_keys(path, raw, TABLE_KEYWORDS, table=name)
    label = _text(path, raw, "label", required=True, table=name)
    default_policy = raw.get("policy", "lww")
    _check_policy(path, default_policy, policies, table=name)
    raw_columns = raw.get("columns")
    if not isinstance(raw_columns, dict) or not raw_columns:
        raise SchemaError(path, _("declares no columns"), table=name)
    key = raw.get("key")
    if isinstance(key, str):
        key = [key]
    if not isinstance(key, list) or not key or not all(isinstance(k, str) for k in key):
        raise SchemaError(path, _("'key' must be a list of column names, like key = [\"id_number\"]"), table=name)
    for k in key:
        if k not in raw_columns:
            raise SchemaError(path, _("is named in 'key' but is not a column of the table"), table=name, column=k)
    owner = raw.get("owner")
    if not isinstance(owner, str):
        raise SchemaError(path, _("'owner' must name the column holding the owning community, like "
                                  "owner = \"community_code\""), table=name)
    if owner not in raw_columns:
        raise SchemaError(path, _("is named as 'owner' but is not a column of the table"), table=name, column=owner)
    columns = {}
    for cname, craw in raw_columns.items():
        columns[cname] = _load_column(
            path, name, cname, craw, default_policy, known_codes, policies,
            in_key=cname in key, all_columns=raw_columns,
        )
    one_per = _load_one_per(path, name, raw.get("one_per"), raw_columns)
    table = Table(domain, name, label, tuple(key), owner, columns, raw.get("description", ""), one_per)
    return table


def _load_column(path, table, name, raw, default_policy, known_codes, policies, in_key, all_columns) -> Column:
    def fail(message):
        raise SchemaError(path, message, table=table, column=name)

    if not isinstance(raw, dict):
        fail(_("must be an inline table, like name = { type = \"text\", label = \"姓名\" }"))
    if not name.isidentifier():
        fail(_("column names must be plain identifiers"))
    _unknown_keys(path, raw, COLUMN_KEYWORDS, table=table, column=name)
    ctype = raw.get("type", "text")
    if ctype not in TYPES:
        fail(_("unknown type '{type}'; use one of {types}").format(type=ctype, types=", ".join(TYPES)))
    label = _text(path, raw, "label", required=True, table=table, column=name)
    policy = raw.get("policy", default_policy)
    _check_policy(path, policy, policies, table=table, column=name)
    for flag in ("required", "sensitive"):
        if not isinstance(raw.get(flag, False), bool):
            fail(_("'{flag}' must be true or false").format(flag=flag))
    validator = raw.get("validator")
    if validator is not None and validator not in VALIDATORS:
        fail(_("unknown validator '{validator}'; use one of {validators}").format(
            validator=validator, validators=", ".join(VALIDATORS)))
    code_table = raw.get("codes")
    if code_table is not None and code_table not in known_codes:
        fail(_("unknown code table '{codes}'; declare it under [codes.{codes}] or use one of {known}").format(
            codes=code_table, known=", ".join(sorted(known_codes))))
    matches = raw.get("matches", {})
    if matches:
        if validator != "id_number":
            fail(_("'matches' only applies to a column with validator = \"id_number\""))
        if not isinstance(matches, dict):
            fail(_("'matches' must be an inline table, like { birth_date = \"birth_date\", sex = \"sex\" }"))
        for what, other in matches.items():
            if what not in MATCHES:
                fail(_("'matches' knows {known}, not '{what}'").format(known=", ".join(MATCHES), what=what))
            if other not in all_columns:
                fail(_("'matches' names '{other}', which is not a column of the table").format(other=other))
    references, same = _load_references(fail, raw.get("references"), all_columns)
    implies = _load_implies(fail, raw.get("implies"), code_table, known_codes, all_columns)
    return Column(
        name=name,
        type=ctype,
        label=label,
        policy=policy,
        required=bool(raw.get("required", False)) or in_key,
        sensitive=raw.get("sensitive", False),
        validator=validator,
        codes=code_table,
        matches=dict(matches),
        description=raw.get("description", ""),
        references=references,
        same=same,
        implies=implies,
    )


def _load_references(fail, raw, all_columns) -> tuple[str | None, dict]:
    """``references = "domain.table"`` or ``{ table = "domain.table", same = { THIS = "THAT" } }``.

    Here only the form and this table's columns are checked; the referenced
    table is checked once every domain is loaded (check_references).
    """
    if raw is None:
        return None, {}
    same = {}
    if isinstance(raw, dict):
        extra = set(raw) - {"table", "same"}
        if extra:
            fail(_("'references' knows table and same, not {extra}").format(extra=", ".join(sorted(extra))))
        same = raw.get("same", {})
        raw = raw.get("table")
        if not isinstance(same, dict) or not all(isinstance(v, str) for v in same.values()):
            fail(_("'same' must be an inline table of column names, like same = { household_no = \"household_no\" }"))
        for left in same:
            if left not in all_columns:
                fail(_("'same' names '{left}', which is not a column of the table").format(left=left))
    if not isinstance(raw, str) or raw.count(".") != 1 or not all(p.isidentifier() for p in raw.split(".")):
        fail(_("'references' must name a table as \"domain.table\", like references = \"huji.households\""))
    return raw, dict(same)


def _load_implies(fail, raw, code_table, known_codes, all_columns) -> dict:
    """``implies = { "CODE" = { COLUMN = "VALUE" } }``; CODE must be a code of this column."""
    if raw is None:
        return {}
    if not code_table:
        fail(_("'implies' only applies to a column with a code table (codes = \"…\")"))
    if not isinstance(raw, dict) or not raw:
        fail(_("'implies' must be an inline table, like implies = { \"11\" = { sex = \"1\" } }"))
    for code, wanted in raw.items():
        if code not in known_codes[code_table]:
            fail(_("'implies' names code '{code}', which is not in code table '{codes}'").format(
                code=code, codes=code_table))
        if not isinstance(wanted, dict) or not wanted:
            fail(_("'implies' for code '{code}' must be an inline table of values, like {{ sex = \"1\" }}").format(
                code=code))
        for other, value in wanted.items():
            if other not in all_columns:
                fail(_("'implies' for code '{code}' names '{other}', which is not a column of the table").format(
                    code=code, other=other))
            if not isinstance(value, str):
                fail(_("'implies' for code '{code}': the value of '{other}' must be in quotes").format(
                    code=code, other=other))
    return {code: dict(wanted) for code, wanted in raw.items()}


def _load_one_per(path, table, raw, all_columns) -> OnePer | None:
    if raw is None:
        return None
    shape = _("'one_per' must be { group = \"COLUMN\", column = \"COLUMN\", value = \"VALUE\" }, "
              "with an optional where = { COLUMN = \"VALUE\", … }")
    where = raw.get("where", {}) if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or not {"group", "column", "value"} <= set(raw) <= {"group", "column", "value", "where"} \
            or not all(isinstance(raw[k], str) for k in ("group", "column", "value")) \
            or not isinstance(where, dict) or not all(isinstance(v, str) for v in where.values()):
        raise SchemaError(path, shape, table=table)
    for what, name in [("group", raw["group"]), ("column", raw["column"]), *(("where", c) for c in where)]:
        if name not in all_columns:
            raise SchemaError(path, _("'one_per' {what} names '{name}', which is not a column of the table").format(
                what=what, name=name),
                              table=table)
    return OnePer(raw["group"], raw["column"], raw["value"], tuple(sorted(where.items())))


def _load_codes(path, raw) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Was]]]:
    """The domain's code tables, and each one's ``was`` table (old code -> Was)."""
    if not isinstance(raw, dict):
        raise SchemaError(path, _("'codes' must hold [codes.NAME] sections"))
    tables, was = {}, {}
    for name, entries in raw.items():
        if not isinstance(entries, dict):
            raise SchemaError(path, _("code table '{name}' must map codes to Chinese names, like 01 = \"汉族\"").format(
                name=name))
        entries = dict(entries)
        old = entries.pop("was", None)
        if not entries:
            raise SchemaError(path, _("code table '{name}' must map codes to Chinese names, like 01 = \"汉族\"").format(
                name=name))
        for code, meaning in entries.items():
            if not isinstance(meaning, str):
                raise SchemaError(path, _("code table '{name}': code '{code}' must map to a name in quotes").format(
                    name=name, code=code))
        tables[name] = entries
        if old is not None:
            was[name] = _load_was(path, name, old, entries)
    return tables, was


def _load_was(path, name, raw, entries) -> dict[str, Was]:
    """``[codes.NAME.was]``: OLD = "NEW" or OLD = { code = "NEW", set = { COLUMN = "VALUE" } }."""
    where = _("code table '{name}': [codes.{name}.was]").format(name=name)
    if not isinstance(raw, dict) or not raw:
        raise SchemaError(path, _("{where} must map old codes to codes of the table, like pension_employee = \"110\"").format(
            where=where))
    mapped = {}
    for old, target in raw.items():
        if isinstance(target, dict):
            if set(target) - {"code", "set"} or not isinstance(target.get("set", {}), dict):
                raise SchemaError(path, _("{where}: '{old}' must be \"NEW\" or {{ code = \"NEW\", set = {{ COLUMN = "
                                          "\"VALUE\" }} }}").format(where=where, old=old))
            new, sets = target.get("code"), dict(target.get("set", {}))
        else:
            new, sets = target, {}
        if new not in entries:
            raise SchemaError(path, _("{where}: old code '{old}' maps to '{new}', which is not a code of the table; "
                                      "use one of {codes}").format(where=where, old=old, new=new, codes=", ".join(entries)))
        if old in entries:
            raise SchemaError(path, _("{where}: '{old}' is a code of the table now; an old code in use "
                                      "again cannot be rewritten").format(where=where, old=old))
        if not all(isinstance(v, str) for v in sets.values()):
            raise SchemaError(path, _("{where}: the values 'set' for '{old}' gives must be in quotes").format(
                where=where, old=old))
        mapped[old] = Was(new, sets)
    return mapped


def _check_was_sets(path, was, known_codes, tables) -> None:
    """A ``set`` of a ``was`` names columns of every table holding a column with that code table,
    with values of the column's own codes."""
    for name, mapped in was.items():
        for table in tables.values():
            if not any(c.codes == name for c in table.columns.values()):
                continue
            for old, target in mapped.items():
                for other, value in target.set.items():
                    column = table.columns.get(other)
                    if column is None or column.name in table.key:
                        raise SchemaError(path, _("[codes.{name}.was]: '{old}' sets '{other}', which is not a "
                                                  "column outside the key of the table").format(
                            name=name, old=old, other=other), table=table.name)
                    if column.codes and value not in known_codes[column.codes]:
                        raise SchemaError(path, _("[codes.{name}.was]: '{old}' sets '{other}' to '{value}', which is "
                                                  "not in code table '{codes}'").format(
                            name=name, old=old, other=other, value=value, codes=column.codes), table=table.name)


def _check_policy(path, policy, policies, table=None, column=None):
    if policy not in policies:
        raise SchemaError(
            path, _("unknown conflict policy '{policy}'; use one of {policies}").format(
                policy=policy, policies=", ".join(sorted(policies))),
            table=table, column=column,
        )


def _unknown_keys(path, raw, allowed, table=None, column=None):
    for key in raw:
        if key not in allowed:
            raise SchemaError(
                path, _("unknown keyword '{key}'; allowed here: {allowed}").format(key=key, allowed=", ".join(allowed)),
                table=table, column=column,
            )


def _text(path, raw, key, required=False, table=None, column=None):
    value = raw.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise SchemaError(path, _("'{key}' must be a non-empty string").format(key=key), table=table, column=column)
    return value


def all_tables(domains: dict[str, Domain]):
    """Every table of every domain, in a stable order."""
    for domain in domains.values():
        yield from domain.tables.values()
