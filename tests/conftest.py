import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

# Tests read the English messages (the source strings); a test of the Chinese ones says so
# in the environment it gives its `syncdb`. Set before syncdb is imported, for it and its children.
os.environ["SYNCDB_LANG"] = "en"
os.environ.pop("LANGUAGE", None)

from stdnum.cn import ric

from syncdb import bundle, merge, migrations, office, resolve, workdir
from syncdb import community as community_lib
from syncdb.crypto import Keyring, PublicKey, Secret
from syncdb.schema import load_domains
from syncdb.store import Cells, Seals, open_store, table_name

SYNCDB = str(Path(sys.executable).with_name("syncdb"))


def pytest_configure(config):
    sys._called_from_test = True  # syncdb.plugins loads no installed (entry-point) plugins in tests


def pytest_unconfigure(config):
    del sys._called_from_test


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """`make test`'s ``-n auto``: one worker per core a container's CPU quota gives, as ``merge --jobs``
    counts them (pytest-xdist's own count is the cores the process may run on, a 32-core host's for a
    runner given two of them). Not less for the load: a runner busy installing a moment before would
    run the suite in one process. PYTEST_XDIST_AUTO_NUM_WORKERS still decides when set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    from syncdb import prepare

    return prepare.available_cores()


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


# --- the fixture world: an office and its communities, built through the library ------------
#
# One World stages everything a test needs on real files: the office store, communities with
# their working databases (written with plain sqlite3, as any program would), bundles pushed
# and kept, merges and office edits. `world` is three huji-only communities under SECRET;
# `office_store` and `make_community` are an office with no community yet, sealed with the
# test's key file so that `syncdb` subprocesses open it too.

CODES = ["441900003001", "441900003002", "441900003003"]
SECRET = Secret(key_file_bytes=b"k" * 32)


def id_number(n: int, sex: str = "1") -> str:
    """Resident ``n``'s valid ID number (born 1980-01-01 in 北京市西城区)."""
    body = f"11010519800101{n:02d}" + ("1" if sex == "1" else "2")
    return body + ric.calc_check_digit(body + "0")


def person(n: int, code: str, **extra) -> dict:
    """Resident ``n`` as community ``code`` registers them, with ``extra`` cells."""
    row = dict(id_number=id_number(n), name=f"居民{n}", sex="1", ethnicity="01", birth_date="1980-01-01",
               community_code=code, status="normal")
    row.update(extra)
    return row


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
                    # No household: a household number would have to name a household
                    # (huji.persons.household_no references huji.households), or push holds the person.
                    "INSERT INTO persons (id_number, name, sex, ethnicity, birth_date, "
                    "relationship, marital_status, phone, address, community_code, status) "
                    "VALUES (?, ?, ?, '01', ?, '02', '20', ?, ?, ?, 'normal')",
                    (body + ric.calc_check_digit(body + "0"), f"居民{i}", "1" if i % 2 else "2",
                     f"{birth[:4]}-{birth[4:6]}-{birth[6:]}",
                     f"138{i:08d}", f"东莞市某街道{i}号", self.code))
        conn.close()

    def export(self, **options):
        return community_lib.export(self.path, self.domains, self.secret, **options)

    def make_bundles(self, n: int, persons: int = 2) -> list[Path]:
        """Make ``n`` more bundles in the outbox; return their paths."""
        made = []
        for _ in range(n):
            self.add_persons(persons)
            made.append(self.export().path)
        return made

    def pending(self) -> list[Path]:
        return community_lib.pending(self.path)


