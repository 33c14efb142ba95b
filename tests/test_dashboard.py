"""The dashboard (看板, /-/dashboard): real `syncdb publish` on 127.0.0.1, over HTTP, with staff signed in.

Its counts must be the counts of the published tables: an administrator's own
SQL over HTTP says what each should be.
"""

import re
import sqlite3
import time

import pytest

from syncdb import community, merge, office
from syncdb.projection import MASKED_DB, mask_value
from syncdb.sample import generate

CODES = ["441900003001", "441900003002"]
RESIDENTS = 40
# The published names of what the page counts, written out here rather than taken from the code under test.
PERSONS, HOUSEHOLDS, MIGRANTS = "户籍_人员", "户籍_户", "流动人口_流动人员"
ASSISTANCE, BENEFITS = "民政_社会救助", "民政_民政待遇"
EXPECTED = {
    "residents": f"SELECT count(*) FROM [{PERSONS}] WHERE [人员状态] = 'normal' AND [社区代码] = :c",
    "households": f"SELECT count(*) FROM [{HOUSEHOLDS}] WHERE [社区代码] = :c",
    "migrants": f"SELECT count(*) FROM [{MIGRANTS}] WHERE ([离开日期] IS NULL OR [离开日期] = '' "
                "OR [离开日期] > date('now', 'localtime')) AND [社区代码] = :c",
}
SUPPORT = {  # the key of a column on the page -> the SQL counting it
    "minzheng.assistance:{t}": f"SELECT count(*) FROM [{ASSISTANCE}] WHERE [救助状态] = 'active' "
                               "AND [救助类别] = :t AND [社区代码] = :c",
    "minzheng.benefits:{t}": f"SELECT count(*) FROM [{BENEFITS}] WHERE [待遇状态] = 'active' "
                             "AND [待遇类别] = :t AND [社区代码] = :c",
}


def _leaves(folder, died: int, moved: int) -> None:
    """Some members (never a 户主) die or move away, and a migrant left last month: the page must not count them."""
    conn = sqlite3.connect(folder / "huji.db")
    with conn:
        members = [r[0] for r in conn.execute(
            "SELECT id_number FROM persons WHERE relationship != '02' ORDER BY id_number LIMIT ?", (died + moved,))]
        for n, who in enumerate(members):
            if n < died:
                conn.execute("UPDATE persons SET status = 'deceased', death_date = '2024-01-02', "
                             "deregistration_reason = '1' WHERE id_number = ?", (who,))
            else:
                conn.execute("UPDATE persons SET status = 'moved_out', deregistration_reason = '2' "
                             "WHERE id_number = ?", (who,))
    conn.close()
    conn = sqlite3.connect(folder / "liudong.db")
    with conn:
        conn.execute("UPDATE migrants SET leaving_date = date('now', '-20 days') WHERE rowid = "
                     "(SELECT min(rowid) FROM migrants WHERE leaving_date IS NULL)")
    conn.close()


@pytest.fixture
def street(office_store, syncdb_secret, domains, tmp_path):
    """Two sample communities (every domain) merged, with the deceased, the moved out, a migrant who left,
    and a resident registered in both: one open conflict."""
    folders = {}
    for n, code in enumerate(CODES, start=1):
        folder = tmp_path / code
        generate(folder, code, RESIDENTS, n, domains)
        _leaves(folder, died=n, moved=n + 1)
        community.init(folder, code, office.public_key_path(office_store), domains, syncdb_secret)
        office.enroll(office_store, code, folder / f"{code}.pub.json")
        folders[code] = folder
    bundles = [community.export(folder, domains, syncdb_secret).path for folder in folders.values()]
    summary = merge.merge(office_store, bundles, syncdb_secret, domains)
    assert not summary.refused and not summary.rejected, summary
    # The second community registers one of the first's residents too (no household of its own there).
    a = sqlite3.connect(folders[CODES[0]] / "huji.db")
    a.row_factory = sqlite3.Row
    twice = dict(a.execute("SELECT * FROM persons WHERE status = 'normal' AND relationship != '02' LIMIT 1").fetchone())
    a.close()
    twice.update(community_code=CODES[1], household_no=None, relationship=None, address_code=None)
    b = sqlite3.connect(folders[CODES[1]] / "huji.db")
    with b:
        b.execute(f"INSERT INTO persons ({', '.join(twice)}) VALUES ({', '.join('?' * len(twice))})",
                  list(twice.values()))
    b.close()
    summary = merge.merge(office_store, [community.export(folders[CODES[1]], domains, syncdb_secret).path],
                          syncdb_secret, domains)
    assert summary.opened == 1, summary
    return office_store, folders


def _sql(session, url: str, sql: str, **params) -> int:
    answer = session.get(f"{url}/{MASKED_DB}.json", params={"sql": sql, "_shape": "array", **params})
    assert answer.status_code == 200, answer.text[:300]
    return list(answer.json()[0].values())[0]


def _board(html: str) -> dict[tuple[str, str], int]:
    """(community code or "total", column key) -> the number the page shows in the counts table."""
    table = html.split('id="dashboard-counts"', 1)[1].split("</table>", 1)[0]
    cells = {}
    for community_code, row in re.findall(r'<tr[^>]*data-community="([^"]+)"[^>]*>(.*?)</tr>', table, re.S):
        for key, value in re.findall(r'<td class="n" data-(?:measure|support)="([^"]+)">\s*(\d+)\s*</td>', row):
            cells[community_code, key] = int(value)
    return cells


