"""Export a store table, decrypted, for a keyholder at the office.

What a person opens (CSV and Excel) reads as the published site does: the
columns under their Chinese labels, codes with their meanings (``2 女性``,
``正常``), and every identifier kept as text, so that Excel keeps an ID
number's 18 digits and a 户号's leading zeros:

- ``xlsx``: each text column is written as text cells (number format ``@``),
  dates as dates and amounts as numbers (excel.py);
- ``csv``: starts with a UTF-8 byte-order mark so that Excel reads Chinese, and a
  text value made only of digits is written ``="0012345"``, the form Excel
  takes for text however it opens the file; so is one that Excel would run as a
  formula (``=HYPERLINK(…)``, ``+cmd|…``: a community's free text may be anything);
- ``json`` (one object per line), or ``raw=True`` for CSV: the column names and
  the bare codes as the store holds them, for another program.

``--where`` takes a column's name or label, and a code or its meaning
(``status=normal``, ``人员状态=正常``, ``性别=女``).

The output goes where the keyholder sends it; syncdb writes no plaintext file
of its own, temporary ones included (the workbook is assembled in memory).
"""

from __future__ import annotations

import csv
import json
from typing import BinaryIO, Iterator, TextIO

from . import excel, meanings
from .crypto import Secret
from .errors import SyncdbError
from .i18n import _
from .schema import Domain, Table
from .store import Cells, open_store, table_name

FORMATS = ("csv", "xlsx", "json")


def rows(store_dir, secret: Secret, domains: dict[str, Domain], qualified: str,
         where: dict[str, str] | None = None, include_deleted=False) -> Iterator[dict]:
    """The table's records, decrypted, by column name. The store is opened (and the key and
    filters checked) here, before the first record is asked for: an error comes before any output."""
    store = open_store(store_dir, secret, domains)
    try:
        table = store.table(qualified)
        wanted = filters(domains[table.domain], table, where or {})
    except BaseException:
        store.close()
        raise
    return _records(store, table, wanted, include_deleted)


def filters(domain: Domain, table: Table, where: dict[str, str]) -> dict[str, str]:
    """``--where`` as {column name: stored value}: a label for a name, a meaning for a code."""
    wanted = {}
    for name, value in where.items():
        column = meanings.column_named(table, name)
        wanted[column.name] = meanings.code_for(domain, column, value)
    return wanted


def _records(store, table, where: dict[str, str], include_deleted: bool) -> Iterator[dict]:
    try:
        cells = Cells(table, list(table.columns))
        for key, exists, *values in store.conn.execute(
                f"SELECT _key, _exists, {cells.sql} FROM [{table_name(table)}]"):
            if not exists and not include_deleted:
                continue
            record = dict(zip(cells.columns, cells.values(store.seals, key, values)))
            if all(str(record[c]) == wanted for c, wanted in where.items()):
                yield record
    finally:
        store.conn.close()


def readable(domain: Domain, table: Table, record: dict) -> list:
    """A record's cells as a person reads them, in column order: codes with their meanings."""
    return [meanings.shown(domain, column, record.get(name)) for name, column in table.columns.items()]


def headers(table: Table) -> list[str]:
    """The Chinese labels of the table's columns, in order."""
    return [column.label for column in table.columns.values()]


# A cell Excel would run as a formula: a record's free text (a name, an address) comes from a community
# and may be '=HYPERLINK(…)' or '+cmd|…', and the office's clerks open these files in Excel.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
EXCEL_STRING = 255  # the longest string Excel takes inside a formula


def kept_as_text(value) -> str:
    """A CSV value Excel would read as a number (an ID number, 户号 00123) or run as a formula,
    written so that Excel shows it as the text it is: ="…", a string Excel shows and never runs."""
    text = "" if value is None else str(value)
    if not text.isdigit() and not text.startswith(FORMULA_START):
        return text
    if len(text) > EXCEL_STRING:
        return "'" + text  # too long for ="…": Excel shows the quote, and runs nothing
    return '="' + text.replace('"', '""') + '"'


def write(records: Iterator[dict], domain: Domain, table: Table, fmt: str, out: TextIO | BinaryIO,
          raw: bool = False) -> int:
    """Write the records to ``out`` (binary for xlsx, text otherwise); return how many."""
    if fmt == "xlsx":
        return excel.write_workbook(out, table.label, headers(table), excel.kinds(table.columns.values()),
                                    (readable(domain, table, r) for r in records))
    if fmt == "json":
        count = 0
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
        return count
    if fmt != "csv":
        raise SyncdbError(_("no export format '{format}'; use one of {choices}").format(
            format=fmt, choices=", ".join(FORMATS)))
    return _write_csv(records, domain, table, out, raw)


def _write_csv(records, domain: Domain, table: Table, out: TextIO, raw: bool) -> int:
    out.write("\ufeff")
    writer = csv.writer(out)
    writer.writerow(list(table.columns) if raw else headers(table))
    texts = [column.type == "text" for column in table.columns.values()]
    count = 0
    for record in records:
        if raw:
            writer.writerow([record.get(name) for name in table.columns])
        else:
            writer.writerow([kept_as_text(v) if text else v for v, text in zip(readable(domain, table, record), texts)])
        count += 1
    return count
