"""Excel workbooks that open right: for ``syncdb export --format xlsx`` and the site's 导出 Excel.

Every text column is written as text cells (number format ``@``), so Excel
keeps an ID number's 18 digits and its X, and a 户号's leading zeros; dates
are dates and amounts numbers, so sorting and sums work. Headers are the
columns' Chinese labels and codes carry their meanings (meanings.py).

The workbook is assembled in memory (XlsxWriter's ``in_memory``): openpyxl
and XlsxWriter's default both stage each sheet in a temporary file, which
at the office would be plaintext on a disk.

The site's renderer (``register_output_renderer``, registered with the rest of
the syncdb plugin by datasette_plugin.py) offers ``.xlsx`` beside JSON and
CSV on every published table page: the rows the page's filters select, from
the database the reader may open (so the masked database stays masked; a
view-pii reader's download is logged like any plaintext page).
"""

from __future__ import annotations

import asyncio
import datetime
import io
import re
from typing import BinaryIO, Iterable
from urllib.parse import quote

import xlsxwriter
from datasette import hookimpl
from datasette.utils.asgi import Response

from . import meanings, projection
from .i18n import _
from .schema import Column

CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
SITE_ROWS = 50_000  # the site builds a workbook in memory: beyond this, narrow the filter or use `syncdb export`
EXCEL_ROWS = 1_048_575  # a sheet's rows, the header's aside
_LIMIT = re.compile(r"\s+limit\s+\d+(\s+offset\s+\d+)?\s*$", re.IGNORECASE)


def kind(column: Column | None) -> str:
    """How a column is written: ``text`` (also a column the schemas do not describe), ``date`` or ``number``."""
    if column is None:
        return "text"
    return "number" if column.type in ("integer", "real") else "date" if column.type == "date" else "text"


def kinds(columns: Iterable[Column]) -> list[str]:
    return [kind(c) for c in columns]


def write_workbook(out: BinaryIO, title: str, headers: list[str], column_kinds: list[str], rows: Iterable[list]) -> int:
    """One sheet named ``title``: a header row, then the rows; returns how many rows were written."""
    buffer = io.BytesIO()
    book = xlsxwriter.Workbook(buffer, {"in_memory": True, "strings_to_numbers": False,
                                        "strings_to_formulas": False, "strings_to_urls": False})
    sheet = book.add_worksheet(_sheet_name(title))
    styles = {"text": book.add_format({"num_format": "@"}), "date": book.add_format({"num_format": "yyyy-mm-dd"}),
              "number": None, "header": book.add_format({"bold": True, "num_format": "@"})}
    widths = [len(h) * 2 + 2 for h in headers]
    for col, header in enumerate(headers):
        sheet.write_string(0, col, header, styles["header"])
    count = 0
    for count, row in enumerate(rows, start=1):
        if count > EXCEL_ROWS:
            raise ValueError(_("more than {most} rows do not fit in an Excel sheet; export part of the table "
                               "with --where").format(most=EXCEL_ROWS))
        for col, (value, kind) in enumerate(zip(row, column_kinds)):
            _write_cell(sheet, count, col, value, kind, styles)
            widths[col] = max(widths[col], min(len(str(value or "")) + 2, 60))
    for col, kind in enumerate(column_kinds):
        # Text columns are text even in the rows a clerk adds below: an ID number typed in stays whole.
        sheet.set_column(col, col, widths[col], styles[kind] if kind == "text" else None)
    sheet.freeze_panes(1, 0)
    sheet.autofilter(0, 0, count, max(len(headers) - 1, 0))
    book.close()
    out.write(buffer.getvalue())
    return count


def _write_cell(sheet, row: int, col: int, value, kind: str, styles: dict) -> None:
    if value is None or value == "":
        return
    if kind == "number" and isinstance(value, (int, float)):
        sheet.write_number(row, col, value)
    elif kind == "date" and (day := _date(value)) is not None:
        sheet.write_datetime(row, col, day, styles["date"])
    else:
        sheet.write_string(row, col, str(value), styles["text"])


def _date(value) -> datetime.date | None:
    try:
        return datetime.date.fromisoformat(str(value))
    except ValueError:
        return None  # a masked birth date (the year only) or a stray value: written as text


def _sheet_name(title: str) -> str:
    """Excel refuses []:*?/\\ in a sheet name and more than 31 characters."""
    return re.sub(r"[\[\]:*?/\\]", "_", title)[:31] or "Sheet1"


# ---------------------------------------------------------------- the site's 导出 Excel

def _can_render(datasette, database, table, view_name) -> bool:
    return (getattr(datasette, "_syncdb", None) is not None and view_name == "table" and bool(table)
            and database in (projection.MASKED_DB, projection.PLAIN_DB))


async def _render(datasette, database, table, request, data, rows) -> Response:
    if not _can_render(datasette, database, table, "table"):
        return Response.text(_("Only the published tables can be downloaded as Excel."), status=404)
    domains = datasette._syncdb.domains
    query = data.get("query") or {}
    sql, params = query.get("sql") or "", query.get("params") or {}
    whole = _LIMIT.sub("", sql) if _LIMIT.search(sql) else None
    db = datasette.get_database(database)
    found = await db.execute_fn(lambda conn: _selected(conn, whole, params, rows))
    if found is None:
        return Response.text(_("More than {most} rows: narrow the filter (by 社区代码, say) or ask the data "
                               "administrator for `syncdb export`.").format(most=SITE_ROWS), status=400)
    columns, records = found
    shown = [c for c in columns if c not in ("rowid", projection.PERSON_COLUMN)]
    cells = projection.published_columns(domains)
    described = [cells.get((table, c)) for c in shown]
    out = io.BytesIO()
    # Seconds of work for a big table (50,000 rows: half a minute, some 250 MB): in a thread, so every
    # other page is still answered meanwhile, and one workbook at a time, so downloads at once cannot
    # add up to more memory than publish has.
    async with _one_workbook:
        await asyncio.to_thread(
            write_workbook, out, table, shown, [kind(d[1] if d else None) for d in described],
            ([_cell(d, record.get(c), database) for d, c in zip(described, shown)] for record in records))
    return Response(out.getvalue(), content_type=CONTENT_TYPE, headers={
        "content-disposition": f"attachment; filename*=UTF-8''{quote(table)}.xlsx"})


_one_workbook = asyncio.Semaphore(1)  # bound to publish's event loop when first used


def _selected(conn, whole: str | None, params, page_rows) -> tuple[list[str], list[dict]] | None:
    """Every row the page's filters select (not only the page shown); None when there are too many."""
    if whole is None:  # not the shape a table page's query has: the page's own rows
        rows = [dict(r) for r in page_rows]
        return (list(rows[0]) if rows else []), rows
    cursor = conn.execute(whole, params)
    columns = [d[0] for d in cursor.description]
    rows = [dict(zip(columns, r)) for r in cursor.fetchmany(SITE_ROWS + 1)]
    return None if len(rows) > SITE_ROWS else (columns, rows)


def _cell(described, value, database: str):
    if isinstance(value, dict):  # a foreign key Datasette labelled: the code is what is stored
        value = value.get("value")
    if described is None:
        return value
    domain, column = described
    return meanings.shown(domain, column, value, masked=database == projection.MASKED_DB)


@hookimpl
def register_output_renderer(datasette):
    return {"extension": "xlsx", "render": _render, "can_render": _can_render}
