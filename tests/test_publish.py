"""`syncdb publish`: real Datasette on 127.0.0.1, over HTTP, with staff signed in."""

import re
import sqlite3
import subprocess
import time

import pytest
import requests

from conftest import SYNCDB
from syncdb import merge
from syncdb.projection import MASKED_DB, PLAIN_DB, PERSON_COLUMN, mask_value
from syncdb.schema import Column

PERSONS = "户籍_人员"
PERSONS_PATH = "~E6~88~B7~E7~B1~8D_~E4~BA~BA~E5~91~98"  # Datasette's tilde-encoding of 户籍_人员
CODES = ["441900003001", "441900003002"]


def _persons(path):
    conn = sqlite3.connect(path / "huji.db")
    rows = conn.execute("SELECT id_number, name, phone, address FROM persons").fetchall()
    conn.close()
    return rows


@pytest.fixture
def office(office_store, make_community, domains, syncdb_secret):
    """Two communities merged; the second registers one of the first's residents too (a conflict)."""
    a, b = make_community(CODES[0]), make_community(CODES[1])
    a.add_persons(6)
    b.next_person = 6  # b's first resident is a's sixth: a duplicate registration
    b.add_persons(3)
    bundles = [a.export().path, b.export().path]
    summary = merge.merge(office_store, bundles, syncdb_secret, domains)
    assert summary.opened > 0
    secrets = {value for c in (a, b) for row in _persons(c.path) for value in row}
    return office_store, a, b, secrets


def rows(session, url):
    answer = session.get(url)
    assert answer.status_code == 200, answer.text[:300]
    return answer.json()


def test_everything_needs_a_sign_in(office, publisher):
    store, *_ = office
    site = publisher(store)
    for path in ("/", f"/{MASKED_DB}", f"/{MASKED_DB}/{PERSONS_PATH}.json", f"/{PLAIN_DB}.json",
                 "/-/sync", "/-/conflicts", "/-/person/1", "/-/metadata.json"):
        answer = requests.get(site.url + path, allow_redirects=False)
        assert answer.status_code == 302, path
        assert answer.headers["location"].startswith("/-/login?next="), path
    page = requests.get(site.url + "/-/login")
    assert "Sign in" in page.text and "Name" in page.text


def test_a_wrong_password_is_refused_and_a_session_expires(office, publisher):
    store, *_ = office
    site = publisher(store, "--session-hours", "0.001")  # 3.6 seconds
    session = requests.Session()
    page = session.get(f"{site.url}/-/login")
    token = page.text.split('name="csrftoken" value="', 1)[1].split('"', 1)[0]
    wrong = session.post(f"{site.url}/-/login", data={"csrftoken": token, "username": "lilei", "password": "nope"},
                         allow_redirects=False)
    assert wrong.status_code == 403 and "Wrong name or password" in wrong.text
    assert "ds_actor" not in session.cookies
    signed_in = site.sign_in("lilei")
    assert signed_in.get(f"{site.url}/", allow_redirects=False).status_code == 200
    time.sleep(4)
    assert signed_in.get(f"{site.url}/", allow_redirects=False).status_code == 302


