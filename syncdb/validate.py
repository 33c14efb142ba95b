"""Check records against the schemas and the national standards.

Two layers: ``check_record`` is the pure per-record logic (the office runs it
on every incoming record, so it does no I/O), and ``validate_paths`` streams
the rows of community working databases through it, naming community, table,
key and field for each problem found.

ID numbers follow GB 11643 (公民身份号码) through python-stdnum's
``stdnum.cn.ric``: the check character and the birth date are strict, the
region code only warns, because region codes are retired and added over the
years while the numbers people carry stay valid.
"""

from __future__ import annotations

import datetime
import functools
import math
import re
import sqlite3
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from stdnum.cn import ric
from stdnum.exceptions import ValidationError

try:
    from stdnum.cn import uscc as _stdnum_uscc  # python-stdnum 1.19 and later
except ImportError:  # older ones: the standard's algorithm below
    _stdnum_uscc = None

from .errors import SyncdbError
from .i18n import _
from .integrity import WorkingRecords, has_rules, rule_problems
from .schema import Column, Domain, Table
from .workdir import db_path

ERROR, WARNING = "error", "warning"


class Invalid(ValueError):
    """A value breaks its standard; the message says how."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one field of a record."""

    severity: str  # 'error' | 'warning'
    field: str
    why: str


@dataclass(frozen=True)
class Finding:
    """A problem located in a working database: who, where, which record, why."""

    severity: str
    community: str
    table: str  # qualified, like 'huji.persons'
    key: str  # natural key values joined with '/'
    field: str
    why: str
    path: str

    def __str__(self) -> str:
        why = self.why if self.severity == ERROR else _("warning: {why}").format(why=self.why)
        # Table-level findings have no key or field; '-' keeps five columns.
        parts = (self.community, self.table, self.key or "-", self.field or "-", why)
        return " / ".join(parts)

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- validators

# 公民身份号码 birth dates before this are typing mistakes, not people.
EARLIEST_BIRTH_YEAR = 1880
_ID_FORMAT = re.compile(r"[0-9]{17}[0-9X]")


def id_number(value: str) -> list[str]:
    """Check an 18-character 公民身份号码 (GB 11643); return warnings, raise Invalid."""
    if value != value.strip():
        # It is a natural key: ' 1101…' and '1101…' would be two people.
        raise Invalid(_("has spaces around it: {value!r}; store the 18 characters only").format(value=value))
    if len(value) == 15 and value.isdigit():
        raise Invalid(_("is an old 15-digit number; store the 18-character number from the current ID card"))
    if len(value) != 18:
        raise Invalid(_("must be 18 characters, got {length}{hint}").format(
            length=len(value), hint=_fullwidth_hint(value)))
    if value[-1] == "x" and _ID_FORMAT.fullmatch(value[:-1] + "X"):
        # GB 11643 writes the check character 10 as capital X; with 'x' the
        # same person would sync as a second natural key.
        raise Invalid(_("ends in lowercase 'x'; use capital 'X'"))
    if not _ID_FORMAT.fullmatch(value):
        raise Invalid(_("must be 17 digits and a final digit or X, got {value!r}{hint}").format(
            value=value, hint=_fullwidth_hint(value)))
    # The date first: when it is impossible, saying so helps more than the
    # check character it also breaks.
    try:
        # The format is checked above, so the date is read directly (stdnum's
        # get_birth_date would clean the number again: most of the time spent here).
        born = datetime.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise Invalid(_("birth date {date} in the number is not a real date").format(date=value[6:14])) from None
    if born > datetime.date.today():
        raise Invalid(_("birth date {date} in the number is in the future").format(date=born.isoformat()))
    if born.year < EARLIEST_BIRTH_YEAR:
        raise Invalid(_("birth date {date} in the number is before {year}").format(
            date=born.isoformat(), year=EARLIEST_BIRTH_YEAR))
    expected = ric.calc_check_digit(value)
    if value[-1] != expected:
        raise Invalid(_("wrong check character: expected {expected}, got {got}").format(
            expected=expected, got=value[-1]))
    if not _region_known(value[:10]):
        return [
            _("region code {region} not found for birth year {year}; "
              "region codes are retired and added, the number stays valid").format(region=value[:6], year=born.year)
        ]
    return []


