"""`syncdb publish` seen through a real headless Chromium (selenium 4).

The module installs Chromium and a CJK font itself (scripts/install-chromium,
which does nothing when /usr/bin/chromium, /usr/bin/chromedriver and the font
are there), so a clean clone runs these tests with `make test` and no manual
step. Everything listens on 127.0.0.1 only; the browser reaches nothing else.

The site runs in Chinese, as the office's staff read it, and every page the
tests visit is checked to render its Chinese as glyphs, not boxes, and saved
as a PNG in build/screenshots/ (README.md, "Screenshots").
"""

import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from conftest import STAFF
from syncdb import merge
from test_dashboard import street  # noqa: F401 (a fixture: sample communities of every domain, merged)
from syncdb.projection import MASKED_DB, PERSON_COLUMN, PLAIN_DB

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install-chromium"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FONTS = ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",  # Chinese; and symbols (scripts/install-chromium)
         "/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf")
SCREENSHOTS = ROOT / "build" / "screenshots"
# The household page (/-/household/…) arrives with its own change; from then on it is visited too.
HOUSEHOLD_PAGES = "/-/household/" in (ROOT / "syncdb" / "datasette_plugin.py").read_text(encoding="utf-8")
CODES = ("441900003001", "441900003002")
PERSONS_TABLE = "户籍_人员"
WAIT = 15  # seconds for any one page or element


# --- the browser ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium():
    """Chromium, chromedriver and the fonts installed (once per run; a no-op when they are there).

    One install at a time: `make test` runs test files in one process per core, and apt-get run twice at
    once fails on its own lock."""
    import fcntl  # here, not at the top: test_lookup and test_publish_i18n import this module, and Windows has none

    SCREENSHOTS.parent.mkdir(exist_ok=True)
    with open(SCREENSHOTS.parent / "install-chromium.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"{INSTALL} failed with exit status {done.returncode}:\n{done.stdout}\n{done.stderr}")
    for path in (CHROMIUM, CHROMEDRIVER, *FONTS):
        assert Path(path).is_file(), f"{path} is missing after {INSTALL}"
    return CHROMIUM


@pytest.fixture
def syncdb_env(syncdb_env):
    """The site in Chinese, as the office's staff read it (the test process itself reads English)."""
    return dict(syncdb_env, SYNCDB_LANG="zh_CN")


def start_chromium(tmp_path: Path, env: dict | None = None) -> webdriver.Chrome:
    """A fresh headless Chromium with a profile of its own (``env``: chromedriver's and so Chromium's)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1024",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    # Explicit driver path: Selenium Manager is never asked to download anything.
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"), env=env)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    return driver


@pytest.fixture
def browser(chromium, tmp_path):
    """A fresh headless Chromium; always quit."""
    driver = start_chromium(tmp_path)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name: str) -> Path:
    """The page as a PNG in build/screenshots/, which README.md names."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n"), f"{path} is not a real PNG"
    return path


# Each character drawn on a canvas in the font the page gives ``element``: how much ink, and a
# hash of the pixels. Without a font that has them, every Chinese character is drawn as the same
# box (the fallback font's .notdef glyph): all the hashes are equal. Real glyphs all differ.
DRAW_GLYPHS = """
const [characters, element] = arguments;
const family = getComputedStyle(element).fontFamily;
const canvas = document.createElement('canvas');
canvas.width = canvas.height = 48;
const context = canvas.getContext('2d', {willReadFrequently: true});
context.font = '32px ' + family;
context.textBaseline = 'top';
return characters.map(character => {
  context.clearRect(0, 0, 48, 48);
  context.fillText(character, 4, 4);
  const alpha = context.getImageData(0, 0, 48, 48).data;
  let ink = 0, hash = 0;
  for (let i = 3; i < alpha.length; i += 4) {
    if (alpha[i]) ink++;
    hash = (Math.imul(hash, 31) + alpha[i]) | 0;
  }
  return {character, family, ink, hash};
});
"""


