"""While `syncdb publish` decrypts the store at start-up, every page says so (issue 14).

At 1.8 million records the first build takes about two minutes; the site used to refuse
connections meanwhile. These tests run a real `syncdb publish` on 127.0.0.1 whose build is
slowed (or held, or failed) by a launcher, and read it over HTTP.
"""

import signal
import subprocess
import sys
import time

import requests
from conftest import add_staff, free_port, wait_until_answering
from syncdb import i18n, merge, projection
from syncdb.publish import Starting

# `syncdb publish` with each chunk of its build made one record, which waits for the GATE file and
# then PAUSE seconds; with FAIL, the first chunk raises instead.
LAUNCHER = """
import sys, time
from pathlib import Path
from syncdb import cli, projection
from syncdb.errors import SyncdbError
gate, pause, fail = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "fail"
rows = projection._Layout.rows
def slow_rows(self, store, chunk):
    while not gate.exists():
        time.sleep(0.02)
    if fail:
        raise SyncdbError("the build could not go on (a test)")
    time.sleep(pause)
    return rows(self, store, chunk)
projection._Layout.rows = slow_rows
projection.CHUNK = 1
cli.cli.main(sys.argv[4:], prog_name="syncdb")
"""


class Launched:
    def __init__(self, store, env, tmp_path, pause=0.0, fail=False, language="zh_CN"):
        self.gate, self.log_path = tmp_path / "gate", tmp_path / "publish.log"
        self.url = f"http://127.0.0.1:{free_port()}"
        args = [sys.executable, "-c", LAUNCHER, str(self.gate), str(pause), "fail" if fail else "go",
                "publish", str(store), "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1]]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(args, env=dict(env, SYNCDB_LANG=language), stdout=out, stderr=out)

    def first_answer(self, path="/-/login", seconds=60) -> requests.Response:
        """The first answer the site gives at all (it listens before its build)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                return requests.get(self.url + path, timeout=2, allow_redirects=False)
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.05)
        raise AssertionError(f"nothing answered within {seconds} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _street(office_store, make_community, syncdb_env, syncdb_secret, domains, persons=5):
    community = make_community("441900003001")
    community.add_persons(persons)
    merge.merge(office_store, [community.export().path], syncdb_secret, domains)
    add_staff(office_store, syncdb_env)
    return community


def test_every_page_says_in_chinese_that_the_data_is_being_prepared_until_the_build_is_whole(
        office_store, make_community, syncdb_env, syncdb_secret, domains, tmp_path):
    _street(office_store, make_community, syncdb_env, syncdb_secret, domains)
    site = Launched(office_store, syncdb_env, tmp_path)
    try:
        first = site.first_answer()
        pages = [first, requests.get(f"{site.url}/{projection.MASKED_DB}", timeout=5, allow_redirects=False),
                 requests.get(site.url + "/", timeout=5, allow_redirects=False),
                 requests.post(site.url + "/-/login", data={"username": "clerk", "password": "x"}, timeout=5,
                               allow_redirects=False)]
        for page in pages:
            assert page.status_code == 503, (page.url, page.status_code, page.text)
            assert "正在准备数据" in page.text and "每一百万条记录约需一分钟" in page.text, page.text
            assert '<meta http-equiv="refresh" content="5">' in page.text and 'lang="zh-CN"' in page.text
            assert page.headers["Retry-After"] == "5" and page.headers["Cache-Control"] == "no-store"
            assert "ds_actor" not in page.headers.get("Set-Cookie", "")
        assert "网站" in site.log() and "的每个页面都显示“正在准备数据”" in site.log(), site.log()
        assert "已发布" not in site.log() and "按 Ctrl-C 停止" not in site.log()  # the address: only once ready

        site.gate.write_text("")  # the build goes on
        wait_until_answering(site.process, f"{site.url}/-/login", 60, site.log)
        answer = requests.get(site.url + "/", timeout=5, allow_redirects=False)
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/-/login"), answer.status_code
        assert "已发布" in site.log() and "按 Ctrl-C 停止" in site.log()
    finally:
        site.stop()


def test_the_note_is_in_english_on_request_and_counts_its_seconds(monkeypatch):
    monkeypatch.setattr(i18n, "_language", None)
    i18n.use("en")
    try:
        starting = Starting(app=None)
        starting.began -= 12.4
        page = starting.page()
        assert "<title>The data is being prepared</title>" in page and 'lang="en"' in page
        assert "reloads itself every 5 seconds" in page and "Started 12 seconds ago." in page
    finally:
        i18n.use()


def test_publish_interrupted_during_its_start_up_ends_at_once_not_when_the_build_would(
        office_store, make_community, syncdb_env, syncdb_secret, domains, tmp_path):
    """Its build's worker thread cannot be killed, and the process waits for it before exiting: the build
    stops at its next chunk. Here the build would take over 20 s (a record every 0.4 s)."""
    _street(office_store, make_community, syncdb_env, syncdb_secret, domains, persons=20)
    for number, sent in enumerate((signal.SIGINT, signal.SIGTERM)):
        folder = tmp_path / str(number)
        folder.mkdir()
        site = Launched(office_store, syncdb_env, folder, pause=0.4)
        site.gate.write_text("")
        try:
            assert site.first_answer().status_code == 503
            time.sleep(1)  # into the build
            assert "已发布" not in site.log()
            site.process.send_signal(sent)
            started = time.monotonic()
            site.process.wait(15)
            assert time.monotonic() - started < 5, site.log()
            assert "已发布" not in site.log() and "Traceback" not in site.log(), site.log()
        finally:
            site.stop()


def test_a_start_up_that_fails_stops_the_site_and_says_why_rather_than_saying_it_is_preparing_for_ever(
        office_store, make_community, syncdb_env, syncdb_secret, domains, tmp_path):
    _street(office_store, make_community, syncdb_env, syncdb_secret, domains)
    site = Launched(office_store, syncdb_env, tmp_path, fail=True)
    try:
        assert site.first_answer().status_code == 503
        site.gate.write_text("")
        assert site.process.wait(30) == 1, site.log()
        assert "the build could not go on (a test)" in site.log() and "Traceback" not in site.log(), site.log()
        try:
            requests.get(site.url + "/-/login", timeout=2)
        except requests.ConnectionError:
            pass
        else:
            raise AssertionError("the site still answers after its start-up failed")
    finally:
        site.stop()
