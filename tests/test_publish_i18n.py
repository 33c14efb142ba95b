"""Every page `syncdb publish` serves speaks the language of the publish process: Chinese by default,
English under SYNCDB_LANG=en — Datasette's own words (its chrome) too, never the data.

Real `syncdb publish` on 127.0.0.1 over HTTP, staff signed in; the column menu that Datasette's
table.js builds is read in a real headless Chromium.
"""

import re
import sqlite3
from html.parser import HTMLParser

import pytest
import requests

from conftest import STAFF, Publisher, add_staff
from test_publish_browser import browser, chromium, wait_for  # noqa: F401 (the real Chromium's fixtures)
from syncdb import chrome, i18n, merge
from syncdb.projection import MASKED_DB, PLAIN_DB

PERSONS = "户籍_人员"
PERSONS_PATH = "~E6~88~B7~E7~B1~8D_~E4~BA~BA~E5~91~98"  # Datasette's tilde-encoding of 户籍_人员

# Datasette's English, as its templates, Python and JavaScript write it: none may be read on a Chinese page.
CHROME = [
    "rows", "row", "Apply", "Suggested facets", "This data as", "Next page", "Advanced export", "advanced",
    "JSON shape", "CSV options", "download file", "expand labels", "Export CSV", "Powered by", "Queries took",
    "home", "Log out", "Menu", "Sort by", "Sort...", "descending", "- column -", "- remove filter -",
    "contains", "starts with", "ends with", "is not blank", "is null", "not like", "where", "sorted by",
    "View and edit SQL", "Custom SQL query", "Run SQL", "Format SQL", "Tables", "Error", "not found",
    "permission", "Forbidden", "Sign in", "Sign out", "Password", "Link", "0 records", "Table actions",
    "Open conflicts", "Sync status", "never synced", "Community", "View",
    "Data license", "Data source", "results", "hide", "show",
]
ENGLISH = re.compile(r"\b(?:%s)\b" % "|".join(re.escape(p) for p in CHROME))


class Visible(HTMLParser):
    """What a person reads: text outside scripts and styles, and the words of buttons and menus."""

    def __init__(self):
        super().__init__()
        self.words, self.hidden = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "style"):
            self.hidden += 1
        if tag == "input" and attrs.get("type") in ("submit", "button"):
            self.words.append(attrs.get("value") or "")
        for name in ("title", "placeholder", "aria-label"):
            if attrs.get(name) and not (tag == "a" and name == "title" and "select" in attrs[name]):
                self.words.append(attrs[name])

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.hidden -= 1

    def handle_data(self, data):
        if not self.hidden:
            self.words.append(data)


def visible(page: str) -> str:
    reader = Visible()
    reader.feed(page)
    return " ".join(" ".join(reader.words).split())


def english_in(page: str, allowed=()) -> list[str]:
    """Datasette's English phrases left on the page (the data's own words in `allowed` aside)."""
    text = visible(page)
    for word in allowed:
        text = text.replace(word, " ")
    return sorted(set(ENGLISH.findall(text)))


# --- a published store, in one language or the other --------------------------------------

@pytest.fixture
def office(office_store, make_community, domains, syncdb_secret):
    """Two communities merged, one resident registered by both (a conflict); one cell reads "rows"."""
    a, b = make_community("441900003001"), make_community("441900003002")
    a.add_persons(6)
    conn = sqlite3.connect(a.path / "huji.db")
    with conn:  # an address that happens to be chrome words: the data must come out as it went in
        conn.execute("UPDATE persons SET address = 'rows Apply Next page' WHERE rowid = 1")
    conn.close()
    b.next_person = 6
    b.add_persons(3)
    summary = merge.merge(office_store, [a.export().path, b.export().path], syncdb_secret, domains)
    assert summary.opened > 0
    return office_store


@pytest.fixture
def publish(tmp_path, syncdb_env):
    """publish(store, language) → a started Publisher whose process speaks `language`; always stopped."""
    started = []

    def start(store, language: str) -> Publisher:
        env = dict(syncdb_env, SYNCDB_LANG=language)
        add_staff(store, env)
        site = Publisher(store, env, tmp_path / f"publish-{language}-{len(started)}.log")
        started.append(site)
        return site

    yield start
    for site in started:
        site.stop()