def glyphs(driver, characters: list[str], selector: str = "h1") -> list[dict]:
    element = driver.find_element(By.CSS_SELECTOR, selector)
    return driver.execute_script(DRAW_GLYPHS, characters, element)


def assert_chinese_renders(driver, page: str) -> None:
    """The Chinese the page shows is drawn as glyphs, not as boxes, in the font of its heading."""
    text = driver.execute_script("return document.body.innerText")
    characters = list(dict.fromkeys(re.findall(r"[\u4e00-\u9fff]", text)))[:8]
    assert len(characters) >= 4, f"hardly any Chinese on the {page} page: {text[:300]!r}"
    drawn = glyphs(driver, characters)
    assert all(d["ink"] > 0 for d in drawn), drawn
    shapes = {d["hash"] for d in drawn}
    assert len(shapes) == len(characters), \
        f"Chinese renders as boxes on the {page} page ({drawn[0]['family']}): is a CJK font installed?"


def wait_for(driver, condition, what: str):
    try:
        return WebDriverWait(driver, WAIT).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}; now at {driver.current_url}:\n"
                             f"{driver.page_source[:3000]}") from None


def sign_in(driver, base: str, name: str, start: str = "/") -> None:
    """Visit ``start`` signed out, land on the sign-in form, fill it in and submit it."""
    driver.get(base + start)
    wait_for(driver, EC.presence_of_element_located((By.ID, "username")), "the sign-in form")
    assert "/-/login" in driver.current_url
    assert "登录" in driver.title
    driver.find_element(By.ID, "username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(STAFF[name][0])
    driver.find_element(By.CSS_SELECTOR, "form[action='/-/login'] input[type=submit]").click()
    wait_for(driver, lambda d: "/-/login" not in d.current_url, f"{name} to be signed in")


def open_table(driver, database: str) -> None:
    """From the index, follow the link to the persons table of ``database``."""
    wait_for(driver, EC.presence_of_element_located((By.CSS_SELECTOR, f"a[href^='/{database}/']")),
             f"a table link of {database}")
    for a in driver.find_elements(By.CSS_SELECTOR, f"a[href^='/{database}/']"):
        if a.text.strip() == PERSONS_TABLE:
            a.click()
            break
    else:
        raise AssertionError(f"no link to {PERSONS_TABLE} in {database} on {driver.current_url}")
    wait_for(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "table.rows-and-columns")),
             f"the {PERSONS_TABLE} table of {database}")


def headers(driver) -> list[str]:
    return [th.text.strip() for th in driver.find_elements(By.CSS_SELECTOR, "table.rows-and-columns thead th")]


# --- the published store ---------------------------------------------------------------------

@pytest.fixture
def residents(make_community, office_store, syncdb_secret, domains):
    """Two communities' residents merged into ``office_store``; their plaintext (id, name, phone)."""
    bundles, people = [], []
    for n, code in enumerate(CODES):
        c = make_community(code)
        c.next_person = 1 + 10 * n  # different residents in each community
        c.add_persons(3)
        bundles.append(c.export().path)
        conn = sqlite3.connect(c.path / "huji.db")
        people += conn.execute("SELECT id_number, name, phone FROM persons").fetchall()
        conn.close()
    summary = merge.merge(office_store, bundles, syncdb_secret, domains)
    assert not summary.refused, summary.refused
    assert len(people) == 6
    return people


@pytest.fixture
def site(residents, publisher, office_store):
    return publisher(office_store)


