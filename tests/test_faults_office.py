"""Issue #9's office-side faults (items 5, 8, 10, 13, 14, 15), each kept found by a test named for it.

Real stores under tmp_path, real `syncdb` subprocesses for exit statuses and
what a person sees, real HTTP to `syncdb publish` on 127.0.0.1.
"""

import os
import pty
import select
import shutil
import socket
import sqlite3
import subprocess
import time

import pytest
import requests

from conftest import SYNCDB
from syncdb import community as community_lib, migrations
from syncdb import merge, office
from syncdb.crypto import Secret

CODES = ["441900003001", "441900003002"]
PERSONS_JSON = "/renkou/户籍_人员.json"


def run(env, *args, **kwargs):
    return subprocess.run([SYNCDB, *map(str, args)], env=env, capture_output=True, text=True, **kwargs)


def one_line_error(result, *words):
    """Exit 1 with one line on stderr holding ``words``, and no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "InvalidTag" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def merged(office_store, make_community, domains, syncdb_secret):
    """Two communities merged; the second registers one of the first's residents too (a conflict)."""
    a, b = make_community(CODES[0]), make_community(CODES[1])
    a.add_persons(6)
    b.next_person = 6
    b.add_persons(3)
    summary = merge.merge(office_store, [a.export().path, b.export().path], syncdb_secret, domains)
    assert summary.opened > 0 and summary.applied == 2
    return office_store, a, b


def tables_in(db) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    finally:
        conn.close()