def test_staff_without_view_pii_see_masked_values_on_every_path(office, publisher):
    store, a, b, secrets = office
    site = publisher(store)
    li = site.sign_in("lilei")
    data = rows(li, f"{site.url}/{MASKED_DB}/{PERSONS_PATH}.json?_shape=array")
    assert len(data) == 8  # 6 + 3, one of them registered twice
    assert set(data[0]) >= {"公民身份号码", "姓名", "联系电话", "住址", PERSON_COLUMN}
    for row in data:
        assert re.fullmatch(r"441900\*{8}\d{3}[\dX]", row["公民身份号码"]), row
        assert re.fullmatch(r"居\*", row["姓名"]) or re.fullmatch(r"居\*\d", row["姓名"]), row
        assert re.fullmatch(r"138\*{4}\d{4}", row["联系电话"]), row
    # No path leaks what the mask hides: sort, facet, filter by a real ID, CSV, the plaintext database, SQL.
    real_id = next(iter(_persons(a.path)))[0]
    paths = [f"/{MASKED_DB}/{PERSONS_PATH}.json?_sort=公民身份号码&_facet=姓名",
             f"/{MASKED_DB}/{PERSONS_PATH}.csv?_size=max",
             f"/{MASKED_DB}/{PERSONS_PATH}.json?公民身份号码={real_id}",
             f"/{MASKED_DB}/{PERSONS_PATH}",
             "/-/conflicts", "/-/sync"]
    for path in paths:
        answer = li.get(site.url + path)
        assert answer.status_code == 200, path
        # (A filter's own value is echoed back to whoever typed it: that is not the store's data.)
        assert not [s for s in secrets - {real_id} if s in answer.content.decode("utf-8")], path
    assert li.get(f"{site.url}/{MASKED_DB}/{PERSONS_PATH}.json?公民身份号码={real_id}&_shape=array").json() == []
    for path in (f"/{PLAIN_DB}", f"/{PLAIN_DB}/{PERSONS_PATH}.json", f"/{PLAIN_DB}/{PERSONS_PATH}.csv",
                 f"/{MASKED_DB}.json?sql=select+1", f"/{PLAIN_DB}.json?sql=select+1"):
        assert li.get(site.url + path).status_code == 403, path
    assert li.get(f"{site.url}/{MASKED_DB}.db").status_code in (403, 404)  # no whole-file download


def test_view_pii_sees_plaintext_and_every_view_is_logged_without_plaintext(
        office, publisher, syncdb_env, syncdb_secret, domains):
    store, a, b, secrets = office
    site = publisher(store)
    wang = site.sign_in("wangfang")
    data = rows(wang, f"{site.url}/{PLAIN_DB}/{PERSONS_PATH}.json?_shape=array")
    ids = {row["公民身份号码"] for row in data}
    assert ids == {r[0] for c in (a, b) for r in _persons(c.path)}
    real_id = sorted(ids)[0]
    token = next(row[PERSON_COLUMN] for row in data if row["公民身份号码"] == real_id)
    rows(wang, f"{site.url}/{PLAIN_DB}/{PERSONS_PATH}.json?公民身份号码={real_id}")
    person = wang.get(f"{site.url}/-/person/{token}")
    assert person.status_code == 200 and real_id in person.text and "page-view log" in person.text
    conflicts = wang.get(f"{site.url}/-/conflicts")
    assert conflicts.status_code == 200
    # The masked pages and lilei's views are not logged; wangfang's plaintext pages are, four of them.
    li = site.sign_in("lilei")
    assert real_id not in li.get(f"{site.url}/-/person/{token}").text
    conn = sqlite3.connect(store / "publish.db")
    views = conn.execute("SELECT actor, page FROM page_views ORDER BY id").fetchall()
    conn.close()
    assert [actor for actor, _ in views] == ["wangfang"] * 4
    assert views[0][1] == f"/{PLAIN_DB}/{PERSONS_PATH.replace('~', '%')}.json?_shape=array" or \
        views[0][1] == f"/{PLAIN_DB}/{PERSONS}.json?_shape=array"
    assert views[1][1].startswith(f"/{PLAIN_DB}/{PERSONS}.json?公民身份号码=#")
    assert not [s for s in secrets for _, page in views if s in page]
    # Tamper-evident, like the audit ledger.
    ok = subprocess.run([SYNCDB, "audit", "verify", str(store)], env=syncdb_env, capture_output=True, text=True)
    assert ok.returncode == 0 and "page-view log intact: 4 views" in ok.stdout, ok.stdout + ok.stderr
    conn = sqlite3.connect(store / "publish.db")
    conn.execute("UPDATE page_views SET actor = 'someone' WHERE id = 2")
    conn.commit()
    conn.close()
    bad = subprocess.run([SYNCDB, "audit", "verify", str(store)], env=syncdb_env, capture_output=True, text=True)
    assert bad.returncode == 1 and "page-view log entry 2" in bad.stderr