def page_views(store: Path) -> list[tuple]:
    conn = sqlite3.connect(store / "publish.db")
    try:
        return conn.execute("SELECT actor, page FROM page_views ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


# --- the tests -------------------------------------------------------------------------------

def test_masked_staff_signs_in_and_sees_only_masked_values(browser, site, residents, tmp_path, office_store):
    sign_in(browser, site.url, "lilei")
    assert browser.current_url.rstrip("/") == site.url
    wait_for(browser, EC.presence_of_element_located((By.CSS_SELECTOR, f"a[href^='/{MASKED_DB}']")),
             "the index")
    index = browser.page_source
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("街道办人口数据")
    assert PLAIN_DB not in index, "the plaintext database is listed for a member of staff without view-pii"

    open_table(browser, MASKED_DB)
    columns = headers(browser)
    for label in ("公民身份号码", "姓名", "联系电话", PERSON_COLUMN):
        assert any(label in h for h in columns), (label, columns)
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "table.rows-and-columns tbody td")]
    for id_number, name, phone in residents:
        assert f"{id_number[:6]}{'*' * 8}{id_number[-4:]}" in cells
        assert f"{name[0]}*{name[-1]}" in cells  # 居民1 → 居*1
        assert f"{phone[:3]}****{phone[-4:]}" in cells
    source = browser.page_source
    for id_number, name, phone in residents:
        for secret in (id_number, name, phone, id_number[6:14]):  # the birth-date digits are masked too
            assert secret not in source, f"plaintext {secret!r} on the masked table page"
    screenshot(browser, "masked-table")

    links = browser.find_elements(By.LINK_TEXT, "查看")
    assert len(links) == len(residents)
    links[0].click()
    wait_for(browser, EC.presence_of_element_located((By.TAG_NAME, "h1")), "the person page")
    assert "/-/person/" in browser.current_url
    assert browser.find_element(By.TAG_NAME, "h1").text == "人员档案"
    person = browser.page_source
    assert "敏感信息已脱敏" in person
    assert PERSONS_TABLE in person
    assert any(f"{i[:6]}{'*' * 8}{i[-4:]}" in person for i, _, _ in residents)
    for id_number, name, phone in residents:
        for secret in (id_number, name, phone):
            assert secret not in person, f"plaintext {secret!r} on the masked person page"
    assert not [row for row in page_views(office_store) if row[0] == "lilei"]


def test_view_pii_staff_sees_plaintext_and_is_logged(browser, site, residents, tmp_path, office_store):
    sign_in(browser, site.url, "wangfang")
    wait_for(browser, EC.presence_of_element_located((By.CSS_SELECTOR, f"a[href^='/{PLAIN_DB}']")),
             "the plaintext database on the index")

    open_table(browser, PLAIN_DB)
    assert any("公民身份号码" in h for h in headers(browser))
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "table.rows-and-columns tbody td")]
    for id_number, name, phone in residents:
        assert id_number in cells and name in cells and phone in cells
    screenshot(browser, "plaintext-table")

    # The view is logged just after the page is sent: give it a moment.
    deadline = time.monotonic() + WAIT
    while not (mine := [row for row in page_views(office_store) if row[0] == "wangfang"]):
        assert time.monotonic() < deadline, f"no page_views row for wangfang: {page_views(office_store)}"
        time.sleep(0.1)
    assert any(page.startswith(f"/{PLAIN_DB}/{PERSONS_TABLE}") for _, page in mine), mine
    for _, page in page_views(office_store):
        for id_number, name, phone in residents:
            assert id_number not in page and name not in page and phone not in page