def pages(site: Publisher) -> dict[str, requests.Response]:
    """Every kind of page: (name -> answer), fetched as the member of staff who may see it."""
    li, admin = site.sign_in("lilei"), site.sign_in("zhaomin")
    table = f"{site.url}/{MASKED_DB}/{PERSONS_PATH}"
    got = {
        "login": requests.get(f"{site.url}/-/login"),
        "index": li.get(f"{site.url}/"),
        "database": li.get(f"{site.url}/{MASKED_DB}"),
        "table": li.get(table, params=[("_facet", "性别"), ("_size", "3"), ("姓名__contains", "居"),
                                       ("_sort", "出生日期")]),
        "table, next page": None,
        "row": li.get(f"{table}/1"),
        "404 table": li.get(f"{site.url}/{MASKED_DB}/nothing_here"),
        "404 page": li.get(f"{site.url}/no/such/page/here"),
        "403": li.get(f"{site.url}/{PLAIN_DB}"),
        "logout": li.get(f"{site.url}/-/logout"),
        "sync": li.get(f"{site.url}/-/sync"),
        "conflicts": li.get(f"{site.url}/-/conflicts"),
        "query": admin.get(f"{site.url}/{MASKED_DB}", params={"sql": "select 1 as one"}),
        "database, admin": admin.get(f"{site.url}/{MASKED_DB}"),
        "table, admin": admin.get(table, params={"_facet": "性别"}),
        "versions": li.get(f"{site.url}/-/versions"),
    }
    following = re.search(r'href="([^"]*_next=[^"]*)"', got["table"].text)
    assert following, "the filtered table has a next page"
    link = following.group(1).replace("&amp;", "&")
    got["table, next page"] = li.get(link if link.startswith("http") else site.url + link)
    statuses = {"404 table": 404, "404 page": 404, "403": 403}
    for name, answer in got.items():
        assert answer.status_code == statuses.get(name, 200), (name, answer.status_code, answer.text[:300])
    return got


# The data's own words on these pages (a column, a table, a conflict's rule): not Datasette's chrome.
DATA_WORDS = ("duplicate-registration", "rows Apply Next page", "rows A*")


def test_every_page_is_chinese_by_default(office, publish):
    site = publish(office, "zh_CN")
    got = pages(site)
    for name, answer in got.items():
        left = english_in(answer.text, DATA_WORDS)
        assert not left, (name, left, [visible(answer.text)[max(0, m.start() - 60):m.end() + 60]
                                       for m in ENGLISH.finditer(visible(answer.text))][:8])
    expect = {
        "login": ["登录", "用户名", "密码"],
        "index": ["首页", "街道办人口数据", "个表"],
        "database": ["行", "首页"],
        "table": ["行，条件：姓名 包含“居”", "按“出生日期”排序", "应用", "下一页", "高级导出",
                  "数据导出格式：", "技术支持：", "- 选择字段 -", "开头是", "不为空", "链接"],
        "table, next page": ["应用", "下一页"],
        "row": ["数据导出格式："],
        "404 table": ["错误 404", "没有这个表。"],
        "404 page": ["错误 404"],
        "403": ["无权访问", "您无权查看这个数据库。"],
        "logout": ["退出登录", "当前登录："],
        "sync": ["同步状态", "社区", "被拒数据包共"],
        "conflicts": ["待处理冲突", "敏感信息已脱敏"],
        "query": ["自定义 SQL 查询，返回 1 行", "运行 SQL", "整理 SQL 格式", "数据导出格式："],
        "database, admin": ["自定义 SQL 查询", "运行 SQL"],
        "table, admin": ["查看和编辑 SQL", "可按以下字段分组统计", "性别"],
    }
    for name, words in expect.items():
        text = visible(got[name].text)
        assert all(w in text for w in words), (name, [w for w in words if w not in text], text[:2000])


def test_every_page_is_english_under_syncdb_lang_en(office, publish):
    site = publish(office, "en")
    got = pages(site)
    expect = {
        "login": ["Sign in", "Name", "Password"],
        "index": ["Street office population data", "tables"],
        "table": ["rows where", "Apply", "Next page", "Advanced export", "This data as", "Powered by",
                  "- column -", "starts with", "Link"],
        "row": ["This data as"],
        "404 table": ["Error 404", "There is no such table."],
        "403": ["Not allowed", "You may not see this database."],
        "logout": ["Sign out", "Signed in as:"],
        "sync": ["Sync status", "Community", "refused bundles in all"],
        "conflicts": ["Open conflicts", "Sensitive values are masked."],
        "query": ["Custom SQL query returning 1 row", "Run SQL"],
        "table, admin": ["View and edit SQL", "Suggested facets"],
    }
    for name, words in expect.items():
        text = visible(got[name].text)
        assert all(w in text for w in words), (name, [w for w in words if w not in text], text[:2000])


