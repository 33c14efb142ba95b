"""What `syncdb publish` writes goes to STORE/publish.db, never store.db (issue #10, items 1, 2 and 7).

The page-view log and the staff accounts of an earlier release (in store.db and
STORE/publish-users.json) move into publish.db with nothing lost.
"""

import hashlib
import json
import os
import sqlite3
import subprocess

import pytest

from conftest import SYNCDB
from syncdb import migrations, office, publishdb, staff
from syncdb.errors import SyncdbError
from syncdb.projection import PLAIN_DB
from syncdb.store import open_store

OLD_VIEWS = [("2024-03-01T09:00:00", "wangfang", "/renkou_mingwen/户籍_人员.json"),
             ("2024-03-01T09:05:00", "wangfang", "/-/person/" + "a" * 32),
             ("2024-03-02T10:00:00", "chenjing", "/renkou_mingwen/户籍_人员?公民身份号码=#0123456789ab")]


@pytest.fixture
def store(office_store, syncdb_secret, domains):
    """An office store brought up to this release (the migrating open), holding no records yet."""
    migrations.open_upgraded(office_store, syncdb_secret, domains).close()
    return office_store


def old_page_views(store_dir, keyring, views=OLD_VIEWS) -> None:
    """The page-view log as an earlier release wrote it: a table of store.db, chained by HMAC."""
    key = keyring.suite.derive(keyring.index_key, b"", b"syncdb page views")
    conn = sqlite3.connect(store_dir / "store.db")
    conn.execute("CREATE TABLE page_views (id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, "
                 "page TEXT NOT NULL, mac BLOB NOT NULL)")
    mac = b"\0" * 32
    for at, actor, page in views:
        mac = keyring.suite.mac(key, mac + json.dumps([at, actor, page], ensure_ascii=False).encode())
        conn.execute("INSERT INTO page_views (at, actor, page, mac) VALUES (?, ?, ?, ?)", (at, actor, page, mac))
    conn.commit()
    conn.close()


def logged(store_dir) -> list[tuple]:
    conn = sqlite3.connect(store_dir / "publish.db")
    try:
        return conn.execute("SELECT at, actor, page FROM page_views ORDER BY id").fetchall()
    finally:
        conn.close()


def carry(store_dir, secret, domains) -> int:
    """What the store's upgrade does: carry the log inside the upgrade's transaction."""
    with open_store(store_dir, secret, domains, write=True) as st:
        st.conn.execute("BEGIN IMMEDIATE")
        carried = publishdb.carry_page_views(st)
        st.conn.execute("COMMIT")
    return carried


def audit_verify(store_dir, env) -> subprocess.CompletedProcess:
    return subprocess.run([SYNCDB, "audit", "verify", str(store_dir)], env=env, capture_output=True, text=True)


def test_page_views_in_an_old_store_db_are_carried_into_publish_db_with_the_chain_intact(
        store, syncdb_secret, syncdb_env, domains):
    keyring = office.load_keyring(store, syncdb_secret)
    old_page_views(store, keyring)
    # Before the upgrade, audit verify already counts the log where it is.
    before = audit_verify(store, syncdb_env)
    assert before.returncode == 0 and "page-view log intact: 3 views" in before.stdout, before.stdout + before.stderr

    assert carry(store, syncdb_secret, domains) == 3
    assert logged(store) == OLD_VIEWS
    conn = sqlite3.connect(store / "store.db")
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'page_views'").fetchone()
    conn.close()
    assert carry(store, syncdb_secret, domains) == 0  # run again (after a crash, say): nothing twice
    # The chain goes on from the carried entries.
    publishdb.log_view(store, keyring, "wangfang", "/renkou_mingwen/户籍_人员.json?_shape=array")
    after = audit_verify(store, syncdb_env)
    assert after.returncode == 0 and "page-view log intact: 4 views" in after.stdout, after.stdout + after.stderr


def test_a_carry_interrupted_before_the_store_committed_copies_nothing_twice(store, syncdb_secret, domains):
    keyring = office.load_keyring(store, syncdb_secret)
    old_page_views(store, keyring)
    with open_store(store, syncdb_secret, domains, write=True) as st:
        st.conn.execute("BEGIN IMMEDIATE")
        assert publishdb.carry_page_views(st) == 3
        st.conn.execute("ROLLBACK")  # the upgrade failed after publish.db had committed the copy
    assert carry(store, syncdb_secret, domains) == 0
    assert logged(store) == OLD_VIEWS


def test_an_entry_edited_in_the_old_log_stays_evident_after_the_carry(store, syncdb_secret, syncdb_env, domains):
    old_page_views(store, office.load_keyring(store, syncdb_secret))
    conn = sqlite3.connect(store / "store.db")
    conn.execute("UPDATE page_views SET actor = 'someone' WHERE id = 2")
    conn.commit()
    conn.close()
    assert carry(store, syncdb_secret, domains) == 3  # nothing lost, the evidence included
    bad = audit_verify(store, syncdb_env)
    assert bad.returncode == 1 and "page-view log entry 2" in bad.stderr


