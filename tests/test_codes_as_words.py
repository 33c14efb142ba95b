"""Codes read as words on the published site: 2 女性, 01 汉族, 正常 on table pages, row pages, facets,
the conflicts page and the Excel download, while filters and facets work on the code.
Real `syncdb publish` over HTTP on 127.0.0.1, with staff signed in."""

from __future__ import annotations

import io
import re
import sqlite3
import subprocess
from urllib.parse import quote

import openpyxl
import pytest
from datasette.utils import to_css_class

from conftest import SYNCDB
from syncdb import merge
from syncdb.projection import MASKED_DB, PLAIN_DB, PERSON_COLUMN, code_table_names

PERSONS = "户籍_人员"
SEX_CODES = "代码_性别"
CODES = ["441900003001", "441900003002"]


@pytest.fixture
def office(office_store, make_community, domains, syncdb_secret):
    """Two communities, eight residents (the odd-numbered men, the others women); the second registers
    one of the first's residents too, a duplicate registration whose status cell is queued."""
    a, b = make_community(CODES[0]), make_community(CODES[1])
    a.add_persons(6)
    b.next_person = 6
    b.add_persons(3)
    merge.merge(office_store, [a.export().path, b.export().path], syncdb_secret, domains)
    women = set()
    for community in (a, b):
        conn = sqlite3.connect(community.path / "huji.db")
        women |= {i for (i,) in conn.execute("SELECT id_number FROM persons WHERE sex = '2'")}
        conn.close()
    return office_store, women


@pytest.fixture
def site(office, publisher):
    return publisher(office[0])


def url(site, path: str, **query) -> str:
    return f"{site.url}{quote(path)}" + ("?" + "&".join(f"{quote(k)}={quote(str(v))}" for k, v in query.items())
                                         if query else "")


def cells(html: str, column: str) -> list[str]:
    """The text of a table page's cells of one column (Datasette marks each td with col-LABEL)."""
    found = re.findall(rf'<td class="col-{re.escape(to_css_class(column))} [^"]*"[^>]*>(.*?)</td>', html, re.S)
    return [re.sub(r"<[^>]+>", "", cell).replace("&nbsp;", " ").strip() for cell in found]


def test_a_table_page_shows_meanings_and_filters_on_the_code(site, office):
    women_ids = office[1]
    li = site.sign_in("lilei")
    page = li.get(url(site, f"/{MASKED_DB}/{PERSONS}"))
    assert page.status_code == 200
    sexes, peoples, statuses = cells(page.text, "性别"), cells(page.text, "民族"), cells(page.text, "人员状态")
    assert len(sexes) == 8 and set(sexes) == {"1 男性", "2 女性"}
    assert set(peoples) == {"01 汉族"} and set(statuses) == {"正常"}
    assert set(cells(page.text, "婚姻状况")) == {"20 已婚"} and set(cells(page.text, "与户主关系")) == {"02 户主"}
    # Filtering by the code: only women, shown as such; the JSON still holds the code.
    women = li.get(url(site, f"/{MASKED_DB}/{PERSONS}", 性别="2"))
    assert set(cells(women.text, "性别")) == {"2 女性"}
    data = li.get(url(site, f"/{MASKED_DB}/{PERSONS}.json", 性别="2", _shape="array")).json()
    assert len(data) == len(cells(women.text, "性别")) == len(women_ids) and {r["性别"] for r in data} == {"2"}
    assert {r["人员状态"] for r in data} == {"normal"}
    labelled = li.get(url(site, f"/{MASKED_DB}/{PERSONS}.json", 性别="2", _shape="array", _labels="on")).json()
    assert {r["性别"]["label"] for r in labelled} == {"女性"} and {r["性别"]["value"] for r in labelled} == {"2"}


def test_a_facet_counts_codes_and_reads_their_meaning(site, office):
    li = site.sign_in("lilei")
    data = li.get(url(site, f"/{MASKED_DB}/{PERSONS}.json", _facet="性别")).json()
    facet = {r["value"]: r for r in data["facet_results"]["性别"]["results"]}
    assert set(facet) == {"1", "2"}
    assert facet["2"]["label"] == "女性" and facet["2"]["count"] == len(office[1]) and facet["1"]["label"] == "男性"
    page = li.get(url(site, f"/{MASKED_DB}/{PERSONS}", _facet="人员状态"))
    facet_html = page.text.split('class="facet-info', 1)[1].split("</div>", 1)[0]
    assert "正常" in facet_html and "normal" not in re.sub(r'href="[^"]*"', "", facet_html)
    chosen = li.get(url(site, f"/{MASKED_DB}/{PERSONS}.json", _facet="性别", 性别="2", _shape="objects")).json()
    assert {r["性别"] for r in chosen["rows"]} == {"2"}


