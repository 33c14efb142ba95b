import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from stdnum.cn import ric

from syncdb import community as community_lib
from syncdb import office, workdir
from syncdb.crypto import Secret
from syncdb.schema import load_domains

SYNCDB = str(Path(sys.executable).with_name("syncdb"))


def pytest_configure(config):
    sys._called_from_test = True  # syncdb.plugins loads no installed (entry-point) plugins in tests


def pytest_unconfigure(config):
    del sys._called_from_test


# --- the office and its communities, built through the library ------------------------------

@pytest.fixture
def syncdb_key_file(tmp_path) -> Path:
    """A key file (fast, unlike scrypt) that seals every keyring of a test."""
    path = tmp_path / "keyfile"
    path.write_bytes(os.urandom(32))
    return path


@pytest.fixture
def syncdb_secret(syncdb_key_file) -> Secret:
    return Secret(key_file_bytes=syncdb_key_file.read_bytes())


@pytest.fixture
def syncdb_env(syncdb_key_file) -> dict:
    """The environment for `syncdb` subprocesses: the key file, no passphrase."""
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCDB_PASSPHRASE", "SYNCDB_SCHEMAS")}
    env["SYNCDB_KEY_FILE"] = str(syncdb_key_file)
    return env


@pytest.fixture(scope="session")
def domains():
    return load_domains()


@pytest.fixture
def office_store(tmp_path, syncdb_secret) -> Path:
    """An empty office store folder made by office.init."""
    store = tmp_path / "office"
    office.init(store, syncdb_secret)
    return store


class Community:
    """A community folder with working databases, set up for sync."""

    def __init__(self, path: Path, code: str, store: Path, domains, secret: Secret):
        self.path, self.code, self.store, self.domains, self.secret = path, code, store, domains, secret
        self.next_person = 1

    def add_persons(self, n: int = 3) -> None:
        """Insert ``n`` valid-looking residents into huji.db with plain sqlite3."""
        conn = sqlite3.connect(self.path / "huji.db")
        with conn:
            for _ in range(n):
                i = self.next_person
                self.next_person += 1
                birth = f"19{60 + i % 40:02d}{1 + i % 12:02d}{1 + i % 28:02d}"
                body = f"441900{birth}{i % 1000:03d}"
                conn.execute(
                    "INSERT INTO persons (id_number, name, sex, ethnicity, birth_date, household_no, "
                    "relationship, marital_status, phone, address, community_code, status) "
                    "VALUES (?, ?, ?, '01', ?, ?, '02', '20', ?, ?, ?, 'normal')",
                    (body + ric.calc_check_digit(body + "0"), f"居民{i}", "1" if i % 2 else "2",
                     f"{birth[:4]}-{birth[4:6]}-{birth[6:]}", f"H{self.code[-3:]}{i:05d}",
                     f"138{i:08d}", f"东莞市某街道{i}号", self.code))
        conn.close()

    def export(self):
        return community_lib.export(self.path, self.domains, self.secret)

    def make_bundles(self, n: int, persons: int = 2) -> list[Path]:
        """Make ``n`` more bundles in the outbox; return their paths."""
        made = []
        for _ in range(n):
            self.add_persons(persons)
            made.append(self.export().path)
        return made

    def pending(self) -> list[Path]:
        return community_lib.pending(self.path)


@pytest.fixture
def make_community(tmp_path, office_store, domains, syncdb_secret):
    """make_community(code, enroll=True) → a Community enrolled at ``office_store``."""

    def make(code: str = "441900003001", enroll: bool = True, folder: str | None = None) -> Community:
        path = tmp_path / (folder or f"community-{code}")
        workdir.create(path, domains)
        pub = community_lib.init(path, code, office_store / "office.pub.json", domains, syncdb_secret)
        if enroll:
            office.enroll(office_store, code, pub)
        return Community(path, code, office_store, domains, syncdb_secret)

    return make


# --- real `syncdb serve` processes on 127.0.0.1 ---------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answering(process: subprocess.Popen, url: str, seconds: float, log) -> None:
    """Until ``url`` answers 200; fail with the process's log if it exits or takes longer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(process.args[:2])} exited with {process.returncode}:\n{log()}")
        try:
            if requests.get(url, timeout=0.5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered {url} within {seconds:g} s:\n{log()}")


class OfficeServer:
    """`syncdb serve` as a subprocess; kill() is SIGKILL, start() again uses the same port."""

    def __init__(self, store: Path, env: dict, log: Path, max_bundle_mb: int | None = None):
        self.store, self.env, self.log_path = store, env, log
        self.max_bundle_mb = max_bundle_mb
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "OfficeServer":
        args = [SYNCDB, "serve", str(self.store), "--host", "127.0.0.1", "--port", str(self.port)]
        if self.max_bundle_mb:
            args += ["--max-bundle-mb", str(self.max_bundle_mb)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, env=self.env, stdout=log, stderr=log)
        wait_until_answering(self.process, f"{self.url}/health", 20, self.log)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def office_server(tmp_path, office_store, syncdb_env):
    """office_server(max_bundle_mb=None, store=office_store) → a started OfficeServer; always killed."""
    servers = []

    def start(max_bundle_mb: int | None = None, store: Path | None = None) -> OfficeServer:
        server = OfficeServer(store or office_store, syncdb_env, tmp_path / f"serve-{len(servers)}.log",
                              max_bundle_mb)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.kill()


# --- real `syncdb publish` (Datasette) processes on 127.0.0.1 --------------------------------

STAFF = {  # name: (password, roles)
    "wangfang": ("pw-wangfang-1", ["view-pii"]),
    "lilei": ("pw-lilei-1", []),
    "zhaomin": ("pw-zhaomin-1", ["admin"]),
}


class Publisher:
    """`syncdb publish` as a subprocess; sign_in() gives a requests.Session with its cookie."""

    def __init__(self, store: Path, env: dict, log: Path, extra=()):
        self.store, self.env, self.log_path = store, env, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [SYNCDB, "publish", str(store), "--host", "127.0.0.1", "--port", str(self.port), *extra]
        with open(log, "ab") as out:
            self.process = subprocess.Popen(args, env=env, stdout=out, stderr=out)
        wait_until_answering(self.process, f"{self.url}/-/login", 60, self.log)

    def sign_in(self, name: str, password: str | None = None) -> requests.Session:
        session = requests.Session()
        page = session.get(f"{self.url}/-/login")
        token = page.text.split('name="csrftoken" value="', 1)[1].split('"', 1)[0]
        answer = session.post(f"{self.url}/-/login", allow_redirects=False, data={
            "csrftoken": token, "username": name, "password": password or STAFF[name][0], "next": "/"})
        assert answer.status_code == 302, answer.text
        return session

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def add_staff(store: Path, env: dict) -> None:
    """The STAFF accounts, added with `syncdb users add` as an administrator would."""
    for name, (password, roles) in STAFF.items():
        args = [SYNCDB, "users", "add", str(store), name, "--password", password]
        for role in roles:
            args += ["--role", role]
        subprocess.run(args, env=env, check=True, capture_output=True)


@pytest.fixture
def publisher(tmp_path, syncdb_env):
    """publisher(store, *extra_args) → a started Publisher (staff accounts added); always stopped."""
    started = []

    def start(store: Path, *extra) -> Publisher:
        add_staff(store, syncdb_env)
        p = Publisher(store, syncdb_env, tmp_path / f"publish-{len(started)}.log", extra)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