def test_the_last_page_views_cut_off_are_caught_by_the_sealed_head(store, syncdb_secret, syncdb_env):
    keyring = office.load_keyring(store, syncdb_secret)
    for n in range(3):
        publishdb.log_view(store, keyring, "wangfang", f"/renkou_mingwen/户籍_人员.json?_next={n}")
    assert "page-view log intact: 3 views" in audit_verify(store, syncdb_env).stdout
    conn = sqlite3.connect(store / "publish.db")
    conn.execute("DELETE FROM page_views WHERE id = 3")  # hiding the last look
    conn.commit()
    conn.close()
    bad = audit_verify(store, syncdb_env)
    assert bad.returncode == 1 and "page-view log entries after entry 2" in bad.stderr


def old_users_file(store_dir, users: dict) -> None:
    """STORE/publish-users.json as an earlier release wrote it."""
    entries = {}
    for name, (password, roles) in users.items():
        salt = os.urandom(16)
        hashed = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
        entries[name] = {"salt": salt.hex(), "hash": hashed.hex(), "roles": roles, "epoch": "e1",
                         "added": "2024-01-02T03:04:05"}
    (store_dir / "publish-users.json").write_text(json.dumps({"users": entries}), encoding="utf-8")


def test_the_users_file_is_read_into_publish_db_once_then_renamed_aside(store, syncdb_env):
    old_users_file(store, {"wangfang": ("old-password-1", ["view-pii"]), "lilei": ("old-password-2", [])})
    listed = subprocess.run([SYNCDB, "users", "list", str(store)], env=syncdb_env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "wangfang\tview-pii\tadded 2024-01-02T03:04:05" in listed.stdout and "lilei\t-" in listed.stdout
    assert not (store / "publish-users.json").exists()
    assert (store / "publish-users.json.imported").exists()  # renamed aside, not deleted
    assert staff.check_password(store, "wangfang", "old-password-1") == {
        "id": "wangfang", "roles": ["view-pii"], "epoch": "e1"}
    assert staff.check_password(store, "wangfang", "wrong-password") is None
    # Read once: an account removed since is not brought back by the file coming back.
    staff.remove_user(store, "lilei")
    (store / "publish-users.json.imported").rename(store / "publish-users.json")
    assert set(staff.read_users(store)) == {"wangfang"}
    assert not (store / "publish-users.json").exists()
    raw = b"".join(p.read_bytes() for p in store.glob("publish.db*"))
    assert b"old-password" not in raw


def test_a_damaged_users_file_is_refused_with_what_to_do(store):
    (store / "publish-users.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(SyncdbError, match="publish-users.json is damaged.*syncdb users add"):
        staff.read_users(store)
    assert (store / "publish-users.json").exists()  # kept for whoever restores it


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_publish_db_is_readable_by_its_owner_only(store):
    staff.add_user(store, "chenjing", "long-enough-1")
    assert (store / "publish.db").stat().st_mode & 0o077 == 0


def test_store_db_is_byte_identical_after_a_page_view_is_logged(store, publisher):
    site = publisher(store)
    wang = site.sign_in("wangfang")
    before = (store / "store.db").read_bytes()
    answer = wang.get(f"{site.url}/{PLAIN_DB}/户籍_人员.json?_shape=array")
    assert answer.status_code == 200, answer.text[:300]
    assert [actor for _, actor, _ in logged(store)] == ["wangfang"]
    assert (store / "store.db").read_bytes() == before
    site.stop()
    assert (store / "store.db").read_bytes() == before


def test_the_store_upgrade_carries_the_page_views(store, syncdb_secret, syncdb_env, domains):
    """The migrating open (merge, serve, keys rotate) of a store an earlier release made carries the log."""
    old_page_views(store, office.load_keyring(store, syncdb_secret))
    conn = sqlite3.connect(store / "store.db")
    conn.execute("PRAGMA user_version = 0")  # as an earlier release left it
    conn.close()
    migrations.open_upgraded(store, syncdb_secret, domains).close()
    assert logged(store) == OLD_VIEWS
    ok = audit_verify(store, syncdb_env)
    assert ok.returncode == 0 and "page-view log intact: 3 views" in ok.stdout, ok.stdout + ok.stderr


def test_users_in_a_folder_that_is_no_store_make_nothing_there(tmp_path, syncdb_env):
    folder = tmp_path / "not-a-store"
    folder.mkdir()
    result = subprocess.run([SYNCDB, "users", "list", str(folder)], env=syncdb_env, capture_output=True, text=True)
    assert result.returncode == 1 and "syncdb office init" in result.stderr
    assert list(folder.iterdir()) == []