def warm() -> None:
    """Load what the ID-number check reads on its first use (stdnum's region database), so that
    processes forked from this one (the merge's workers) share it instead of each reading it."""
    _region_known("1101011980")


@functools.lru_cache(maxsize=8192)
def _region_known(region_and_year: str) -> bool:
    # stdnum's answer depends only on the region code and the birth year, so
    # a cache keyed on them spares the numdb look-up for most residents.
    try:
        ric.get_birth_place(region_and_year + "01010000")
    except (ValidationError, KeyError):
        # stdnum raises KeyError for a known province with an unknown county.
        return False
    return True


# GB/T 2260 province-level codes (省级行政区划代码).
PROVINCES = {
    "11": "北京市", "12": "天津市", "13": "河北省", "14": "山西省", "15": "内蒙古自治区",
    "21": "辽宁省", "22": "吉林省", "23": "黑龙江省",
    "31": "上海市", "32": "江苏省", "33": "浙江省", "34": "安徽省", "35": "福建省",
    "36": "江西省", "37": "山东省",
    "41": "河南省", "42": "湖北省", "43": "湖南省", "44": "广东省", "45": "广西壮族自治区",
    "46": "海南省",
    "50": "重庆市", "51": "四川省", "52": "贵州省", "53": "云南省", "54": "西藏自治区",
    "61": "陕西省", "62": "甘肃省", "63": "青海省", "64": "宁夏回族自治区", "65": "新疆维吾尔自治区",
    "71": "台湾省", "81": "香港特别行政区", "82": "澳门特别行政区",
}


# 统计用区划代码编制规则 (National Bureau of Statistics): the township segment
# codes 街道 001–099, 镇 100–199, 乡 200–399 and 乡级单位 such as development
# zones 400–599; the village segment codes 居委会 001–199 and 村委会 200–399.
TOWNSHIP_SEGMENT = range(1, 600)
VILLAGE_SEGMENT = range(1, 400)


def community_code(value: str) -> list[str]:
    """Check a 12-digit 统计用区划代码: county (6) + township (3) + village (3)."""
    if not re.fullmatch(r"[0-9]{12}", value):
        raise Invalid(_(
            "must be 12 digits (统计用区划代码: 6-digit county, 3-digit street, "
            "3-digit community, like 441900003001), got {value!r}{hint}").format(value=value, hint=_fullwidth_hint(value)))
    if value[:2] not in PROVINCES:
        raise Invalid(_no_province().format(start=value[:2]))
    if int(value[6:9]) not in TOWNSHIP_SEGMENT:
        raise Invalid(_(
            "has township segment {segment} (digits 7–9), which 统计用区划代码 does not use: "
            "streets are 001–099, towns 100–199, townships 200–399, zones 400–599").format(segment=value[6:9]))
    if int(value[9:12]) not in VILLAGE_SEGMENT:
        raise Invalid(_(
            "has village segment {segment} (digits 10–12), which 统计用区划代码 does not use: "
            "居委会 (communities) are 001–199, 村委会 (villages) 200–399").format(segment=value[9:12]))
    return []


def _no_province() -> str:
    """The message for a code whose first two digits are no province (community and division codes)."""
    return _("starts with {start}, which is no province code (11 北京市 … 82 澳门特别行政区)")


def division_code(value: str) -> list[str]:
    """Check a 6-digit administrative division code (行政区划代码, GB/T 2260).

    Only the form and the province are checked: codes are retired and added
    over the years, and an old one (a native place, an ID's region) stays true.
    """
    if not re.fullmatch(r"[0-9]{6}", value):
        raise Invalid(_("must be 6 digits (行政区划代码, GB/T 2260, like 441900), got {value!r}{hint}").format(
            value=value, hint=_fullwidth_hint(value)))
    if value[:2] not in PROVINCES:
        raise Invalid(_no_province().format(start=value[:2]))
    return []


# GB 32100-2015: the 31 characters of a 统一社会信用代码 (no I, O, S, V or Z).
_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))  # 1, 3, 9, 27, 19, 26, …
_USCC_FORMAT = re.compile(rf"[{_USCC_ALPHABET}]{{2}}[0-9]{{6}}[{_USCC_ALPHABET}]{{10}}")


