"""`syncdb publish`: looking a resident up by ID number or name without unmasking, and printing.

Real `syncdb publish` on 127.0.0.1 over HTTP with staff signed in, and a real headless Chromium
(the fixtures of test_publish_browser.py) typing into the search box and printing the person page.
"""

import base64
import re

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from test_household import FAMILY, HEAD, MEMBERS, NEIGHBOUR, SON, WIFE, family, page_views, token_of  # noqa: F401
from conftest import STAFF
from test_publish_browser import browser, chromium, wait_for  # noqa: F401  (fixtures: one Chromium set-up)
from syncdb.schema import schemas_dir

TYPED_WIFE = f"{WIFE['id_number'][:6]} {WIFE['id_number'][6:14]} {WIFE['id_number'][14:].lower()}"  # …042x


def look_up(session, url, typed):
    """POST the search form as a browser does (with the form's CSRF token); the answer, not followed."""
    form = session.get(f"{url}/-/lookup")
    token = form.text.split('name="csrftoken" value="', 1)[1].split('"', 1)[0]
    return session.post(f"{url}/-/lookup", data={"csrftoken": token, "q": typed}, allow_redirects=False)


def logged(token: str) -> str:
    """How the page-view log keeps a look-up of this person's ID number: the first 12 hex digits of its
    blind index, whose first 63 bits are the person's number (projection.person_token)."""
    return f"#{int(token) << 1:016x}"[:13]


def office_files(store, log_path):
    """Every file the office writes, byte for byte: the store folder (store, publish.db and their WALs…)
    and publish's own log."""
    return b"".join(p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()) + log_path.read_bytes()


def secrets_of(*people):
    out = []
    for who in people:
        number = who["id_number"]
        out += [number, number.lower(), number[:-1] + "x", who["name"]]
    return [s.encode() for s in out] + [TYPED_WIFE.encode()]


def test_a_masked_clerk_finds_a_resident_by_full_id_number_and_the_log_holds_only_its_blind_index(
        family, publisher, tmp_path):
    site = publisher(family, "--schemas", str(schemas_dir()))
    wife = token_of(site.sign_in("wangfang"), site.url, WIFE["id_number"])
    li = site.sign_in("lilei")
    before = len(page_views(family))

    # Spaces and a lower-case x: still the whole number, found through the blind index.
    answer = look_up(li, site.url, TYPED_WIFE)
    assert answer.status_code == 303 and answer.headers["Location"] == f"/-/person/{wife}"
    page = li.get(site.url + answer.headers["Location"])
    assert page.status_code == 200 and "Sensitive values are masked." in page.text
    assert WIFE["id_number"] not in page.text and f"110105{'*' * 8}042X" in page.text
    # Logged before the answer, for a masked clerk too: the query as its blind index, the person's token.
    assert page_views(family)[before:] == [("lilei", f"/-/lookup?id={logged(wife)}")]

    # A full, well-formed number nobody has: a page saying so, and logged all the same.
    nobody = look_up(li, site.url, "110105198001019999")
    assert nobody.status_code == 404 and "No resident with this ID number is published" in nobody.text
    assert len(page_views(family)) == before + 2
    site.stop()
    for secret in secrets_of(*MEMBERS, NEIGHBOUR) + [b"110105198001019999"]:
        assert secret not in office_files(family, site.log_path), secret


def test_a_masked_clerk_is_refused_part_of_a_number_or_a_name_and_finds_a_full_name(family, publisher):
    site = publisher(family, "--schemas", str(schemas_dir()))
    wang = site.sign_in("wangfang")
    head, neighbour = token_of(wang, site.url, HEAD["id_number"]), token_of(wang, site.url, NEIGHBOUR["id_number"])
    li = site.sign_in("lilei")
    before = len(page_views(family))

    partial = look_up(li, site.url, WIFE["id_number"][:12])
    assert partial.status_code == 403
    assert "Only a full 18-character ID number can be looked up" in partial.text
    assert "it would let anyone list residents" in partial.text
    assert WIFE["id_number"][:12] not in partial.text  # not even echoed back
    for fragment in ("李", "张*", "张%"):
        refused = look_up(li, site.url, fragment)
        assert refused.status_code == 403 and "Only a full name can be looked up" in refused.text, fragment

    # A full name: the people of that name, masked, each linked to their page.
    found = look_up(li, site.url, "张伟")
    assert found.status_code == 200 and f'href="/-/person/{head}"' in found.text
    assert "张*" in found.text and HEAD["id_number"] not in found.text
    found = look_up(li, site.url, " 李娜 ")
    assert f'href="/-/person/{neighbour}"' in found.text and NEIGHBOUR["id_number"] not in found.text
    assert look_up(li, site.url, "张小").status_code == 404  # not a name anyone has: no partial match
    views = page_views(family)[before:]
    assert len(views) == 7 and all(actor == "lilei" for actor, _ in views)
    assert views[0][1].startswith("/-/lookup?refused=#") and views[4][1].startswith("/-/lookup?name=#")
    assert all(re.fullmatch(r"/-/lookup\?(refused|name)=#[0-9a-f]{12}", page) for _, page in views)


