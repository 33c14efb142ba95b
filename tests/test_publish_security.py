"""`syncdb publish`'s sign-in, attacked over real HTTP on 127.0.0.1 (issue #8, item 11).

Sessions end at the server when someone signs out; wrong passwords lock the
account name and the client's address out for a while, and each lock-out is
recorded in a chained log beside the store.
"""

import http.client
import re
import sqlite3
import subprocess
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import SYNCDB, STAFF
from syncdb.projection import MASKED_DB

DELAY = 5  # seconds of the first lock-out here (30 in use)


@pytest.fixture
def syncdb_env(syncdb_env):
    """Short lock-outs, so a test can wait one out."""
    return {**syncdb_env, "SYNCDB_SIGN_IN_DELAY": str(DELAY)}


@pytest.fixture
def site(office_store, publisher):
    return publisher(office_store)


def csrf(session: requests.Session, url: str) -> str:
    page = session.get(url)
    return page.text.split('name="csrftoken" value="', 1)[1].split('"', 1)[0]


def try_sign_in(site, name: str, password: str, headers=None) -> requests.Response:
    session = requests.Session()
    token = csrf(session, f"{site.url}/-/login")
    return session.post(f"{site.url}/-/login", allow_redirects=False, headers=headers or {},
                        data={"csrftoken": token, "username": name, "password": password, "next": "/"})


def try_from(site, source: str, name: str, password: str) -> tuple[int, str]:
    """A sign-in from another loopback address (127.0.0.2 …): a client the site counts apart."""
    def request(method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=30, source_address=(source, 0))
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            return answer.status, answer.getheader("Set-Cookie") or "", answer.read().decode()
        finally:
            conn.close()
    _, cookie, page = request("GET", "/-/login")
    token = page.split('name="csrftoken" value="', 1)[1].split('"', 1)[0]
    csrf_cookie = cookie.split(";", 1)[0]
    status, _, text = request("POST", "/-/login", urllib.parse.urlencode(
        {"csrftoken": token, "username": name, "password": password, "next": "/"}),
        {"Cookie": csrf_cookie, "Content-Type": "application/x-www-form-urlencoded"})
    return status, text


def error_of(answer: requests.Response) -> str:
    """The sign-in page's message, with the seconds to wait left out."""
    text = answer.text.split('class="message-error">', 1)[1].split("</p>", 1)[0]
    return re.sub(r"\d+", "N", text)


def lockouts(store) -> list[tuple]:
    conn = sqlite3.connect(store / "publish.db")
    try:
        return conn.execute("SELECT kind, account, address, seconds, failures FROM lockouts ORDER BY id").fetchall()
    finally:
        conn.close()


def test_item11_cookie_copied_before_sign_out_fails_after(site):
    li = site.sign_in("lilei")
    copied = li.cookies.get("ds_actor")
    assert li.get(f"{site.url}/{MASKED_DB}", allow_redirects=False).status_code == 200
    # Sign out as the menu's button does: a POST with the form's token.
    token = csrf(li, f"{site.url}/-/logout")
    out = li.post(f"{site.url}/-/logout", data={"csrftoken": token}, allow_redirects=False)
    assert out.status_code == 302 and out.headers["location"] == "/-/login"
    assert "ds_actor" not in li.cookies
    thief = requests.Session()
    thief.cookies.set("ds_actor", copied)
    for path in ("/", f"/{MASKED_DB}", "/-/sync"):
        answer = thief.get(site.url + path, allow_redirects=False)
        assert answer.status_code == 302 and answer.headers["location"].startswith("/-/login"), path
    # Signing in again opens a new session; another person's session was never touched.
    wang = site.sign_in("wangfang")
    assert site.sign_in("lilei").get(f"{site.url}/", allow_redirects=False).status_code == 200
    assert wang.get(f"{site.url}/", allow_redirects=False).status_code == 200
    assert thief.get(f"{site.url}/", allow_redirects=False).status_code == 302


def test_a_session_cookie_is_no_key_to_the_sessions_table(site, office_store):
    """The table holds hashes of the session ids, so a copy of publish.db opens no session."""
    li = site.sign_in("lilei")
    conn = sqlite3.connect(office_store / "publish.db")
    ids = [row[0] for row in conn.execute("SELECT id FROM sessions")]
    conn.close()
    assert ids and not [i for i in ids if i in urllib.parse.unquote(li.cookies["ds_actor"])]