def _uscc_check_character(first17: str) -> str:
    if _stdnum_uscc is not None:
        return _stdnum_uscc.calc_check_digit(first17 + "0")
    total = sum(_USCC_ALPHABET.index(c) * w for c, w in zip(first17, _USCC_WEIGHTS))
    return _USCC_ALPHABET[-total % 31]


def uscc(value: str) -> list[str]:
    """Check an 18-character 统一社会信用代码 (GB 32100-2015) and its check character."""
    if value != value.strip():
        raise Invalid(_("has spaces around it: {value!r}; store the 18 characters only").format(value=value))
    if len(value) != 18:
        raise Invalid(_("must be 18 characters (统一社会信用代码), got {length}{hint}").format(
            length=len(value), hint=_fullwidth_hint(value)))
    if value != value.upper() and _USCC_FORMAT.fullmatch(value.upper()):
        raise Invalid(_("holds lowercase letters; GB 32100 writes them in capitals"))
    if not _USCC_FORMAT.fullmatch(value):
        raise Invalid(_(
            "must be 2 registration characters, a 6-digit division code and 10 characters of "
            "0–9 and A–Y without I, O, S, V or Z (GB 32100), got {value!r}{hint}").format(
            value=value, hint=_fullwidth_hint(value)))
    expected = _uscc_check_character(value[:17])
    if value[-1] != expected:
        raise Invalid(_("wrong check character: expected {expected}, got {got}").format(
            expected=expected, got=value[-1]))
    return []


_MOBILE = re.compile(r"1[3-9][0-9]{9}")
# Area codes are 010, 02x or 0xxx (3 to 9 after the 0); local numbers never
# start with 0 or 1, which keeps mobiles with a stray leading 0 out.
_LANDLINE = re.compile(r"0(?:10|2[0-9]|[3-9][0-9]{2})[2-9][0-9]{6,7}")
_EXTENSION = re.compile(r"(?P<number>.*?)\s*(?:转|分机|ext\.?|x|#)\s*(?P<ext>[0-9]{1,6})", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s\-()（）]+")


def phone(value: str) -> list[str]:
    """Check a mainland mobile (1[3-9] + 9 digits) or a landline with area code.

    Spaces, dashes and brackets are tolerated, as are a +86 prefix and an
    extension (0769-22123456-801, 0769-22123456 转 801).
    """
    number, extension = value.strip(), None
    if m := _EXTENSION.fullmatch(number):
        number, extension = m["number"], m["ext"]
    groups = [g for g in _SEPARATORS.split(number) if g]
    if groups and groups[0] in ("+86", "0086", "86"):
        groups = groups[1:]
    digits = "".join(groups)
    if digits.startswith("+86"):
        digits = digits[3:]
    if _MOBILE.fullmatch(digits) and extension is None:
        return []
    if _LANDLINE.fullmatch(digits):
        return []
    # 0769-22123456-801: a last short group after a full landline is an extension.
    if extension is None and len(groups) >= 3 and len(groups[-1]) <= 6 and _LANDLINE.fullmatch("".join(groups[:-1])):
        return []
    raise Invalid(_(
        "{value!r} is neither a mobile number (11 digits, 13x–19x) nor a landline "
        "with its area code (like 0769-22123456){hint}").format(value=value, hint=_fullwidth_hint(value)))


def _fullwidth_hint(value: str) -> str:
    # Chinese input methods in full-width mode (全角) type look-alike digits.
    if unicodedata.normalize("NFKC", value) != value:
        return _(" (it holds full-width characters 全角; retype it in half-width 半角)")
    return ""


# Names as schemas use them in ``validator = "…"`` (schema.VALIDATORS).
VALIDATORS = {
    "id_number": id_number,
    "community_code": community_code,
    "phone": phone,
    "division_code": division_code,
    "uscc": uscc,
}

# ---------------------------------------------------------------- records

# The standards behind the national code tables, for messages.
STANDARDS = {
    "sex": "GB/T 2261.1",
    "marital_status": "GB/T 2261.2",
    "ethnicity": "GB 3304",
    "relationship": "GB/T 4761",
}
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")
# Stricter than float(), which also takes '1_000', 'nan' and 'infinity'.
_REAL = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")


def check_record(table: Table, record: dict, domain: Domain) -> list[Problem]:
    """Every problem of one record (column name → value) against its table.

    Pure and fast: the office runs it on each incoming record. A column
    absent from ``record`` counts as empty.
    """
    problems = []
    for column in table.columns.values():
        problems.extend(_check_value(column, record.get(column.name), record, domain))
    return problems


