"""The site's CSV at its edges: every CSV address of a published database is rewritten for Excel (a row
page's, an SQL query's, one asked for without its header row), a value longer than csv's default field
limit leaves whole with every record after it, and a column of the table's own named ``…_label`` stays.
Real `syncdb publish` over HTTP; the rewriter fed Datasette's CSV for the last."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

from conftest import person
from test_i12_second_read import FORMULAS, formulas, runs_in_excel, shown_by_excel  # noqa: F401
from syncdb import limits, merge, site_csv
from syncdb.schema import Column

BOM = "\ufeff".encode()


def cells(content: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.decode("utf-8-sig"), newline="")))


def test_every_csv_address_of_the_site_is_written_for_excel(formulas, publisher):  # noqa: F811
    store, _env = formulas
    site = publisher(store)
    wang, zhao = site.sign_in("wangfang"), site.sign_in("zhaomin")
    table = f"{site.url}/renkou_mingwen/户籍_人员"
    whole = wang.get(f"{table}.csv")
    assert whole.status_code == 200, whole.text[:300]
    header, record = cells(whole.content)
    answers = {
        # Without its header row: the first record is a record, not the columns' names.
        "no header": wang.get(f"{table}.csv?_header=off"),
        "a row page": wang.get(f"{table}/1.csv"),
        "a query (admin)": zhao.get(f"{site.url}/renkou.csv", params={"sql": "SELECT * FROM [户籍_人员]"}),
    }
    for what, got in answers.items():
        assert got.status_code == 200, (what, got.text[:300])
        assert got.content.startswith(BOM), what
        for row in cells(got.content):
            for cell in row:
                assert not runs_in_excel(cell), (what, cell)
    assert cells(answers["no header"].content) == [record]
    assert cells(answers["a row page"].content) == [header, record]
    assert shown_by_excel(dict(zip(header, record))["姓名"]) == FORMULAS["name"]


def test_a_value_longer_than_csvs_field_limit_leaves_whole_with_the_records_after_it(
        office_world, make_community, domains, syncdb_secret, publisher):
    """An office may let a value be up to 4 MiB (limits.json); csv.reader stops at 128 KiB by default, and
    Datasette then writes the error in place of every record after it, with a 200 status."""
    store = office_world.store
    raised = {"max_value": 1 << 20, "max_line": 2 << 20}
    (store / "limits.json").write_text(json.dumps(raised))
    a = make_community("441900003001")
    long_address = "东莞市南城街道莞太路" + "甲" * 150_000
    conn = sqlite3.connect(a.path / "huji.db")
    with conn:
        for n, extra in ((1, {"address": long_address}), (2, {})):
            row = person(n, "441900003001", **extra)
            conn.execute(f"INSERT INTO persons ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                         list(row.values()))
    conn.close()
    summary = merge.merge(store, [a.export(caps=limits.from_dict(raised)).path], syncdb_secret, domains)
    assert summary.rejected == [] and summary.changes == 2, summary
    site = publisher(store)
    got = site.sign_in("wangfang").get(f"{site.url}/renkou_mingwen/户籍_人员.csv")
    assert got.status_code == 200
    rows = list(csv.DictReader(io.StringIO(got.content.decode("utf-8-sig"), newline="")))
    assert len(rows) == 2, got.content[-300:]
    assert sorted(len(r["住址"]) for r in rows)[-1] == len(long_address)


def test_a_column_of_the_tables_own_named_label_stays(domains):
    """Only Datasette's label of a coded column is left out (it comes right after the code); a column the
    table itself calls 性别_label stays, whether or not Datasette added its label of 性别 before it."""
    huji = domains["huji"]
    persons = huji.tables["persons"].columns
    own = Column("sex_note", "text", "性别_label", "lww")
    columns = {"性别": (huji, persons["sex"]), "性别_label": (huji, own)}
    for stream, expected in (
            ("rowid,性别,性别_label\r\n1,2,0012\r\n",
             "rowid,性别,性别_label\r\n1,2 女性,\"=\"\"0012\"\"\"\r\n"),
            ("rowid,性别,性别_label,性别_label\r\n1,2,女性,0012\r\n",
             "rowid,性别,性别_label\r\n1,2 女性,\"=\"\"0012\"\"\"\r\n")):
        rewriter = site_csv.Rewriter(columns.get, masked=False)
        out = rewriter.feed(stream.encode()) + rewriter.feed(b"", last=True)
        assert out.decode("utf-8") == "\ufeff" + expected, stream
