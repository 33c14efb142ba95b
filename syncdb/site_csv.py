"""The site's CSV as ``syncdb export`` writes it, so that Excel opens it right.

Datasette writes a table's CSV cell by cell as the database holds it, row by
row as it streams: an ID number Excel turns into ``4.41900E+17``, a 户号 that
loses its leading zeros, a community's free text (``=HYPERLINK(…)``) that Excel
would run as a formula. publish rewrites that stream on its way out, record by
record, with export's rules (export.kept_as_text): a UTF-8 byte-order mark, a
text column's value that is all digits or starts like a formula written
``="…"``, and a code with its meaning (``2 女性``; Datasette's ``…_label``
column beside it is left out, the meaning being in the cell). The person's
number publish adds (档案, up to 19 digits) is written ``="…"`` too: Excel
keeps 15. Other numbers and dates stay as they are, so sums and sorting work
in Excel.

The stream is cut into records where a line ends outside quotes (a quoted
address may hold a line break), so no record is ever rewritten in halves.
A row page's CSV and an SQL query's are rewritten too; a query's columns are
no table's, so there only what Excel would run, and 档案, is kept as text.
"""

from __future__ import annotations

import codecs
import csv
import io
from typing import Callable
from urllib.parse import unquote_plus

from datasette.utils import tilde_decode

from . import meanings, projection
from .export import FORMULA_START, kept_as_text
from .schema import Column, Domain

BOM = "\ufeff"
# csv.reader refuses a field over 128 KiB, and Datasette writes what the refusal says into the CSV in place of
# every record after it: a cell may be as long as the office's limits let a value be (up to 4 MiB), a query's longer.
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


def table_of(path: str) -> tuple[str, str | None] | None:
    """(database, table) of a CSV address on a published database: a table's (``/renkou/~E6~88~B7….csv``)
    or a row's (``/renkou/~E6~88~B7…/12.csv``); (database, None) for an SQL query's (``/renkou.csv?sql=…``).
    None for any other address."""
    parts = path.split("/")
    if not parts[-1].endswith(".csv"):
        return None
    if len(parts) == 2:
        database, table = parts[1][:-len(".csv")], None
    elif len(parts) in (3, 4):
        database, table = parts[1], tilde_decode(parts[2].removesuffix(".csv"))
    else:
        return None
    return (database, table) if database in (projection.MASKED_DB, projection.PLAIN_DB) else None


def _looks_like_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _undescribed(text: str) -> str:
    """A column the schemas do not describe (rowid): only what Excel would run is kept as text."""
    if text.startswith(FORMULA_START) and not _looks_like_a_number(text):
        return kept_as_text(text)
    return text


class Rewriter:
    """Feed it Datasette's CSV bytes as they come; it returns the rewritten bytes of the whole records so far."""

    def __init__(self, describe: Callable[[str], tuple[Domain, Column] | None], masked: bool, header: bool = True):
        self._describe, self._masked, self._header = describe, masked, header
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""
        self._cells: list[Callable[[str], str] | None] | None = None  # per column; None drops it

    def feed(self, data: bytes, last: bool = False) -> bytes:
        self._pending += self._decoder.decode(data, final=last)
        end = len(self._pending) if last else self._whole_records()
        if end == 0:
            return b""
        done, self._pending = self._pending[:end], self._pending[end:]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        for row in csv.reader(io.StringIO(done, newline="")):
            if self._cells is None:
                self._cells = self._columns(row)
                out.write(BOM)
                if self._header:
                    writer.writerow([name for name, cell in zip(row, self._cells) if cell is not None])
                continue
            writer.writerow([cell(value) for value, cell in zip(row, self._cells) if cell is not None])
        return out.getvalue().encode("utf-8")

    def _whole_records(self) -> int:
        """Where the last record that is whole ends: after a line break outside quotes."""
        text, start, quotes, end = self._pending, 0, 0, 0
        while True:
            at = text.find("\n", start)
            if at < 0:
                return end
            quotes += text.count('"', start, at)
            start = at + 1
            if quotes % 2 == 0:
                end = start

    def _label_of_a_code(self, header: list[str], i: int) -> bool:
        """Is column ``i`` Datasette's ``…_label`` of the coded column before it? Datasette adds it right after
        the code; a column of the table's own that is named so stays (then the header names it twice)."""
        if i == 0 or header[i] != header[i - 1] + "_label":
            return False
        code = self._describe(header[i - 1])
        if code is None or not projection.labelled(code[1], self._masked):
            return False
        return self._describe(header[i]) is None or header.count(header[i]) > 1

    def _columns(self, header: list[str]) -> list[Callable[[str], str] | None]:
        cells: list[Callable[[str], str] | None] = []
        for i, name in enumerate(header):
            if self._label_of_a_code(header, i):
                cells.append(None)  # Datasette's label of a code: the code's cell carries its meaning
                continue
            described = self._describe(name)
            if described is None and name == projection.PERSON_COLUMN:
                # The person's number: up to 19 digits, which Excel would round to 15 as a number. (A schema's
                # own column may be labelled 档案 in a table without it: that one is written by its schema.)
                cells.append(kept_as_text)
                continue
            if described is None:
                cells.append(_undescribed)
                continue
            domain, column = described
            if column.type != "text":
                cells.append(_undescribed)
            else:
                cells.append(lambda value, d=domain, c=column: kept_as_text(
                    meanings.shown(d, c, value, masked=self._masked) if value != "" else value))
        return cells


def without_header_off(scope: dict) -> tuple[dict, bool]:
    """(the request without ``_header=…``, whether the CSV is to have its header row).

    The rewriter reads the columns from the header, so Datasette always writes it; without it the
    first record would be taken for the header and leave as it is stored (a formula bare)."""
    kept, header = [], None
    for part in (scope.get("query_string") or b"").decode("latin-1").split("&"):
        name, _eq, value = part.partition("=")
        if unquote_plus(name) != "_header":
            kept.append(part)
        elif header is None:
            header = unquote_plus(value) != "off"  # Datasette reads the first
    return dict(scope, query_string="&".join(kept).encode("latin-1")), header is not False


def for_excel(scope: dict, send, domains, database: str, table: str | None):
    """(scope, send) wrapped so that a published table's, row's or query's CSV leaves as Excel should read it."""
    columns = projection.published_columns(domains)
    scope, header = without_header_off(scope)
    rewriter = Rewriter(lambda name: columns.get((table, name)) if table is not None else None,
                        masked=database == projection.MASKED_DB, header=header)
    rewriting = False

    async def sending(message):
        nonlocal rewriting
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers") or () if k.lower() != b"content-length"]
            rewriting = message["status"] == 200 and any(
                k.lower() == b"content-type" and v.startswith((b"text/csv", b"text/plain")) for k, v in headers)
            if rewriting:
                message = dict(message, headers=headers)
        elif message["type"] == "http.response.body" and rewriting:
            last = not message.get("more_body", False)
            message = dict(message, body=rewriter.feed(message.get("body", b""), last=last))
        await send(message)
    return scope, sending