class TableChecker:
    """``check_record`` for one table, compiled once: a value's own checks (its type, validator and
    code table) run once per distinct value, since coded columns and ID numbers repeat across a
    bundle's records. Only the ID number's agreement with the record's birth date and sex looks at
    the rest of the record, so those columns are checked in full each time. Keep one per run: the
    messages are in the language of the first check of each value.
    """

    CACHE = 50_000  # distinct values remembered per column; past that, the column starts again

    def __init__(self, table: Table, domain: Domain):
        self.domain = domain
        # (name, column, kind, text cache, other cache): kind 0 plain text, 1 cached, 2 the whole record.
        self.columns = []
        for column in table.columns.values():
            if column.validator and column.matches:
                kind = 2
            elif column.validator or column.codes or column.type in ("integer", "real", "date"):
                kind = 1
            else:
                kind = 0
            self.columns.append((column.name, column, kind, {}, {}))

    def __call__(self, record: dict) -> list[Problem]:
        problems = []
        domain = self.domain
        get = record.get
        for name, column, kind, texts, others in self.columns:
            value = get(name)
            if value is None and not column.required:
                continue  # an optional value left empty: nothing to check
            if kind == 0:
                if value.__class__ is str and value and not value.isspace():
                    continue  # a text value: nothing to check
                found = _check_value(column, value, record, domain)
            elif kind == 1 and value.__class__ is str:
                # Text, as nearly every value: keyed by itself. Other kinds keyed with their class below.
                found = texts.get(value)
                if found is None:
                    found = _check_value(column, value, record, domain)
                    if len(texts) >= self.CACHE:
                        texts.clear()
                    texts[value] = found
            elif kind == 1 and value.__class__ is not float:
                # Not a float: -0.0 and 0.0 are equal keys, but a message quotes each as itself.
                try:
                    found = others[value.__class__, value]  # 1, 1.0 and True are equal keys, not equal values
                except KeyError:
                    found = _check_value(column, value, record, domain)
                    if len(others) >= self.CACHE:
                        others.clear()
                    others[value.__class__, value] = found
                except TypeError:  # unhashable: not a value a bundle carries, checked all the same
                    found = _check_value(column, value, record, domain)
            else:
                found = _check_value(column, value, record, domain)
            if found:
                problems.extend(found)
        return problems


def _check_value(column: Column, value, record: dict, domain: Domain) -> list[Problem]:
    name = column.name
    if value is None or (isinstance(value, str) and not value.strip()):
        if column.required:
            return [Problem(ERROR, name, _("required value is missing"))]
        return []
    if isinstance(value, bytes):
        return [Problem(ERROR, name, _("holds binary data ({size} bytes), expected {type}").format(
            size=len(value), type=column.type))]
    text = value if isinstance(value, str) else str(value)
    why = _type_error(column.type, value, text)
    if why:
        return [Problem(ERROR, name, why)]
    problems = []
    if column.validator:
        try:
            warnings = VALIDATORS[column.validator](text)
        except Invalid as e:
            return [Problem(ERROR, name, str(e))]
        problems.extend(Problem(WARNING, name, w) for w in warnings)
        if column.matches:
            problems.extend(_check_matches(column, text, record))
    if column.codes:
        table = domain.code_table(column.codes)
        if text not in table:
            problems.append(Problem(ERROR, name, _unknown_code(column.codes, text, table, domain)))
    return problems


def _type_error(ctype: str, value, text: str) -> str | None:
    if ctype == "integer":
        if isinstance(value, bool) or not (
            isinstance(value, int)
            or (isinstance(value, float) and value.is_integer())
            or (isinstance(value, str) and _INTEGER.fullmatch(value))
        ):
            return _("expected a whole number, got {text!r}").format(text=text)
    elif ctype == "real":
        if isinstance(value, bool) or not (
            (isinstance(value, (int, float)) and math.isfinite(value))
            or (isinstance(value, str) and _REAL.fullmatch(value))
        ):
            return _("expected a number, got {text!r}").format(text=text)
    elif ctype == "date":
        if not _ISO_DATE.fullmatch(text):
            return _("expected a date as YYYY-MM-DD, got {text!r}").format(text=text)
        try:
            datetime.date.fromisoformat(text)
        except ValueError:
            return _("{text} is not a real date").format(text=text)
    return None