class World:
    """An office and its communities, built through the library on real files.

    ``domains`` are the office's; communities keep the working databases of
    ``community_domains`` (huji only unless told). Every bundle pushed is kept
    in ``bundles`` (a copy under ROOT/bundles, as a community's outbox is
    emptied once the office acknowledges it).
    """

    def __init__(self, root: Path, domains: dict, codes=CODES, *, secret: Secret = SECRET,
                 community_domains=("huji",), **office_options):
        self.root, self.secret = Path(root), secret
        self.all_domains = domains
        self.domains = {d: domains[d] for d in community_domains}
        self.store = self.root / "office"
        migrations.init(self.store, secret, **office_options)
        self.folders: dict[str, Path] = {}
        self.communities: dict[str, Community] = {}
        self.bundles: list[Path] = []
        for code in codes:
            self.add_community(code)

    # -- communities and their working databases

    def add_community(self, code: str, *, folder: str | None = None, set_up: bool = True,
                      enroll: bool = True) -> Community:
        """A community folder ROOT/``folder`` (default: the code) with empty working databases;
        set up for sync and enrolled at the office unless told otherwise."""
        path = self.root / (folder or code)
        workdir.create(path, self.domains)
        self.folders[code] = path
        self.communities[code] = Community(path, code, self.store, self.domains, self.secret)
        if set_up:
            self.set_up(code, enroll=enroll)
        return self.communities[code]

    def set_up(self, code: str, enroll: bool = True) -> Path:
        """`syncdb community init` (and `office enroll`) for a folder made with set_up=False."""
        pub = community_lib.init(self.folders[code], code, self.store / "office.pub.json", self.domains,
                                 self.secret)
        if enroll:
            office.enroll(self.store, code, pub)
        return pub

    def connect(self, code: str, db: str = "huji.db") -> sqlite3.Connection:
        """A plain autocommit connection to a working database, as any program of the community."""
        return sqlite3.connect(self.folders[code] / db, isolation_level=None)

    def sql(self, code, statement, params=()):
        conn = sqlite3.connect(self.folders[code] / "huji.db")
        conn.execute(statement, params)
        conn.commit()
        conn.close()

    def insert(self, code, row):
        self.sql(code, f"INSERT INTO persons ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                 list(row.values()))

    # -- bundles

    def push(self, code, confirm_deletes=False):
        """Export what changed at ``code`` into the next bundle; keep a copy in ``bundles``."""
        result = self.communities[code].export(confirm_deletes=confirm_deletes)
        if result.path:
            kept = self.root / "bundles" / result.path.name
            kept.parent.mkdir(exist_ok=True)
            shutil.copy(result.path, kept)
            self.bundles.append(kept)
        return result

    def received(self, path) -> tuple[dict, list[dict]]:
        """A bundle as the office takes it in: received, verified, then decrypted with its keyring."""
        assert office.receive(self.store, Path(path).read_bytes()).status == "accepted"
        with open(path, "rb") as f:
            header, _ = bundle.read_header(f)
        community_key = PublicKey.read(self.folders[header.origin] / f"{header.origin}.pub.json")
        header = bundle.open_verified(path, {header.origin: community_key}.get)
        return header.fields, list(bundle.iter_path(path, office.load_keyring(self.store, self.secret)))

    def signed_bundle(self, code, changes, sequence=1):
        """A bundle made by hand and signed with the community's key: what an older syncdb,
        or a community with other code tables, could send past its own checks."""
        ring = Keyring.load(community_lib.state_dir(self.folders[code]) / "keyring.json", self.secret)
        path = self.root / bundle.file_name(code, sequence)
        bundle.write(path, {"origin": code, "sequence": sequence, "schemas": {
            "huji": {"version": 1, "fingerprint": self.domains["huji"].fingerprint}}},
            changes, ring, PublicKey.read(self.store / "office.pub.json"))
        return path

    # -- the office

    def register(self, code, *rows):
        """Residents entered at a community, pushed, and merged at the office."""
        for row in rows:
            self.insert(code, row)
        self.push(code)
        return merge.merge(self.store, self.bundles[-1:], self.secret, self.all_domains)

    def office_sets(self, n, **cells):
        """The office edits resident ``n`` (signed by the office, merged at once)."""
        return resolve.office_edit(self.store, self.secret, self.all_domains, [
            {"table": "huji.persons", "key": {"id_number": id_number(n)}, "cells": cells}])

    def both_rename(self, code, n, at_office, at_community):
        """The office and the community rename resident ``n`` before either hears of the other."""
        self.office_sets(n, name=at_office)
        self.sql(code, "UPDATE persons SET name = ? WHERE id_number = ?", (at_community, id_number(n)))
        self.push(code)
        return merge.merge(self.store, self.bundles[-1:], self.secret, self.all_domains)

    def office_edit(self, n, phone):
        """The office, having merged what was pushed so far, corrects a resident's phone."""
        merge.merge(self.store, self.bundles, self.secret, self.all_domains)
        st_ = migrations.open_upgraded(self.store, self.secret, self.all_domains)
        table = st_.table("huji.persons")
        exists = st_.conn.execute("SELECT 1 FROM huji__persons WHERE _key = ? AND _exists = 1",
                                  (st_.blind_key(table, [id_number(n)]),)).fetchone()
        st_.conn.close()
        if not exists:
            return
        before = set(office.inbox_dir(self.store).glob("office-*.bundle"))
        resolve.office_edit(self.store, self.secret, self.all_domains, [
            {"table": "huji.persons", "key": {"id_number": id_number(n)}, "cells": {"phone": phone}}])
        (made,) = set(office.inbox_dir(self.store).glob("office-*.bundle")) - before
        kept = self.root / "bundles" / made.name
        kept.parent.mkdir(exist_ok=True)
        shutil.copy(made, kept)
        self.bundles.append(kept)

    # -- other stores with the same keys and enrolments

    def freeze_empty_store(self):
        self.empty = self.root / "empty-office"
        shutil.copytree(self.store, self.empty)

    def fresh_store(self, name):
        """A copy of the empty office store with the same keys and enrolments."""
        target = self.root / name
        shutil.copytree(self.empty, target)
        return target

    def merge_in_order(self, bundles, name):
        """A fresh store (see freeze_empty_store) that merged ``bundles`` one by one, in this order."""
        store = self.fresh_store(name)
        for path in bundles:
            merge.merge(store, [path], self.secret, self.all_domains)
        return store


def snapshot(store_dir, domains, secret: Secret = SECRET):
    """The store's meaning: decrypted rows and the open conflicts, independent of nonces."""
    st_ = migrations.open_upgraded(store_dir, secret, domains)
    try:
        rows = {}
        for table in st_.tables.values():
            for stored in st_.conn.execute(f"SELECT * FROM [{table_name(table)}]"):
                names = [d[0] for d in st_.conn.execute(f"SELECT * FROM [{table_name(table)}] LIMIT 0").description]
                record = st_.plain_row(table, dict(zip(names, stored)))
                key = record["_key"]
                rows[(table.qualified, key)] = (
                    record["_exists"],
                    tuple((c, record[c]) for c in table.columns),
                )
        conflicts = set()
        for tbl, key, col, kind, candidates in st_.conn.execute(
                "SELECT tbl, key, col, kind, candidates FROM conflicts WHERE status = 'open'"):
            conflicts.add((tbl, key, col, kind, frozenset(c["version"] for c in json.loads(candidates))))
        return rows, conflicts
    finally:
        st_.conn.close()


def stored_values(st_, qualified: str, *columns: str, where: str = "1") -> list[tuple]:
    """(blind key, the columns' values in plaintext...) of each row of a record table of an open store
    (``where``: SQL on its stored columns), the sensitive ones opened from the row's seal."""
    table = st_.table(qualified)
    cells = Cells(table, list(columns))
    return [(bytes(key), *cells.values(st_.seals, bytes(key), row)) for key, *row in st_.conn.execute(
        f"SELECT _key, {cells.sql} FROM [{table_name(table)}] WHERE {where}")]


def make_version_3(store_dir: Path, domains) -> None:
    """Turn a store of this release back into the layout of store version 3: each sensitive value
    sealed alone (Seals.seal, which the frontier still uses) in a BLOB column of its own, no
    ``_sealed``, no ``sealed_columns``. The rows keep their rowids."""
    with open_store(store_dir, SECRET, domains) as st:
        keyring = st.keyring
        tables = [t for t in st.tables.values()]
        rows = {}
        for table in tables:
            name = table_name(table)
            if not st.conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone():
                continue
            rows[table.qualified] = [(rowid, st.plain_row(table, {"_key": key, "_sealed": sealed}))
                                     for rowid, key, sealed in st.conn.execute(
                                         f"SELECT rowid, _key, _sealed FROM [{name}]")]
    old = Seals(keyring)
    conn = sqlite3.connect(store_dir / "store.db", isolation_level=None)
    conn.execute("BEGIN")
    for table in tables:
        if table.qualified not in rows:
            continue
        name = table_name(table)
        for column in table.sensitive_columns:
            conn.execute(f"ALTER TABLE [{name}] ADD COLUMN [{column}] BLOB")
        for rowid, plain in rows[table.qualified]:
            key = bytes(plain["_key"])
            sealed = [old.seal(plain[c], table, c, key) for c in table.sensitive_columns]
            if sealed:
                conn.execute(f"UPDATE [{name}] SET {', '.join(f'[{c}] = ?' for c in table.sensitive_columns)} "
                             "WHERE rowid = ?", [*sealed, rowid])
        conn.execute(f"ALTER TABLE [{name}] DROP COLUMN _sealed")
    conn.execute("DROP TABLE sealed_columns")
    conn.execute("PRAGMA user_version = 3")
    conn.execute("COMMIT")
    conn.execute("VACUUM")
    conn.close()


def open_conflicts(store):
    """(column, kind) of each open conflict, read with plain sqlite3."""
    conn = sqlite3.connect(store / "store.db")
    try:
        return conn.execute("SELECT col, kind FROM conflicts WHERE status = 'open' ORDER BY col").fetchall()
    finally:
        conn.close()


@pytest.fixture
def world(tmp_path, domains) -> World:
    """An office and three communities (CODES) keeping huji.db, under SECRET, in tmp_path."""
    return World(tmp_path, domains)


@pytest.fixture
def office_world(tmp_path, domains, syncdb_secret) -> World:
    """An office with no community yet, sealed with the test's key file (for `syncdb` subprocesses);
    its communities keep every domain's working database."""
    return World(tmp_path, domains, codes=(), secret=syncdb_secret, community_domains=tuple(domains))


@pytest.fixture
def office_store(office_world) -> Path:
    """An empty office store folder, as `syncdb office init` makes it."""
    return office_world.store


@pytest.fixture
def make_community(office_world):
    """make_community(code, enroll=True) → a Community enrolled at ``office_store``."""

    def make(code: str = "441900003001", enroll: bool = True, folder: str | None = None) -> Community:
        return office_world.add_community(code, folder=folder or f"community-{code}", enroll=enroll)

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
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or its first page slower than the wait on a busy machine: ask again
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


# --- the language tests: one `syncdb` in a given language --------------------------------------

LANGUAGES = ("zh_CN", "en")


def syncdb_in(env: dict, language: str, *args) -> subprocess.CompletedProcess:
    """`syncdb ARGS` with SYNCDB_LANG=language (the tests' own English otherwise)."""
    return subprocess.run([SYNCDB, *map(str, args)], env=dict(env, SYNCDB_LANG=language),
                          capture_output=True, text=True, timeout=120)


def said(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def has_chinese(text: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in text)


def folder_unlike_the_schema(tmp_path) -> Path:
    """A community folder whose huji.db holds a persons table with too few columns and no households."""
    folder = tmp_path / "odd"
    folder.mkdir()
    conn = sqlite3.connect(folder / "huji.db")
    conn.execute("CREATE TABLE persons (id_number TEXT UNIQUE, name TEXT, community_code TEXT)")
    conn.commit()
    conn.close()
    return folder