def _dashboard(session, url: str) -> str:
    answer = session.get(f"{url}/-/dashboard")
    assert answer.status_code == 200, answer.text[:500]
    return answer.text


def test_every_count_is_the_count_of_the_published_tables(street, publisher):
    store, _folders = street
    site = publisher(store)
    admin = site.sign_in("zhaomin")
    board = _board(_dashboard(admin, site.url))
    for code in CODES:
        for key, sql in EXPECTED.items():
            assert board[code, key] == _sql(admin, site.url, sql, c=code), (code, key)
    # Some of each, and the filters matter: the page does not just count every row.
    everyone = _sql(admin, site.url, f"SELECT count(*) FROM [{PERSONS}]")
    assert 0 < board["total", "residents"] < everyone
    assert board["total", "residents"] == sum(board[c, "residents"] for c in CODES)
    assert 0 < board["total", "migrants"] < _sql(admin, site.url, f"SELECT count(*) FROM [{MIGRANTS}]")
    assert board["total", "households"] > 0
    support = [key for (code, key) in board if ":" in key and code == "total"]
    assert support, board
    for key in support:
        template, _sep, type_code = key.rpartition(":")
        sql = SUPPORT[template + ":{t}"]
        for code in CODES:
            assert board[code, key] == _sql(admin, site.url, sql, c=code, t=type_code), (code, key)
    assert sum(board["total", key] for key in support) > 0
    # The duplicate registration involves both communities; the street has one open conflict.
    assert [board[c, "conflicts"] for c in (*CODES, "total")] == [1, 1, 1]


def test_a_masked_clerk_sees_counts_and_no_one_s_details(street, publisher, domains):
    store, folders = street
    site = publisher(store)
    clerk = site.sign_in("lilei")
    html = _dashboard(clerk, site.url)
    board = _board(html)
    assert board["total", "residents"] > 0
    secrets, masked = set(), set()
    for folder in folders.values():
        for db, table in (("huji", "persons"), ("liudong", "migrants"), ("huji", "households")):
            conn = sqlite3.connect(folder / f"{db}.db")
            conn.row_factory = sqlite3.Row
            schema = domains[db].tables[table]
            for row in conn.execute(f"SELECT * FROM {table}"):
                for column in schema.sensitive_columns:
                    if row[column]:
                        secrets.add(str(row[column]))
                        masked.add(str(mask_value(schema.columns[column], row[column])))
            conn.close()
    assert len(secrets) > 100
    assert not [s for s in secrets | masked if s in html], "a person's value (plain or masked) is on the dashboard"
    # Every community's last merge is named.
    for code in CODES:
        row = html.split(f'data-community="{code}"', 1)[1].split("</tr>", 1)[0]
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", row), row
    # Counts are no plaintext view: nobody's dashboard goes to the page-view log.
    _dashboard(site.sign_in("wangfang"), site.url)
    conn = sqlite3.connect(store / "publish.db")
    try:
        views = conn.execute("SELECT actor, page FROM page_views").fetchall()
    except sqlite3.OperationalError:
        views = []
    conn.close()
    assert not [v for v in views if "dashboard" in v[1]], views


def _made_at(html: str) -> str:
    return re.search(r"Figures as of ([\d: -]+)", html).group(1)


def test_the_charts_are_svg_made_once_per_generation(street, publisher, domains, syncdb_secret):
    store, folders = street
    site = publisher(store, "--refresh", "1")
    clerk = site.sign_in("lilei")
    first = _dashboard(clerk, site.url)
    charts = re.findall(r'<figure id="dashboard-chart-\d+".*?</figure>', first, re.S)
    assert len(charts) == 2, first[:2000]
    people, support = charts
    assert people.count("<svg") == 1 and "<rect" in people
    for code in CODES:
        assert code in people  # each community along the side
    assert "最低生活保障" in support or "高龄津贴" in support  # a type read as its meaning
    made, before = _made_at(first), _board(first)
    time.sleep(2.5)  # more than a refresh: the site looked, and nothing changed
    assert _made_at(_dashboard(site.sign_in("zhaomin"), site.url)) == made, "made again with nothing changed"

    # A resident of the first community dies: after the next merge and refresh, the page says so.
    conn = sqlite3.connect(folders[CODES[0]] / "huji.db")
    with conn:
        conn.execute("UPDATE persons SET status = 'deceased', death_date = date('now') WHERE rowid = (SELECT "
                     "min(rowid) FROM persons WHERE status = 'normal' AND relationship != '02')")
    conn.close()
    merge.merge(store, [community.export(folders[CODES[0]], domains, syncdb_secret).path], syncdb_secret, domains)
    deadline = time.monotonic() + 30
    while _made_at(html := _dashboard(clerk, site.url)) == made:
        assert time.monotonic() < deadline, "the dashboard still shows the data before the merge"
        time.sleep(0.5)
    assert _board(html)[CODES[0], "residents"] == before[CODES[0], "residents"] - 1
    recent = html.split('id="dashboard-recent"', 1)[1].split(f'data-community="{CODES[0]}"', 1)[1]
    assert re.search(r'data-measure="residents" data-change="status">1<', recent), recent[:1500]