def _check_matches(column: Column, number: str, record: dict) -> list[Problem]:
    """The ID number's embedded birth date and sex against the record's own columns."""
    problems = []
    birth_column = column.matches.get("birth_date")
    if birth_column:
        recorded = record.get(birth_column)
        born = f"{number[6:10]}-{number[10:12]}-{number[12:14]}"
        # A malformed birth_date is reported by its own type check.
        if isinstance(recorded, str) and _ISO_DATE.fullmatch(recorded) and recorded != born:
            problems.append(Problem(
                ERROR, birth_column, _("ID number says born {born} but {column} is {recorded}").format(
                    born=born, column=birth_column, recorded=recorded)))
    sex_column = column.matches.get("sex")
    if sex_column:
        recorded = str(record.get(sex_column))
        # The 17th digit is odd for men, even for women (GB 11643); codes 1
        # and 2 of GB/T 2261.1. 0 and 9 (unknown, unstated) cannot disagree.
        said = "1" if int(number[16]) % 2 else "2"
        if recorded in ("1", "2") and recorded != said:
            sexes = {"1": _("male"), "2": _("female")}
            problems.append(Problem(
                ERROR, sex_column,
                _("ID number says {said_sex} ({said}, 17th digit {digit}) "
                  "but {column} is {recorded} ({recorded_sex})").format(
                    said_sex=sexes[said], said=said, digit=number[16], column=sex_column, recorded=recorded,
                    recorded_sex=sexes[recorded])))
    return problems


def _unknown_code(name: str, value: str, table: dict[str, str], domain: Domain) -> str:
    hint = ""
    by_meaning = {meaning: code for code, meaning in table.items()}
    if value in by_meaning:
        hint = _("; that is the name, store its code '{code}'").format(code=by_meaning[value])
    elif value.isdigit() and value.zfill(len(next(iter(table)))) in table:
        # A program that stored the code as a number lost its leading zero.
        hint = _("; codes keep their leading zeros: '{code}'").format(code=value.zfill(len(next(iter(table)))))
    standard = "" if name in domain.codes else STANDARDS.get(name, "")
    where = f"{standard}: " if standard else ""
    return _("unknown {name} code '{value}' ({where}{codes}){hint}").format(
        name=name, value=value, where=where, codes=_some_codes(table), hint=hint)


def _some_codes(table: dict[str, str]) -> str:
    """A few valid codes: all of a short table, the runs of a long numeric one."""
    items = list(table.items())
    if len(items) <= 8:
        return ", ".join(f"{c} {m}" for c, m in items)
    runs: list[list[tuple[str, str]]] = []
    for code, meaning in items:
        if runs and code.isdigit() and runs[-1][-1][0].isdigit() and int(code) == int(runs[-1][-1][0]) + 1:
            runs[-1].append((code, meaning))
        else:
            runs.append([(code, meaning)])
    if len(runs) > 4:
        (first, fm), (last, lm) = items[0], items[-1]
        return f"{first} {fm} … {last} {lm}"
    shown = []
    for run in runs:
        if len(run) >= 3:
            shown.append(f"{run[0][0]} {run[0][1]} … {run[-1][0]} {run[-1][1]}")
        else:
            shown.extend(code for code, __ in run)
    return ", ".join(shown)


# ---------------------------------------------------------------- databases

def validate_paths(paths: Iterable, domains: dict[str, Domain]) -> Iterator[Finding]:
    """Check working database files, or community folders holding them.

    A folder contributes every ``<domain>.db`` it holds for the loaded
    domains. Rows are streamed, never loaded whole. The record rules
    (references, implies, one_per: integrity.py) read the working databases
    beside the one checked; a reference into a domain whose database is not
    there is not checked.
    """
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files = [db_path(path, name) for name in domains if db_path(path, name).is_file()]
            if not files:
                names = ", ".join(f"{name}.db" for name in domains)
                raise SyncdbError(_(
                    "{path}: holds no working database ({names}); "
                    "give a community folder or the database files themselves").format(path=path, names=names))
            for file in files:
                yield from validate_file(file, domains[file.stem], domains)
        elif path.is_file():
            domain = domains.get(path.stem)
            if domain is None:
                names = ", ".join(f"{name}.db" for name in domains)
                raise SyncdbError(_(
                    "{path}: no schema for domain '{domain}'; working databases are "
                    "named after their domain ({names}), or point --schemas at the folder declaring it").format(
                    path=path, domain=path.stem, names=names))
            yield from validate_file(path, domain, domains)
        else:
            raise SyncdbError(_("{path}: no such file or folder").format(path=path))


