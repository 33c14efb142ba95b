"""`syncdb publish`: the household page (户), the person page's household, open conflicts and print.

Real `syncdb publish` on 127.0.0.1 over HTTP, staff signed in; the print test drives a real
headless Chromium (see test_publish_browser.py) with the print media emulated and prints a PDF.
"""

import base64
import re
import sqlite3

import pytest
import requests

from conftest import id_number
from syncdb import merge, resolve
from syncdb.projection import PLAIN_DB
from syncdb.schema import schemas_dir

CODE = "441900003001"
GRID = CODE + "001"
ADDRESS = CODE + "000123"
READ_AS = "莞太路12号"
FAMILY = "0300100001"  # 户号, with its leading zero
NEIGHBOURS = "0300100002"
HEAD = {"id_number": id_number(51), "name": "张伟", "sex": "1", "relationship": "02"}
WIFE = {"id_number": id_number(4, "2"), "name": "李娜", "sex": "2", "relationship": "12"}  # ends in X
SON = {"id_number": id_number(52), "name": "张小明", "sex": "1", "relationship": "20"}
NEIGHBOUR = {"id_number": id_number(53, "2"), "name": "李娜", "sex": "2", "relationship": "02"}  # the same name
MEMBERS = (HEAD, WIFE, SON)


def insert(path, table, row):
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))
    conn.close()


@pytest.fixture
def family(office_world, make_community, domains, syncdb_secret):
    """Two households at one community: 张伟 (head), his wife 李娜 (ID ending in X) and their son in
    FAMILY at a standard address; another 李娜 heading NEIGHBOURS. Then the office and the community
    both rename the wife before either hears of the other: an open conflict about her."""
    store = office_world.store
    a = make_community(CODE)
    insert(a.path / "wangge.db", "grids", {"grid_code": GRID, "name": "第一网格", "community_code": CODE})
    insert(a.path / "dizhi.db", "addresses", {"address_code": ADDRESS, "road": "莞太路", "door_no": "12",
                                             "grid_code": GRID, "community_code": CODE})
    for number, head, code in ((FAMILY, HEAD, ADDRESS), (NEIGHBOURS, NEIGHBOUR, None)):
        insert(a.path / "huji.db", "households", {
            "household_no": number, "household_type": "family", "head_id_number": head["id_number"],
            "address": "东莞市南城街道莞太路12号", "address_code": code, "community_code": CODE})
    for who, number in ((HEAD, FAMILY), (WIFE, FAMILY), (SON, FAMILY), (NEIGHBOUR, NEIGHBOURS)):
        insert(a.path / "huji.db", "persons", dict(
            who, ethnicity="01", birth_date="1980-01-01", household_no=number, marital_status="20",
            phone="13600000051", address="东莞市南城街道莞太路12号", community_code=CODE, status="normal"))
    summary = merge.merge(store, [a.export().path], syncdb_secret, domains)
    assert summary.rejected == [] and summary.changes == 8, summary
    resolve.office_edit(store, syncdb_secret, domains, [
        {"table": "huji.persons", "key": {"id_number": WIFE["id_number"]}, "cells": {"name": "李丽娜"}}])
    conn = sqlite3.connect(a.path / "huji.db")
    with conn:
        conn.execute("UPDATE persons SET name = '李雅娜' WHERE id_number = ?", (WIFE["id_number"],))
    conn.close()
    merge.merge(store, [a.export().path], syncdb_secret, domains)
    return store


def token_of(session, url, real_id):
    rows = session.get(f"{url}/{PLAIN_DB}/户籍_人员.json",
                       params={"_shape": "array", "公民身份号码": real_id}).json()
    assert len(rows) == 1, rows
    return str(rows[0]["档案"])  # as the person page's address spells it


def page_views(store):
    conn = sqlite3.connect(store / "publish.db")
    try:
        return [tuple(r) for r in conn.execute("SELECT actor, page FROM page_views ORDER BY id")]
    finally:
        conn.close()