def wait_for(check, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {seconds} s")


# ---------------------------------------------------------------- item 5: keys and keyrings

def test_item5_publish_reads_the_keyring_again_after_keys_rotate(merged, publisher, syncdb_env):
    store, a, _ = merged
    site = publisher(store, "--refresh", "1")
    wang = site.sign_in("wangfang")
    assert wang.get(f"{site.url}/-/conflicts").status_code == 200
    rotated = run(syncdb_env, "keys", "rotate", store)
    assert rotated.returncode == 0, rotated.stderr
    # The queue is read live from the store, now sealed under data key 2.
    answer = wang.get(f"{site.url}/-/conflicts")
    assert answer.status_code == 200, answer.text[:300]
    # A merge after the rotation is published too (its reload opens key-2 values).
    a.next_person = 100  # new residents, not b's
    a.add_persons(2)
    merged_now = run(syncdb_env, "merge", store, a.export().path)
    assert merged_now.returncode == 0, merged_now.stdout + merged_now.stderr

    def published():
        rows = wang.get(f"{site.url}/renkou_mingwen/~E6~88~B7~E7~B1~8D_~E4~BA~BA~E5~91~98.json?_shape=array")
        return rows.status_code == 200 and len(rows.json()) == 10
    wait_for(published, 20, "the merge after the rotation was not published")
    assert "reloading the published data failed" not in site.log()


def foreign_keyring(store, tmp_path, secret):
    """Put another office's keyring (same passphrase or key file) into ``store``; return its bytes."""
    other = tmp_path / "other-office"
    migrations.init(other, secret)
    shutil.copy(other / "keyring.json", store / "keyring.json")
    return (store / "keyring.json").read_bytes()


@pytest.mark.parametrize("checked_by", ["check value", "sealed value"])
def test_item5_another_offices_keyring_is_refused_before_anything_is_written(
        merged, tmp_path, syncdb_env, syncdb_secret, checked_by):
    store, *_ = merged
    if checked_by == "sealed value":  # a store from before the check value: one sealed value decides
        conn = sqlite3.connect(store / "store.db")
        conn.execute("DROP TABLE keyring_check")
        conn.commit()
        conn.close()
    wrong = foreign_keyring(store, tmp_path, syncdb_secret)
    for args in (["export", store, "huji.persons"], ["keys", "rotate", store], ["conflicts", "list", store],
                 ["audit", "verify", store], ["merge", store]):
        result = run(syncdb_env, *args)
        one_line_error(result, "is not this store's", "keyring.json")
        assert result.stdout == "", args
    assert (store / "keyring.json").read_bytes() == wrong  # rotate added no key to the wrong keyring


# ---------------------------------------------------------------- item 8: wiped ledgers and stores

def test_item8_wiped_ledger_fails_verification(merged, syncdb_env):
    store, *_ = merged
    assert run(syncdb_env, "audit", "verify", store).returncode == 0
    conn = sqlite3.connect(store / "store.db")
    conn.execute("DELETE FROM ledger")
    conn.execute("DELETE FROM ledger_head")
    conn.commit()
    one_line_error(run(syncdb_env, "audit", "verify", store), "audit ledger", "restore")
    # The bundle list wiped as well: the records the store holds still need a ledger.
    conn.execute("DELETE FROM applied")
    conn.commit()
    conn.close()
    one_line_error(run(syncdb_env, "audit", "verify", store), "audit ledger is empty")


@pytest.mark.parametrize("wiped", ["zero bytes", "no tables"])
def test_item8_a_wiped_store_is_refused_by_every_command_and_never_made_anew(office_store, syncdb_env, wiped):
    db = office_store / "store.db"
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    db.write_bytes(b"")
    if wiped == "no tables":
        sqlite3.connect(db).execute("PRAGMA user_version = 1").connection.close()
    for args in (["audit", "verify", office_store], ["export", office_store, "huji.persons"],
                 ["conflicts", "list", office_store], ["keys", "rotate", office_store], ["merge", office_store]):
        result = run(syncdb_env, *args)
        one_line_error(result, "is empty or not an office store", "restore it from a backup")
        assert result.stdout == "", args
    assert tables_in(db) == 0


# ---------------------------------------------------------------- item 10: the failed night is seen

def test_item10_a_bundle_held_because_its_merge_failed_exits_1(
        office_store, make_community, domains, syncdb_secret, syncdb_env):
    c = make_community(CODES[0])
    migrations.open_upgraded(office_store, syncdb_secret, domains).conn.close()
    conn = sqlite3.connect(office_store / "store.db")
    conn.execute("CREATE TRIGGER fail BEFORE INSERT ON huji__persons BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    conn.commit()
    (path,) = c.make_bundles(1)
    failed = run(syncdb_env, "merge", office_store, path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "held 441900003001-00000001.bundle: merging it failed" in failed.stdout
    conn.execute("DROP TRIGGER fail")
    conn.commit()
    conn.close()
    again = run(syncdb_env, "merge", office_store)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 applied, 0 held" in again.stdout


def test_item10_a_bundle_only_waiting_for_an_earlier_one_exits_0(office_store, make_community, syncdb_env):
    c = make_community(CODES[0])
    first, second = c.make_bundles(2)
    waiting = run(syncdb_env, "merge", office_store, second)
    assert waiting.returncode == 0, waiting.stdout + waiting.stderr
    assert "waiting for bundle 1 from 441900003001" in waiting.stdout
    assert run(syncdb_env, "merge", office_store, first).returncode == 0


# ---------------------------------------------------------------- item 13: ports and readiness

@pytest.fixture
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_item13_serve_on_a_port_in_use_says_so_in_one_line_and_exits_1(office_store, syncdb_env, taken_port):
    result = run(syncdb_env, "serve", office_store, "--port", taken_port, timeout=60)
    line = one_line_error(result, f"port {taken_port}", "in use", "--port")
    assert "Serving" not in result.stderr, line


def test_item13_publish_on_a_port_in_use_says_so_and_never_claims_to_publish(merged, syncdb_env, taken_port):
    store, *_ = merged
    run(syncdb_env, "users", "add", store, "lilei", "--password", "pw-lilei-1")
    result = run(syncdb_env, "publish", store, "--port", taken_port, timeout=60)
    one_line_error(result, f"port {taken_port}", "in use")
    assert "Publishing" not in result.stdout + result.stderr


def test_item13_publish_says_where_only_once_it_listens(merged, syncdb_env):
    store, *_ = merged
    run(syncdb_env, "users", "add", store, "lilei", "--password", "pw-lilei-1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([SYNCDB, "publish", str(store), "--port", str(port)], env=syncdb_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:
            if "Publishing" in line:
                break
        else:
            pytest.fail(f"publish exited ({process.wait()}) without saying where it publishes")
        # Told the address, a person or script connects at once: it must answer.
        answer = requests.get(f"http://127.0.0.1:{port}/-/login", timeout=5)
        assert answer.status_code == 200
    finally:
        process.terminate()
        process.wait(10)


# ---------------------------------------------------------------- item 14: what a person sees

def test_item14_merge_asks_for_the_passphrase_before_drawing_its_bar(tmp_path, make_community):
    store = tmp_path / "office-pw"
    migrations.init(store, Secret(passphrase="zhe shi mi ma"))
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCDB_PASSPHRASE", "SYNCDB_KEY_FILE")}
    master, slave = pty.openpty()
    process = subprocess.Popen([SYNCDB, "merge", str(store)], env=env, stdin=slave, stdout=slave, stderr=slave,
                               start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"Passphrase: " not in seen and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 4096)
        before = seen.split(b"Passphrase: ")[0]
        assert b"Passphrase: " in seen, seen
        assert b"Merging" not in before, before  # the prompt has a line of its own
        os.write(master, b"zhe shi mi ma\n")
        assert process.wait(30) == 0
        while select.select([master], [], [], 0.5)[0]:
            try:
                seen += os.read(master, 4096)
            except OSError:
                break
        assert b"bundles: 0 received" in seen, seen
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)


def test_item14_export_with_a_wrong_key_prints_nothing_before_the_error(merged, syncdb_env, tmp_path):
    store, *_ = merged
    wrong = tmp_path / "wrong-key"
    wrong.write_bytes(os.urandom(32))
    result = run(dict(syncdb_env, SYNCDB_KEY_FILE=str(wrong)), "export", store, "huji.persons")
    one_line_error(result, "wrong passphrase or key file")
    assert result.stdout == ""
    out = tmp_path / "persons.csv"
    result = run(dict(syncdb_env, SYNCDB_KEY_FILE=str(wrong)), "export", store, "huji.persons", "-o", out)
    assert result.returncode == 1 and not out.exists()


def test_item14_push_shows_its_progress(make_community, domains, syncdb_secret, syncdb_env, tmp_path):
    c = make_community(CODES[0])
    c.add_persons(2500)
    told = []
    result = community_lib.export(c.path, domains, syncdb_secret,
                                  progress=lambda stage, done, total: told.append((stage, done, total)))
    assert result.changes == 2500
    reading = [done for stage, done, _ in told if stage == "reading"]
    writing = [(done, total) for stage, done, total in told if stage == "writing"]
    assert reading == [1000, 2000]
    assert writing == [(1000, 2500), (2000, 2500)]
    # The command line draws it (on a terminal as a bar; in a log, its label once).
    c.add_persons(1500)
    pushed = run(syncdb_env, "push", c.path, "--outbox", tmp_path / "usb")
    assert pushed.returncode == 0, pushed.stderr
    assert "Writing bundles" in pushed.stderr


# ---------------------------------------------------------------- item 15: the published pages

def test_item15_sync_status_counts_refused_bundles_of_unverified_senders(merged, make_community, publisher):
    store, a, _ = merged
    stranger = make_community("441900003009", enroll=False)
    (unenrolled,) = stranger.make_bundles(1)
    (genuine,) = a.make_bundles(1)
    flipped = bytearray(genuine.read_bytes())
    flipped[12 + int.from_bytes(flipped[8:12], "big") + 8 + 20] ^= 0x01
    for data in (unenrolled.read_bytes(), bytes(flipped)):
        with pytest.raises(office.Refused):
            office.receive(store, data)
    site = publisher(store)
    page = site.sign_in("lilei").get(f"{site.url}/-/sync")
    assert page.status_code == 200
    assert "2 refused bundles in all" in page.text  # the site speaks English in the tests (SYNCDB_LANG=en)
    assert "441900003009" in page.text and "unenrolled" in page.text and "bad-signature" in page.text


def test_item15_a_table_answers_as_json_at_its_plain_chinese_address(merged, publisher):
    store, *_ = merged
    site = publisher(store)
    li = site.sign_in("lilei")
    answer = li.get(f"{site.url}{PERSONS_JSON}?_shape=array")
    assert answer.status_code == 200, answer.text[:300]
    assert len(answer.json()) == 8
    csv = li.get(f"{site.url}/renkou/户籍_人员.csv")
    assert csv.status_code == 200 and csv.text.count("\n") == 9
    assert li.get(f"{site.url}/renkou/户籍_人员").status_code == 200  # the HTML page as before


def test_a_zero_byte_store_keeps_its_bytes_under_every_refusing_command(office_store, syncdb_env):
    db = office_store / "store.db"
    for args in (["audit", "verify", office_store], ["export", office_store, "huji.persons"],
                 ["conflicts", "list", office_store], ["merge", office_store], ["status", office_store]):
        for suffix in ("-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
        db.write_bytes(b"")
        result = run(syncdb_env, *args)
        assert result.returncode == 1, args
        assert db.read_bytes() == b"", args  # the evidence stays as found, not a fresh 4096-byte database
        assert sorted(p.name for p in office_store.glob("store.db*")) == ["store.db"], args
