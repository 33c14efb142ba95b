"""The 核查 pages and the dashboard's open cases (issue 13): real `syncdb publish` on 127.0.0.1 over a sample
street merged with its planted cases, staff signed in over HTTP."""

from __future__ import annotations

import hashlib
import html as htmllib
import re
import sqlite3

import pytest

from conftest import Publisher, add_staff
from syncdb import cases, checks
from syncdb.masks import mask
from syncdb.projection import person_token
from test_checks import CODES, Street, env_for


@pytest.fixture(scope="module")
def street(tmp_path_factory, domains):
    root = tmp_path_factory.mktemp("checks-site")
    (root / "keyfile").write_bytes(b"c" * 32)
    return Street(root, domains, root / "keyfile", codes=CODES[:2], residents=300)


@pytest.fixture(scope="module")
def site(street, tmp_path_factory):
    env = env_for(street)
    add_staff(street.store, env)
    started = Publisher(street.store, env, tmp_path_factory.mktemp("log") / "publish.log")
    yield started
    started.stop()


def _page(session, url: str, status: int = 200) -> str:
    answer = session.get(url)
    assert answer.status_code == status, answer.text[:500]
    return answer.text


def _rows(html: str, table_id: str) -> str:
    return html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]


def _views(store) -> list[tuple[str, str]]:
    conn = sqlite3.connect(store / "publish.db")
    try:
        return conn.execute("SELECT actor, page FROM page_views ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def _secrets(street, items: list[dict]) -> set[str]:
    """Every sensitive value of the records the cases name, their full birth dates, and the subjects."""
    found = set()
    with street.opened() as st:
        view = checks.Records(st)
        for item in items:
            if item["subject_kind"] == "person":
                found.add(item["subject"])
            for r in item["records"]:
                schema = st.table(r["table"])
                record = view.get(r["table"], st.blind_key(schema, r["key"]))
                for column in schema.sensitive_columns:
                    if record[column] and len(str(record[column])) >= 2:
                        found.add(str(record[column]))
                if "birth_date" in schema.columns and record["birth_date"]:
                    found.add(record["birth_date"])
    return found


def test_the_checks_page_counts_each_check_s_cases_per_community(street, site):
    clerk = site.sign_in("lilei")
    html = _page(clerk, f"{site.url}/-/checks")
    with street.opened() as st:
        counts = checks.case_counts(st)
    assert {"deceased_paid", "permit_expired", "rental_overfull"} <= set(counts)
    overview = _rows(html, "checks")
    for name, per in counts.items():
        row = re.search(rf'<tr data-check="{name}">(.*?)</tr>', overview, re.S).group(1)
        assert f'href="/-/checks/{name}"' in row
        for state in cases.STATES:
            shown = re.search(rf'data-state="{state}">(\d+)<', row).group(1)
            assert int(shown) == sum(states.get(state, 0) for states in per.values()), (name, state)
    grid = _rows(html, "checks-per-community")
    for code in CODES[:2]:
        row = grid.split(f'data-community="{code}"', 1)[1].split("</tr>", 1)[0]
        for name, per in counts.items():
            cell = re.search(rf'data-check="{name}" data-open="(\d+)" data-confirmed="(\d+)"', row)
            assert (int(cell.group(1)), int(cell.group(2))) == \
                (per.get(code, {}).get("open", 0), per.get(code, {}).get("confirmed", 0)), (code, name)
    assert "Deceased or moved out, yet still paid" in html and "high" in html


def test_a_masked_clerk_sees_every_case_masked_with_links_and_nothing_is_logged(street, site):
    clerk = site.sign_in("lilei")
    before = _views(street.store)
    for name in ("deceased_paid", "permit_expired", "rental_overfull"):
        with street.opened() as st:
            items = checks.list_cases(st, name, masked=False)
        html = _page(clerk, f"{site.url}/-/checks/{name}")
        table = _rows(html, "cases")
        assert {int(i) for i in re.findall(r'data-case="(\d+)"', table)} == {i["id"] for i in items}
        leaked = [s for s in _secrets(street, items) if s in html]
        assert leaked == [], f"{name}: {len(leaked)} plaintext value(s) on a masked page"
        for item in items:
            row = table.split(f'id="case-{item["id"]}"', 1)[1].split("</tr>", 1)[0]
            assert htmllib.escape(item["message"], quote=False) in row
            if item["subject_kind"] == "person":
                assert mask(item["subject"]) in row
    assert _views(street.store) == before  # masked pages are no plaintext view


def test_each_case_links_to_the_person_household_and_address_pages(street, site):
    clerk = site.sign_in("lilei")
    with street.opened() as st:
        (paid,) = checks.list_cases(st, "deceased_paid", masked=False)[:1]
        token = person_token(st.blind_id(paid["subject"]))
    html = _page(clerk, f"{site.url}/-/checks/deceased_paid")
    row = html.split(f'id="case-{paid["id"]}"', 1)[1].split("</tr>", 1)[0]
    assert f'href="/-/person/{token}"' in row
    person = _page(clerk, f"{site.url}/-/person/{token}")
    assert mask(paid["subject"]) in person
    households = re.findall(r'href="(/-/household/[^"]+)"', row)
    assert households, row
    assert _page(clerk, site.url + households[0])
    html = _page(clerk, f"{site.url}/-/checks/rental_overfull")
    addresses = re.findall(r'href="(/-/address/[^"]+)"', _rows(html, "cases"))
    assert addresses and _page(clerk, site.url + addresses[0])


def test_view_pii_sees_plaintext_logged_before_it_is_sent_and_the_site_changes_nothing(street, site):
    digest = hashlib.sha256((street.store / "store.db").read_bytes()).hexdigest()
    pii = site.sign_in("wangfang")
    with street.opened() as st:
        items = checks.list_cases(st, "permit_expired", masked=False)
    html = _page(pii, f"{site.url}/-/checks/permit_expired?state=all")
    assert all(i["subject"] in html for i in items)
    # Logged as every plaintext page is: the query's values as blind indexes.
    assert [page for who, page in _views(street.store) if who == "wangfang"] == ["/-/checks/permit_expired?state=#"
                                                                               + st.blind_id("all").hex()[:12]]
    # Read only: no route takes a POST, and nothing the pages did wrote to the store.
    assert pii.post(f"{site.url}/-/checks/permit_expired", data={"state": "dismissed"}).status_code in (403, 405)
    assert _page(pii, f"{site.url}/-/checks/no_such_check", status=404)
    assert hashlib.sha256((street.store / "store.db").read_bytes()).hexdigest() == digest


def test_the_dashboard_shows_open_cases_per_community_and_the_street_s_total(street, site):
    html = _page(site.sign_in("lilei"), f"{site.url}/-/dashboard")
    table = _rows(html, "dashboard-counts")
    with street.opened() as st:
        counts = checks.case_counts(st)
    expected = {code: sum(states.get(s, 0) for per in counts.values() for c, states in per.items() if c == code
                          for s in cases.ACTIVE) for code in CODES[:2]}
    assert all(expected.values())
    for code, n in expected.items():
        row = table.split(f'data-community="{code}"', 1)[1].split("</tr>", 1)[0]
        assert re.search(rf'data-measure="cases">\s*{n}\s*<', row), row
    total = table.split('data-community="total"', 1)[1]
    assert re.search(rf'data-measure="cases">\s*{sum(expected.values())}\s*<', total)
    assert 'href="/-/checks"' in html


def test_the_checks_pages_in_chinese(street, tmp_path):
    env = env_for(street, SYNCDB_LANG="zh_CN")
    chinese = Publisher(street.store, env, tmp_path / "publish-zh.log")
    try:
        clerk = chinese.sign_in("lilei")
        overview = _page(clerk, f"{chinese.url}/-/checks")
        assert "信息比对" in overview and "死亡或迁出仍在领取待遇" in overview
        cases_page = _page(clerk, f"{chinese.url}/-/checks/deceased_paid")
        # The sentence is kept in the language the checks ran in (English here); the page's own words are Chinese.
        assert "死亡或迁出仍在领取待遇" in cases_page and "死亡后已发放月数：" in cases_page and "人员页面" in cases_page
        for english in ("Records concerned", "What is wrong", "Severity", "open and confirmed"):
            assert english not in cases_page
    finally:
        chinese.stop()


def test_a_dismissed_case_keeps_its_reason_from_masked_roles(street, site):
    with street.opened() as st:
        item = checks.list_cases(st, "permit_expired", masked=False)[-1]
    with street.opened(write=True) as st:
        cases.decide(st, item["id"], "dismissed", by="王芳", reason="居住证已续签，纸质件在档")
    clerk, pii = site.sign_in("lilei"), site.sign_in("wangfang")
    masked = _page(clerk, f"{site.url}/-/checks/permit_expired?state=dismissed")
    plain = _page(pii, f"{site.url}/-/checks/permit_expired?state=dismissed")
    assert f'data-case="{item["id"]}" data-state="dismissed"' in masked
    assert "居住证已续签" not in masked and "a reason is recorded" in masked
    assert "居住证已续签，纸质件在档" in plain and "王芳" in plain
    assert f'data-case="{item["id"]}"' not in _page(clerk, f"{site.url}/-/checks/permit_expired")


def test_the_person_page_lists_the_person_s_open_cases(street, site):
    with street.opened() as st:
        paid = checks.list_cases(st, "deceased_paid", masked=False)[0]
        token = person_token(st.blind_id(paid["subject"]))
    html = _page(site.sign_in("lilei"), f"{site.url}/-/person/{token}")
    listed = html.split('id="person-cases"', 1)[1].split("</ul>", 1)[0]
    assert "Deceased or moved out, yet still paid (open): " in listed
    assert htmllib.escape(paid["message"], quote=False) in listed


def test_a_page_number_of_any_digits_shows_a_page(street, site):
    """`?page=` of a digit Python cannot count with (a superscript two, which ended in an error page) or of
    fullwidth digits shows the first page, and a page past the last the last."""
    clerk = site.sign_in("lilei")
    for number in ("²", "１", "0", "99999999999999999999"):
        html = _page(clerk, f"{site.url}/-/checks/deceased_paid?state=all&page={number}")
        assert 'id="cases"' in html, number