def test_item11_wrong_passwords_lock_out(site, office_store):
    def five_wrong(name):
        return [try_sign_in(site, name, f"wrong-{n}") for n in range(5)]
    # A real account and a name that is none, side by side (each wrong try takes a second).
    with ThreadPoolExecutor(2) as pool:
        tries = dict(zip(("lilei", "nobody"), pool.map(five_wrong, ("lilei", "nobody"))))
    for name, answers in tries.items():
        assert [a.status_code for a in answers] == [403] * 5, name
        assert all("Wrong name or password" in a.text for a in answers)
        assert f"try again in {DELAY} seconds" in answers[-1].text and "try again" not in answers[-2].text
    # Now the right password is refused too, in the same words as for a name that is no account.
    refused = try_sign_in(site, "lilei", STAFF["lilei"][0])
    assert refused.status_code == 429 and "ds_actor" not in refused.cookies
    assert "try again in" in refused.text and 0 < int(refused.headers["Retry-After"]) <= DELAY
    nobody = try_sign_in(site, "nobody", "wrong")
    assert nobody.status_code == 429 and error_of(nobody) == error_of(refused)
    # Neither another spelling of the name nor a made-up X-Forwarded-For gets round it.
    for name in ("LiLei", " lilei", "ＬＩＬＥＩ"):
        assert try_sign_in(site, name, "wrong").status_code == 429, name
    spoofed = try_sign_in(site, "lilei", STAFF["lilei"][0], headers={"X-Forwarded-For": "203.0.113.9"})
    assert spoofed.status_code == 429
    time.sleep(DELAY + 0.5)
    ok = try_sign_in(site, "lilei", STAFF["lilei"][0])
    assert ok.status_code == 302 and "ds_actor" in ok.cookies
    # A success starts the account afresh: four more mistakes do not lock it.
    for n in range(4):
        assert try_sign_in(site, "lilei", f"again-{n}").status_code == 403
    assert site.sign_in("lilei")


def test_a_lock_out_doubles_when_the_next_try_fails_too(site):
    for n in range(5):
        try_sign_in(site, "zhaomin", f"wrong-{n}")
    time.sleep(DELAY + 0.5)
    again = try_sign_in(site, "zhaomin", "wrong-again")  # one try after the lock-out, and it fails
    assert again.status_code == 403 and f"try again in {2 * DELAY} seconds" in again.text
    assert try_sign_in(site, "zhaomin", STAFF["zhaomin"][0]).status_code == 429


def test_item11_lock_outs_are_recorded_chained_and_logged_without_the_password(
        site, office_store, syncdb_env):
    def five_wrong(name):
        return [try_sign_in(site, name, f"guess-{n}-secret").status_code for n in range(5)]
    with ThreadPoolExecutor(2) as pool:  # each wrong try takes a second
        list(pool.map(five_wrong, ["wangfang", "441900199001011234"]))  # an ID number typed as a name
    assert sorted(lockouts(office_store)) == [("account", "", "127.0.0.1", DELAY, 5),
                                              ("account", "wangfang", "127.0.0.1", DELAY, 5)]
    log = site.log()
    assert f"sign-in locked for {DELAY} s: account wangfang after 5 failed tries (the last from 127.0.0.1)" in log
    assert f"sign-in locked for {DELAY} s: an unknown account name after 5 failed tries" in log
    raw = b"".join(p.read_bytes() for p in office_store.glob("publish.db*"))
    assert b"secret" not in log.encode() + raw and b"441900199001011234" not in log.encode() + raw
    # Tamper-evident: `syncdb audit verify` walks this chain with the page-view log.
    ok = subprocess.run([SYNCDB, "audit", "verify", str(office_store)], env=syncdb_env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    conn = sqlite3.connect(office_store / "publish.db")
    conn.execute("UPDATE lockouts SET address = '10.0.0.1' WHERE id = 1")
    conn.commit()
    conn.close()
    bad = subprocess.run([SYNCDB, "audit", "verify", str(office_store)], env=syncdb_env, capture_output=True, text=True)
    assert bad.returncode == 1 and "lock-out log entry 1" in bad.stderr


def test_item11_another_account_and_another_address_are_not_locked(site, office_store):
    for n in range(5):
        try_sign_in(site, "lilei", f"wrong-{n}")
    assert try_sign_in(site, "lilei", STAFF["lilei"][0]).status_code == 429
    assert try_sign_in(site, "wangfang", STAFF["wangfang"][0]).status_code == 302  # same address, other account
    status, text = try_from(site, "127.0.0.2", "lilei", STAFF["lilei"][0])  # the account, from elsewhere
    assert status == 429 and "try again in" in text
    # One address trying many names is locked at its own limit (20), sent all at once or not.
    names = [f"guess{n}" for n in range(30)]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda name: try_sign_in(site, name, "wrong").status_code, names))
    assert codes.count(403) == 20 - 5 and codes.count(429) == 15, codes  # lilei's five count too
    assert try_sign_in(site, "zhaomin", STAFF["zhaomin"][0]).status_code == 429
    spoofed = try_sign_in(site, "zhaomin", STAFF["zhaomin"][0], headers={"X-Forwarded-For": "203.0.113.9"})
    assert spoofed.status_code == 429  # the socket's address counts, not what a header claims
    assert ("address", "", "127.0.0.1", DELAY, 20) in lockouts(office_store)
    # Another address is another client: zhaomin signs in from there.
    assert try_from(site, "127.0.0.2", "zhaomin", STAFF["zhaomin"][0])[0] == 302