def test_view_pii_may_look_up_part_of_a_name_or_number(family, publisher):
    site = publisher(family, "--schemas", str(schemas_dir()))
    wang = site.sign_in("wangfang")
    son = token_of(wang, site.url, SON["id_number"])
    before = len(page_views(family))
    found = look_up(wang, site.url, "小明")
    assert found.status_code == 200 and f'href="/-/person/{son}"' in found.text
    assert SON["name"] in found.text and SON["id_number"] in found.text  # plaintext for view-pii
    by_number = look_up(wang, site.url, SON["id_number"][-6:])
    assert f'href="/-/person/{son}"' in by_number.text
    assert look_up(wang, site.url, "%").status_code == 403  # nothing left to match once the wildcards go
    assert [page.split("=")[0] for _, page in page_views(family)[before:]] == \
        ["/-/lookup?part", "/-/lookup?part", "/-/lookup?refused"]


# --- in a browser ------------------------------------------------------------------------------

def sign_in(driver, base: str, name: str, start: str) -> None:
    """Visit ``start`` signed out, sign in on the form it leads to, and land back on ``start``."""
    driver.get(base + start)
    wait_for(driver, EC.presence_of_element_located((By.ID, "username")), "the sign-in form")
    driver.find_element(By.ID, "username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(STAFF[name][0])
    driver.find_element(By.CSS_SELECTOR, "form[action='/-/login'] input[type=submit]").click()
    wait_for(driver, lambda d: "/-/login" not in d.current_url, f"{name} to be signed in")


def test_in_chromium_a_masked_clerk_types_a_full_id_with_lower_case_x_and_reaches_the_masked_page(
        browser, family, publisher):
    site = publisher(family, "--schemas", str(schemas_dir()))
    wife = token_of(site.sign_in("wangfang"), site.url, WIFE["id_number"])
    sign_in(browser, site.url, "lilei", start="/-/lookup")
    box = wait_for(browser, EC.presence_of_element_located((By.ID, "syncdb-q")), "the search box")
    assert box.get_attribute("autocomplete") == "off"
    box.send_keys(TYPED_WIFE)
    browser.find_element(By.CSS_SELECTOR, "form.syncdb-search input[type=submit]").click()
    wait_for(browser, lambda d: "/-/person/" in d.current_url, "the person page")
    assert browser.current_url.endswith(f"/-/person/{wife}")
    assert WIFE["id_number"] not in browser.page_source and "110105********042X" in browser.page_source

    # Part of a number: refused, with the reason, on the page the form answers with.
    browser.get(site.url + "/-/lookup")
    box = wait_for(browser, EC.presence_of_element_located((By.ID, "syncdb-q")), "the search box")
    box.send_keys(WIFE["id_number"][:10])
    browser.find_element(By.CSS_SELECTOR, "form.syncdb-search input[type=submit]").click()
    refused = wait_for(browser, EC.presence_of_element_located((By.ID, "lookup-refused")), "the refusal")
    assert "Only a full 18-character ID number" in refused.text
    site.stop()
    assert [v for v in page_views(family) if v[0] == "lilei"] == [
        ("lilei", f"/-/lookup?id={logged(wife)}"), ("lilei", page_views(family)[-1][1])]
    assert page_views(family)[-1][1].startswith("/-/lookup?refused=#")
    raw = (family / "publish.db").read_bytes() + ((family / "publish.db-wal").read_bytes()
                                                   if (family / "publish.db-wal").exists() else b"")
    for secret in secrets_of(WIFE) + [WIFE["id_number"][:10].encode()]:
        assert secret not in raw, secret


def test_the_person_page_prints_on_a4_without_navigation_with_the_office_and_the_mark(browser, family, publisher):
    site = publisher(family, "--schemas", str(schemas_dir()), "--title", "南城街道办事处")
    head = token_of(site.sign_in("wangfang"), site.url, HEAD["id_number"])
    for name, mark in (("lilei", "Masked, printed by lilei"), ("wangfang", "Plaintext, viewed by wangfang")):
        browser.delete_all_cookies()
        sign_in(browser, site.url, name, start=f"/-/person/{head}")
        wait_for(browser, EC.presence_of_element_located((By.ID, "syncdb-print-header")), "the person page")
        style = "return getComputedStyle(document.querySelector(arguments[0])).display"
        assert browser.execute_script(style, "header") != "none"  # on screen: the site as usual
        assert browser.execute_script(style, "#syncdb-print-header") == "none"
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        try:
            assert browser.execute_script(style, "header") == "none"
            assert browser.execute_script(style, "footer") == "none"
            assert browser.execute_script(style, "#syncdb-print-header") == "block"
            printed = browser.find_element(By.ID, "syncdb-print-header").text
            assert "南城街道办事处" in printed and mark in printed and "Printed " in printed
        finally:
            browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
        # Each sheet's margins carry the office, the mark and the time: @page rules for A4.
        page_rule = browser.execute_script("""
            for (const sheet of document.styleSheets) { for (const rule of sheet.cssRules) {
              const inner = rule.cssRules ? Array.from(rule.cssRules) : [rule];
              for (const r of inner) { if (r.type === CSSRule.PAGE_RULE) return r.cssText; } } }
            return null;""")
        assert page_rule and "size: a4" in page_rule.lower() and "南城街道办事处" in page_rule and mark in page_rule, page_rule
        pdf = base64.b64decode(browser.execute_cdp_cmd("Page.printToPDF", {"preferCSSPageSize": True})["data"])
        boxes = set(re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", pdf))
        assert pdf.startswith(b"%PDF-") and boxes, pdf[:200]
        # A4 (210 x 297 mm) is 595 x 842 points, on every page.
        assert {(round(float(w)), round(float(h))) for w, h in boxes} == {(595, 842)}, boxes