def member_rows(html):
    """(head?, cells) of each row of the members table, tags stripped."""
    body = html.split('class="rows-and-columns syncdb-members"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr( class=\"syncdb-head\")?>(.*?)</tr>", body.split("<tbody>", 1)[1], re.S)
    return [(bool(head), [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", cells, re.S)])
            for head, cells in rows]


def test_the_household_page_lists_its_members_with_the_head_marked_masked_or_logged(family, publisher):
    site = publisher(family, "--schemas", str(schemas_dir()))
    assert requests.get(f"{site.url}/-/household/{FAMILY}", allow_redirects=False).status_code == 302
    li = site.sign_in("lilei")
    page = li.get(f"{site.url}/-/household/{FAMILY}")
    assert page.status_code == 200, page.text[:500]
    assert "no-store" in page.headers["Cache-Control"]
    rows = member_rows(page.text)
    assert len(rows) == 3
    # The head first and marked; relationships read as words; masked names and ID numbers.
    assert rows[0][0] and "Head of household" in rows[0][1][0] and "张*" in rows[0][1]
    assert [head for head, _ in rows] == [True, False, False]
    relationships = [next(c for c in cells if "户主" in c or "妻" in c or "子" in c) for _, cells in rows]
    assert relationships[0].endswith("户主") and relationships[1].endswith("妻") and relationships[2].endswith("子")
    assert "李*娜" in rows[1][1] and "张*明" in rows[2][1]  # the wife as renamed (in conflict), masked
    for secret in [who["id_number"] for who in MEMBERS] + ["张伟", "张小明", "李丽娜", "李雅娜"]:
        assert secret not in page.text, secret
    assert f'<a href="/-/address/{ADDRESS}">{READ_AS}</a>' in page.text
    assert FAMILY in page.text and "家庭户" in page.text
    assert NEIGHBOUR["id_number"][-4:] not in page.text  # the other household's head is not a member
    assert not [v for v in page_views(family) if v[0] == "lilei"] if (family / "publish.db").exists() else True

    # view-pii: plaintext, and on record before it is sent.
    wang = site.sign_in("wangfang")
    before = len(page_views(family))
    page = wang.get(f"{site.url}/-/household/{FAMILY}")
    assert page.status_code == 200
    for who in MEMBERS:
        assert who["id_number"] in page.text
    assert page_views(family)[before:] == [("wangfang", f"/-/household/{FAMILY}")]

    # Every 户号 cell of the tables links to its household page (the persons table's too).
    table = li.get(f"{site.url}/renkou/户籍_人员?户号={FAMILY}")
    assert table.status_code == 200 and f'<a href="/-/household/{FAMILY}">{FAMILY}</a>' in table.text

    # Unknown: a 404 saying so.
    missing = li.get(f"{site.url}/-/household/0300199999")
    assert missing.status_code == 404 and "There is no household with the number 0300199999" in missing.text


def test_the_person_page_shows_the_household_and_the_open_conflicts_about_the_person(family, publisher):
    site = publisher(family, "--schemas", str(schemas_dir()))
    wang = site.sign_in("wangfang")
    wife, head = token_of(wang, site.url, WIFE["id_number"]), token_of(wang, site.url, HEAD["id_number"])
    li = site.sign_in("lilei")

    page = li.get(f"{site.url}/-/person/{head}")
    assert page.status_code == 200
    assert f'<a href="/-/household/{FAMILY}">{FAMILY}</a>' in page.text  # reachable from every member
    assert len(member_rows(page.text)) == 3 and f'href="/-/person/{wife}"' in page.text
    conflicts = page.text.split('id="conflicts"', 1)[1].split('id="cases"', 1)[0]
    assert "None." in conflicts  # the wife's conflict is not about him
    assert "<td>family</td>" not in page.text and "家庭户" in page.text  # every domain's records: codes as words
    cases = page.text.split('id="cases"', 1)[1]
    assert "None." in cases.split("</p>", 1)[0]  # the checks ran after the merge and found nothing about him

    page = li.get(f"{site.url}/-/person/{wife}")
    conflicts = page.text.split('id="person-conflicts"', 1)[1].split("</table>", 1)[0]
    assert "姓名" in conflicts and "李*娜" in conflicts  # both candidates, masked
    assert "李丽娜" not in page.text and "李雅娜" not in page.text
    page = wang.get(f"{site.url}/-/person/{wife}")
    assert "李丽娜" in page.text and "李雅娜" in page.text  # plaintext for view-pii (and logged)