def validate_file(path, domain: Domain, domains: dict[str, Domain] | None = None) -> Iterator[Finding]:
    """Check one working database against its domain, table by table.

    With ``domains``, the record rules are checked too, against the working
    databases in the same folder.
    """
    path = Path(path)
    conn = _open_read_only(path)
    records = WorkingRecords(path.parent, domains) if domains else None
    try:
        for table in domain.tables.values():
            yield from _validate_table(conn, path, table, domain, records)
    except sqlite3.DatabaseError as e:
        raise SyncdbError(_(
            "{path}: cannot be read ({error}); check it with `sqlite3 {name} 'PRAGMA integrity_check'` "
            "or restore it from a backup").format(path=path, error=e, name=path.name)) from e
    finally:
        conn.close()
        if records:
            records.close()


def _open_read_only(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        # SQLite opens anything lazily; the first read tells a database from other files.
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        conn.close()
        raise SyncdbError(_(
            "{path}: is not an SQLite database ({error}); give the community's working database "
            "({domain}.db as its programs write it) or the folder holding it").format(
            path=path, error=e, domain=path.stem)) from e
    return conn


def _validate_table(conn: sqlite3.Connection, path: Path, table: Table, domain: Domain,
                    records=None) -> Iterator[Finding]:
    present = {row[1].lower() for row in conn.execute(f"PRAGMA table_info([{table.name}])")}
    if not present:
        yield Finding(ERROR, "?", table.qualified, "", "",
                      _("table '{table}' is missing from {path}; is this the community's "
                        "{domain} database? `syncdb community init` creates the tables").format(
                          table=table.name, path=path, domain=domain.name), str(path))
        return
    columns = [c for c in table.columns if c.lower() in present]
    missing = [c for c in table.columns if c.lower() not in present]
    for column in missing:
        yield Finding(ERROR, "?", table.qualified, "", column,
                      _("column '{column}' is missing from table '{table}' in {path}; "
                        "add it (ALTER TABLE … ADD COLUMN) so the records can sync").format(
                          column=column, table=table.name, path=path), str(path))
    # A missing column was reported once above, not again for every row.
    skip = set(missing)
    select = ", ".join(f"[{c}]" for c in columns)
    rules = _rules(table, records, skip)
    for row in conn.execute(f"SELECT {select} FROM [{table.name}]"):
        record = dict(zip(columns, row))
        problems = [p for p in check_record(table, record, domain) if p.field not in skip]
        if rules:
            problems += rules(record)
        if not problems:
            continue
        community = record.get(table.owner)
        community = "?" if community is None or not str(community).strip() else str(community)
        key = "/".join("?" if record.get(k) is None else str(record.get(k)) for k in table.key)
        for p in problems:
            yield Finding(p.severity, community, table.qualified, key, p.field, p.why, str(path))
    if not skip & set(table.key):
        yield from _duplicate_keys(conn, path, table)


def _rules(table: Table, records, skip: set):
    """The record-rule check of the table's records, or None when none applies (or it cannot be read whole)."""
    if records is None or skip or not has_rules(table):
        return None
    return lambda record: [Problem(ERROR, p.field, p.why)
                           for p in rule_problems(table, record, records.domains, records)]


def _duplicate_keys(conn: sqlite3.Connection, path: Path, table: Table) -> Iterator[Finding]:
    """A natural key held by more than one row: only one of them could ever reach the office."""
    from .capture import duplicate_keys, key_is_unique

    if key_is_unique(conn, table):
        return  # SQLite keeps it unique: no need to read the table again
    for values, rows in duplicate_keys(conn, table):
        key = "/".join("?" if v is None else str(v) for v in values)
        yield Finding(ERROR, "?", table.qualified, key, ", ".join(table.key),
                      _("{rows} rows have this {key}; records sync by it, so keep one row "
                        "(correct or delete the others)").format(rows=rows, key=", ".join(table.key)), str(path))