def test_pages_for_the_office_person_conflicts_sync(office, publisher):
    store, a, b, secrets = office
    site = publisher(store)
    li = site.sign_in("lilei")
    sync = li.get(f"{site.url}/-/sync")
    assert sync.status_code == 200 and all(code in sync.text for code in CODES)
    conflicts = li.get(f"{site.url}/-/conflicts")
    assert "duplicate-registration" in conflicts.text and "户籍_人员" in conflicts.text
    # The person page joins the domains by ID number.
    data = rows(li, f"{site.url}/{MASKED_DB}/{PERSONS_PATH}.json?_shape=array")
    person = li.get(f"{site.url}/-/person/{data[0][PERSON_COLUMN]}")
    assert person.status_code == 200 and "户籍_人员" in person.text and "Sensitive values are masked" in person.text
    # 档案 holds the person's number (a whole number of 63 bits); nobody has this one, and no number is
    # past SQLite's 64 bits or spelled with a leading zero.
    assert isinstance(data[0][PERSON_COLUMN], int) and 0 <= data[0][PERSON_COLUMN] < 2 ** 63
    for nobody in ("1", str(2 ** 63), "9" * 19, "0" + str(data[0][PERSON_COLUMN]), "0" * 32):
        assert li.get(f"{site.url}/-/person/{nobody}").status_code == 404, nobody
    table = li.get(f"{site.url}/{MASKED_DB}/{PERSONS_PATH}")
    assert "/-/person/" in table.text and ">View</a>" in table.text


def test_a_merge_shows_up_without_a_restart(office, publisher, syncdb_secret, domains):
    store, a, b, secrets = office
    site = publisher(store, "--refresh", "1")
    li = site.sign_in("lilei")
    before = len(rows(li, f"{site.url}/{MASKED_DB}/{PERSONS_PATH}.json?_shape=array"))
    a.next_person = 20  # past b's residents, so two new people
    a.add_persons(2)
    merge.merge(store, [a.export().path], syncdb_secret, domains)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if len(rows(li, f"{site.url}/{MASKED_DB}/{PERSONS_PATH}.json?_shape=array")) == before + 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the new records did not appear within 15 s")


def test_nothing_can_be_written_through_the_site(office, publisher):
    store, *_ = office
    site = publisher(store)
    admin = site.sign_in("zhaomin")
    ok = admin.get(f"{site.url}/{MASKED_DB}.json", params={"sql": "select count(*) as n from [户籍_人员]"})
    assert ok.status_code == 200 and ok.json()["rows"] == [[8]]
    write = admin.get(f"{site.url}/{MASKED_DB}.json", params={"sql": "delete from [户籍_人员]"})
    assert write.status_code == 400
    assert admin.get(f"{site.url}/{MASKED_DB}.json", params={"sql": "select count(*) from [户籍_人员]"}).json()["rows"] == [[8]]


def test_the_store_folder_holds_no_plaintext_after_publishing(office, publisher):
    store, a, b, secrets = office
    site = publisher(store)
    wang = site.sign_in("wangfang")
    real_id = next(iter(_persons(a.path)))[0]
    rows(wang, f"{site.url}/{PLAIN_DB}/{PERSONS_PATH}.json?公民身份号码={real_id}")
    wang.get(f"{site.url}/-/conflicts")
    site.stop()
    blobs = b"".join(p.read_bytes() for p in store.rglob("*") if p.is_file())
    leaked = [s for s in secrets if s.encode() in blobs]
    assert leaked == []
    # Nor does what publish prints, which a service manager keeps on disk.
    assert [s for s in secrets if s in site.log()] == []