def test_data_that_reads_like_chrome_is_never_translated(office, publish):
    site = publish(office, "zh_CN")
    li = site.sign_in("lilei")
    table = li.get(f"{site.url}/{MASKED_DB}/{PERSONS_PATH}", params={"_sort": "住址"})
    # Masked, the address keeps its first part: "rows A…" — as it went in, not "行 …".
    assert re.search(r'<td class="col-[^"]*">rows A\*+</td>', table.text), visible(table.text)[:3000]
    found = li.get(f"{site.url}/{MASKED_DB}/{PERSONS_PATH}.json",
                   params={"_shape": "array", "住址__startswith": "rows A"}).json()
    row = li.get(f"{site.url}/{MASKED_DB}/{PERSONS_PATH}/{found[0]['rowid']}")
    assert re.search(r'<td class="col-[^"]*">rows A\*+</td>', row.text), visible(row.text)[:3000]
    # The plaintext database, for view-pii: the whole value, word for word.
    wang = site.sign_in("wangfang")
    plain = wang.get(f"{site.url}/{PLAIN_DB}/{PERSONS_PATH}", params={"_facet": "住址"})
    assert plain.text.count("rows Apply Next page") >= 2  # the cell and its facet value


def test_the_translator_changes_only_known_places():
    """The walk itself: chrome in its place is translated, the same words in a cell or a heading are not."""
    page = ('<p class="export-links">This data as <a href="x.json">json</a></p>'
            '<table class="rows-and-columns"><tr><th data-column="rows" data-column-type="text" data-is-pk="0">'
            'rows</th></tr><tr><td>This data as</td><td>Apply</td><td>Next page</td></tr></table>'
            '<form class="filters"><input type="submit" value="Apply"><label>Search:</label></form>'
            '<p><a href="?_next=2">Next page</a></p><h2>Apply</h2><script>var a = "Next page" && 1;</script>')
    i18n.use("zh_CN")
    try:
        out = str(chrome.translate(page, "table"))
    finally:
        i18n.use("en")
    assert '<p class="export-links">数据导出格式： <a href="x.json">json</a></p>' in out
    assert "<td>This data as</td><td>Apply</td><td>Next page</td>" in out
    assert 'data-is-pk="0">rows</th>' in out and "<h2>Apply</h2>" in out
    assert 'value="应用"' in out and "<label>搜索：</label>" in out and ">下一页</a>" in out
    assert '<script>var a = "Next page" && 1;</script>' in out
    assert str(chrome.translate(page, "table")) == page  # English: not a byte changed


def test_the_column_menu_is_chinese_in_a_browser(office, publish, browser):
    """table.js builds the column menu in the browser: its words come translated with the script."""
    from selenium.webdriver.common.by import By

    site = publish(office, "zh_CN")
    browser.get(f"{site.url}/-/login")
    wait_for(browser, lambda d: d.find_elements(By.ID, "username"), "the sign-in form")
    browser.find_element(By.ID, "username").send_keys("lilei")
    browser.find_element(By.ID, "password").send_keys(STAFF["lilei"][0])
    browser.find_element(By.CSS_SELECTOR, "form[action='/-/login'] input[type=submit]").click()
    wait_for(browser, lambda d: "/-/login" not in d.current_url, "the sign-in")
    browser.get(f"{site.url}/{MASKED_DB}/{PERSONS_PATH}?姓名__contains=居")
    icon = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "th[data-column='姓名'] .dropdown-menu-icon"),
                    "the column menu's icon")[0]
    browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", icon)
    menu = wait_for(browser, lambda d: [m for m in d.find_elements(By.CSS_SELECTOR, "div.dropdown-menu")
                                        if m.is_displayed()], "the column menu")[0]
    words = menu.text
    assert "升序排列" in words and "降序排列" in words and "按此字段分组统计" in words, words
    assert not re.search(r"Sort|Facet|Hide|Type:", words), words
    # (Published columns declare no type, so the menu's "Type:" line stays hidden: read in the script.)
    script = requests.get(f"{site.url}/-/static/table.js").text
    assert "`类型： ${" in script and "Type:" not in script and "Sort ascending" not in script
    # The filter row's remove button, which table.js adds, is labelled in Chinese too.
    remove = browser.find_elements(By.CSS_SELECTOR, ".filter-row a[aria-label]")
    assert remove and all(a.get_attribute("aria-label") == "删除此筛选条件" for a in remove)