def test_a_row_page_shows_meanings_in_both_databases(site, office):
    _store, women = office
    for who, db in (("lilei", MASKED_DB), ("wangfang", PLAIN_DB)):
        session = site.sign_in(who)
        data = session.get(url(site, f"/{db}/{PERSONS}.json", 性别="2", _shape="array", _size="1")).json()
        rowid = session.get(url(site, f"/{db}/{PERSONS}.json", 性别="2", _shape="objects")).json()["rows"][0]["rowid"]
        page = session.get(url(site, f"/{db}/{PERSONS}/{rowid}"))
        assert page.status_code == 200
        assert "2 女性" in page.text and "01 汉族" in page.text and "正常" in page.text
        if db == PLAIN_DB:
            assert data[0]["公民身份号码"] in women


def test_code_tables_are_published_as_tables_with_foreign_keys(site, domains):
    li = site.sign_in("lilei")
    names = code_table_names(domains)
    assert names[("huji", "persons", "sex")] == SEX_CODES == names[("liudong", "migrants", "sex")]
    assert names[("huji", "persons", "status")] == "代码_人员状态"
    codes = li.get(url(site, f"/{MASKED_DB}/{SEX_CODES}.json", _shape="array")).json()
    assert {r["代码"]: r["名称"] for r in codes} == {"0": "未知的性别", "1": "男性", "2": "女性", "9": "未说明的性别"}
    row = li.get(url(site, f"/{MASKED_DB}/{SEX_CODES}/2"))
    assert row.status_code == 200 and "女性" in row.text
    admin = site.sign_in("zhaomin")
    keys = admin.get(url(site, f"/{MASKED_DB}.json"), params={
        "sql": "select * from pragma_foreign_key_list('户籍_人员')", "_shape": "array"}).json()
    assert {(k["from"], k["table"], k["to"]) for k in keys} >= {
        ("性别", SEX_CODES, "代码"), ("民族", "代码_民族", "代码"), ("人员状态", "代码_人员状态", "代码")}
    assert not [k for k in keys if k["from"] in ("公民身份号码", "姓名", "联系电话")]


def test_the_conflicts_page_shows_meanings(site):
    page = site.sign_in("lilei").get(f"{site.url}/-/conflicts")
    assert page.status_code == 200 and "duplicate-registration" in page.text
    candidates = [c.strip() for c in re.findall(r"<li>[^<]*[：:]([^<]*)</li>", page.text)]
    assert candidates and set(candidates) == {"正常"}


def test_conflicts_show_reads_codes_as_words(office, syncdb_env):
    store, _women = office
    listed = subprocess.run([SYNCDB, "conflicts", "list", str(store), "--format", "json"], env=syncdb_env,
                            capture_output=True, text=True, check=True)
    conflict = re.search(r'"id": (\d+)', listed.stdout).group(1)
    shown = subprocess.run([SYNCDB, "conflicts", "show", str(store), conflict], env=syncdb_env,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "正常" in shown.stdout and "'normal'" not in shown.stdout
    assert re.search(r"性别 \(sex\): [12] (男|女)性", shown.stdout) and "民族 (ethnicity): 01 汉族" in shown.stdout


def test_the_excel_download_of_a_table_page(site, office):
    _store, women = office
    for who, db in (("lilei", MASKED_DB), ("wangfang", PLAIN_DB)):
        session = site.sign_in(who)
        page = session.get(url(site, f"/{db}/{PERSONS}", 性别="2"))
        link = re.search(r'href="([^"]*\.xlsx[^"]*)"', page.text)
        assert link, "the table page offers the Excel download"
        answer = session.get(site.url + link.group(1).replace("&amp;", "&"))
        assert answer.status_code == 200, answer.text[:300]
        sheet = openpyxl.load_workbook(io.BytesIO(answer.content)).active
        rows = [[c for c in row] for row in sheet.iter_rows()]
        header = [c.value for c in rows[0]]
        assert header[:3] == ["公民身份号码", "姓名", "性别"] and PERSON_COLUMN not in header and "rowid" not in header
        body = [{h: c for h, c in zip(header, row)} for row in rows[1:]]
        assert len(body) == len(women) and {r["性别"].value for r in body} == {"2 女性"}
        assert {r["人员状态"].value for r in body} == {"正常"}
        ids = {r["公民身份号码"].value for r in body}
        assert all(r["公民身份号码"].number_format == "@" for r in body)
        if db == MASKED_DB:
            assert not ids & women and all("*" in i for i in ids)
        else:
            assert ids == women
    # The plaintext download is on the page-view log like any plaintext page.
    conn = sqlite3.connect(office[0] / "publish.db")
    pages = [page for (page,) in conn.execute("SELECT page FROM page_views WHERE actor = 'wangfang'")]
    conn.close()
    assert [p for p in pages if ".xlsx" in p and p.startswith(f"/{PLAIN_DB}/")]