def test_masked_staff_is_refused_plaintext_and_sees_sync_status(browser, site, tmp_path, office_store):
    sign_in(browser, site.url, "lilei", start=f"/{PLAIN_DB}")
    # Back at the page asked for, which is now forbidden rather than a sign-in form.
    assert browser.current_url.rstrip("/").endswith(f"/{PLAIN_DB}")
    wait_for(browser, EC.presence_of_element_located((By.TAG_NAME, "body")), "the refusal")
    # Refused (in whatever words the site speaks): no table of the plaintext database is offered.
    assert browser.find_element(By.TAG_NAME, "h1").text != "人口数据（明文，访问留痕）"
    assert not browser.find_elements(By.CSS_SELECTOR, f"a[href^='/{PLAIN_DB}/']")
    assert "公民身份号码" not in browser.page_source
    screenshot(browser, "forbidden")

    browser.get(f"{site.url}/-/sync")
    wait_for(browser, EC.presence_of_element_located((By.ID, "sync-status")), "the sync status page")
    assert browser.find_element(By.TAG_NAME, "h1").text == "同步状态"
    rows = browser.find_elements(By.CSS_SELECTOR, "#sync-status tbody tr")
    shown = [row.find_elements(By.TAG_NAME, "td")[0].text for row in rows]
    assert shown == list(CODES)
    for row in rows:
        applied = row.find_elements(By.TAG_NAME, "td")[1].text
        assert applied == "1", f"last bundle applied {applied!r} in {row.text!r}"
    screenshot(browser, "sync-status-first-night")
    assert not [row for row in page_views(office_store) if row[0] == "lilei"]


def test_every_page_in_chinese_with_screenshots(browser, street, publisher):
    """A masked clerk's round of the site, every page checked for real Chinese glyphs and saved as a PNG."""
    store, _folders = street
    site = publisher(store)
    sign_in(browser, site.url, "lilei")
    wait_for(browser, EC.presence_of_element_located((By.CSS_SELECTOR, f"a[href^='/{MASKED_DB}']")), "the index")

    def shown(name: str) -> None:
        assert_chinese_renders(browser, name)
        screenshot(browser, name)
    shown("home")
    open_table(browser, MASKED_DB)
    shown("persons")
    browser.find_elements(By.LINK_TEXT, "查看")[0].click()
    wait_for(browser, lambda d: "/-/person/" in d.current_url, "the person page")
    shown("person")
    if HOUSEHOLD_PAGES:
        household = browser.find_elements(By.CSS_SELECTOR, "a[href^='/-/household/']")
        assert household, "the person page links to no household page"
        household[0].click()
        wait_for(browser, lambda d: "/-/household/" in d.current_url, "the household page")
        shown("household")
    for name, path, element in (("conflicts", "/-/conflicts", "conflicts"), ("sync-status", "/-/sync", "sync-status"),
                                ("dashboard", "/-/dashboard", "dashboard-counts")):
        browser.get(site.url + path)
        wait_for(browser, EC.presence_of_element_located((By.ID, element)), f"the {name} page")
        shown(name)
    charts = browser.find_elements(By.CSS_SELECTOR, "figure.dashboard-chart svg")
    assert len(charts) == 2 and all(c.size["width"] > 200 for c in charts), "the dashboard's charts are not drawn"


FONTS_WITHOUT_CJK = """<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig><dir>/usr/share/fonts/truetype/dejavu</dir><cachedir>{cache}</cachedir></fontconfig>
"""


def test_the_glyph_check_sees_boxes_where_no_font_has_chinese(chromium, tmp_path):
    """The check above can fail: in a Chromium whose fontconfig knows only DejaVu (no CJK), it sees boxes."""
    conf = tmp_path / "fonts.conf"
    conf.write_text(FONTS_WITHOUT_CJK.format(cache=tmp_path / "font-cache"), encoding="utf-8")
    page = "data:text/html;charset=utf-8," + quote("<h1>街道办人口数据看板 Dashboard</h1>")
    for env, boxes in ((dict(os.environ, FONTCONFIG_FILE=str(conf)), True), (None, False)):
        folder = tmp_path / ("no-cjk" if boxes else "cjk")
        folder.mkdir()
        driver = start_chromium(folder, env)
        try:
            driver.get(page)
            drawn = glyphs(driver, list("街道办人口数据"))
            latin = glyphs(driver, list("Dashbo"))
        finally:
            driver.quit()
        assert len({d["hash"] for d in latin}) == 6, latin  # the font itself is there either way
        assert (len({d["hash"] for d in drawn}) == 1) is boxes, drawn