def test_publish_without_staff_accounts_says_how_to_add_one(office_store, syncdb_env):
    result = subprocess.run([SYNCDB, "publish", str(office_store), "--port", "1"], env=syncdb_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "syncdb users add" in result.stderr


def test_users_add_list_remove(office_store, syncdb_env):
    def users(*args, input=None):
        return subprocess.run([SYNCDB, "users", *args], env=syncdb_env, capture_output=True, text=True, input=input)

    assert users("add", str(office_store), "chen", "--role", "view-pii", input="long-enough\nlong-enough\n").returncode == 0
    assert users("add", str(office_store), "zhou", "--password", "short").returncode == 1
    listed = users("list", str(office_store))
    assert "chen\tview-pii" in listed.stdout
    raw = b"".join(p.read_bytes() for p in office_store.glob("publish.db*"))
    assert b"chen" in raw and b"long-enough" not in raw
    assert not (office_store / "publish-users.json").exists()
    assert users("remove", str(office_store), "chen").returncode == 0
    assert "chen" not in users("list", str(office_store)).stdout


@pytest.mark.parametrize("column, value, shown", [
    (Column("id_number", "text", "公民身份号码", "lww", sensitive=True, validator="id_number"),
     "11010519491231002X", "110105********002X"),
    (Column("name", "text", "姓名", "lww", sensitive=True), "张小明", "张*明"),
    (Column("name", "text", "姓名", "lww", sensitive=True), "张三", "张*"),
    (Column("phone", "text", "联系电话", "lww", sensitive=True, validator="phone"), "13800000000", "138****0000"),
    (Column("address", "text", "住址", "lww", sensitive=True), "广东省东莞市某街道1号", "广东省东莞******"),
])
def test_masks(column, value, shown):
    assert mask_value(column, value) == shown


def test_pages_keep_answering_while_merged_data_is_swapped_in(office, publisher, syncdb_secret, domains):
    """The in-memory databases share one cache: a page must wait for a schema change, never fail on it."""
    import threading

    store, a, b, secrets = office
    site = publisher(store, "--refresh", "1")
    li = site.sign_in("lilei")
    statuses = []
    stop = threading.Event()

    def read():
        # A hundred pages whatever the machine's speed, so a slow runner cannot fail the count.
        while not stop.is_set() or len(statuses) < 100:
            statuses.append(li.get(f"{site.url}/{MASKED_DB}/{PERSONS_PATH}.json?_shape=array&_size=5").status_code)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        a.next_person = 100
        for _ in range(4):
            a.add_persons(300)
            merge.merge(store, [a.export().path], syncdb_secret, domains)
            time.sleep(1.5)  # a refresh tick, and the reload it starts
    finally:
        stop.set()
        reader.join()
    assert len(statuses) >= 100 and [s for s in statuses if s != 200] == []
    assert rows(li, f"{site.url}/{MASKED_DB}/{PERSONS_PATH}.json?_size=1")["filtered_table_rows_count"] == 8 + 1200


def test_a_masked_id_and_the_birth_date_beside_it_do_not_give_the_number_back(office, publisher):
    """The ID mask hides the eight birth-date digits; the masked database shows only the year."""
    store, a, b, secrets = office
    site = publisher(store)
    li = site.sign_in("lilei")
    for row in rows(li, f"{site.url}/{MASKED_DB}/{PERSONS_PATH}.json?_shape=array"):
        assert re.fullmatch(r"19\d\d", row["出生日期"]), row
    wang = site.sign_in("wangfang")
    full = rows(wang, f"{site.url}/{PLAIN_DB}/{PERSONS_PATH}.json?_shape=array")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", row["出生日期"]) for row in full)


def test_every_spelling_of_a_plaintext_page_is_logged_and_the_log_keeps_no_sort_value(office, publisher):
    store, a, b, secrets = office
    site = publisher(store)
    wang = site.sign_in("wangfang")

    def views():
        conn = sqlite3.connect(store / "publish.db")
        try:
            return [page for (page,) in conn.execute("SELECT page FROM page_views ORDER BY id")]
        finally:
            conn.close()
    # Datasette tilde-decodes a database name: ~5F is "_".
    answer = wang.get(f"{site.url}/renkou~5Fmingwen/{PERSONS_PATH}.json?_shape=array&_size=1")
    assert answer.status_code == 200 and answer.json()[0]["公民身份号码"] in secrets
    assert len(views()) == 1
    # A next-page link carries the last row's sort value: an ID number when sorted by it.
    first = wang.get(f"{site.url}/{PLAIN_DB}/{PERSONS_PATH}.json", params={"_sort": "公民身份号码", "_size": 2}).json()
    assert first["next"] and wang.get(first["next_url"]).status_code == 200
    logged = views()
    assert len(logged) == 3 and "_next=#" in logged[-1]
    assert not [s for s in secrets for page in logged if s in page]


def test_sign_in_refuses_a_cross_site_form_and_never_redirects_off_site(office, publisher):
    store, *_ = office
    site = publisher(store)
    # A cross-site form carries no cookie of this site, so no CSRF cookie to check the token against.
    bare = requests.post(f"{site.url}/-/login", data={"username": "lilei", "password": "pw-lilei-1"},
                         allow_redirects=False)
    assert bare.status_code == 403 and "ds_actor" not in bare.cookies
    for target in ("/\\evil.example/x", "//evil.example/x", "https://evil.example/", "/\tevil"):
        session = requests.Session()
        page = session.get(f"{site.url}/-/login")
        token = page.text.split('name="csrftoken" value="', 1)[1].split('"', 1)[0]
        answer = session.post(f"{site.url}/-/login", allow_redirects=False, data={
            "csrftoken": token, "username": "lilei", "password": "pw-lilei-1", "next": target})
        assert answer.status_code == 302 and answer.headers["location"] == "/", target


def test_a_new_password_ends_the_sessions_signed_in_with_the_old(office, publisher, syncdb_env):
    store, *_ = office
    site = publisher(store)
    li = site.sign_in("lilei")
    assert li.get(f"{site.url}/", allow_redirects=False).status_code == 200
    subprocess.run([SYNCDB, "users", "add", str(store), "lilei", "--password", "a-new-password"],
                   env=syncdb_env, check=True, capture_output=True)
    assert li.get(f"{site.url}/", allow_redirects=False).status_code == 302
    assert site.sign_in("lilei", "a-new-password").get(f"{site.url}/", allow_redirects=False).status_code == 200


def test_a_client_that_never_sends_its_sign_in_does_not_freeze_the_site(office, publisher, syncdb_secret, domains):
    import socket

    store, a, b, secrets = office
    site = publisher(store, "--refresh", "1")
    li = site.sign_in("lilei")
    stalled = socket.create_connection(("127.0.0.1", site.port))
    try:
        stalled.sendall(b"POST /-/login HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: ds_csrftoken=x\r\n"
                        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 50\r\n\r\n")
        a.next_person = 50
        a.add_persons(2)
        merge.merge(store, [a.export().path], syncdb_secret, domains)
        time.sleep(3)  # two refresh ticks: the reload runs while the sign-in is still open
        started = time.monotonic()
        count = li.get(f"{site.url}/{MASKED_DB}/{PERSONS_PATH}.json?_size=1", timeout=10).json()
        assert time.monotonic() - started < 5
        assert count["filtered_table_rows_count"] == 10
        assert requests.get(f"{site.url}/-/login", timeout=10).status_code == 200
    finally:
        stalled.close()


def test_a_schema_change_gives_up_on_a_page_that_never_ends():
    """The gate's patience: a reader that never leaves delays the new data, not every other page."""
    import asyncio

    from syncdb.datasette_plugin import Gate

    async def scenario():
        gate = Gate()
        gate.patience = 0.3
        gate.loop = asyncio.get_running_loop()
        stuck = gate.reading()
        await stuck.__aenter__()  # a page whose client stopped reading

        def reload():
            with gate.exclusive():
                pass
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(reload)
        async with gate.reading():  # other pages go on
            pass
    asyncio.run(scenario())
