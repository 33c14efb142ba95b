"""Change capture: what a push finds to send, however the working database was written."""

import os
import shutil
import sqlite3

import pytest

from syncdb import bundle, community, office, workdir
from syncdb.crypto import Secret
from syncdb.errors import SyncdbError
from syncdb.hlc import Clock, Stamp
from syncdb.schema import load_domains

CODE = "441900003001"


def person(id_number, name, sex="2", birth="1949-12-31"):
    return dict(id_number=id_number, name=name, sex=sex, ethnicity="01", birth_date=birth,
                community_code=CODE, status="normal")


def insert(db, **row):
    conn = sqlite3.connect(db)
    conn.execute(f"INSERT INTO persons ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    conn.commit()
    conn.close()


@pytest.fixture
def setup(tmp_path):
    domains = load_domains()
    secret = Secret(key_file_bytes=os.urandom(32))
    store, folder = tmp_path / "office", tmp_path / "community"
    office.init(store, secret)
    workdir.create(folder, {"huji": domains["huji"]})
    insert(folder / "huji.db", **person("11010519491231002X", "张三"))
    community.init(folder, CODE, store / "office.pub.json", domains, secret)
    ring = office.load_keyring(store, secret)
    first = community.export(folder, domains, secret)
    return domains, secret, folder, ring, first


def changes_of(path, ring):
    return list(bundle.iter_path(path, ring))


def test_first_push_sends_existing_rows(setup):
    domains, secret, folder, ring, first = setup
    assert first.sequence == 1 and first.changes == 1
    assert first.full_compares == {"huji": "first push from this database"}
    (change,) = changes_of(first.path, ring)
    assert change["op"] == "insert" and change["key"] == {"id_number": "11010519491231002X"}
    assert change["cells"]["name"] == "张三" and change["base"] == {}


def test_nothing_changed_makes_no_bundle(setup):
    domains, secret, folder, ring, _ = setup
    result = community.export(folder, domains, secret)
    assert result.sequence is None and result.changes == 0 and result.full_compares == {}


def test_writes_through_any_connection_are_caught_and_netted(setup):
    domains, secret, folder, ring, first = setup
    conn = sqlite3.connect(folder / "huji.db")
    conn.execute("UPDATE persons SET name = '张四' WHERE id_number = '11010519491231002X'")
    conn.execute("UPDATE persons SET name = '张五' WHERE id_number = '11010519491231002X'")
    conn.commit()
    conn.close()
    # An insert and delete of the same row between pushes nets out to nothing.
    insert(folder / "huji.db", **person("110105194912310011", "过客", sex="1"))
    conn = sqlite3.connect(folder / "huji.db")
    conn.execute("DELETE FROM persons WHERE id_number = '110105194912310011'")
    conn.commit()
    result = community.export(folder, domains, secret)
    assert result.full_compares == {}
    (change,) = changes_of(result.path, ring)
    assert change["op"] == "update" and change["cells"] == {"name": "张五"}
    (original,) = changes_of(first.path, ring)
    # The owner cell's version travels with every update: it says whose record this is.
    assert change["base"] == {"name": original["hlc"], "community_code": original["hlc"]}
    assert change["hlc"] > original["hlc"]


def test_dropped_triggers_are_noticed_and_reinstalled(setup):
    domains, secret, folder, ring, _ = setup
    conn = sqlite3.connect(folder / "huji.db")
    conn.execute("DROP TRIGGER _syncdb_persons_update")
    conn.execute("UPDATE persons SET phone = '13800138000'")
    conn.commit()
    notes = []
    result = community.export(folder, domains, secret, notify=notes.append)
    assert "triggers were dropped" in result.full_compares["huji"]
    assert any("comparing every row" in n for n in notes)
    (change,) = changes_of(result.path, ring)
    assert change["cells"] == {"phone": "13800138000"}
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert "_syncdb_persons_update" in names


def test_a_file_replaced_by_an_older_copy_is_compared_in_full(setup, tmp_path):
    domains, secret, folder, ring, _ = setup
    shutil.copy(folder / "huji.db", tmp_path / "backup.db")
    conn = sqlite3.connect(folder / "huji.db")
    conn.execute("UPDATE persons SET name = '新名字'")
    conn.commit()
    conn.close()
    assert community.export(folder, domains, secret).changes == 1
    # Somebody restores last week's copy: the rename is undone, and that must be sent.
    shutil.copy(tmp_path / "backup.db", folder / "huji.db")
    result = community.export(folder, domains, secret)
    assert "replaced" in result.full_compares["huji"]
    (change,) = changes_of(result.path, ring)
    assert change["cells"] == {"name": "张三"}


def test_a_crash_between_bundle_and_state_leaves_no_orphan(setup):
    domains, secret, folder, ring, _ = setup
    # A run that crashed after writing bundle 2 but before remembering it:
    orphan = community.outbox_dir(folder) / bundle.file_name(CODE, 2)
    orphan.write_bytes(b"half a bundle")
    conn = sqlite3.connect(folder / "huji.db")
    conn.execute("UPDATE persons SET marital_status = '20'")
    conn.commit()
    result = community.export(folder, domains, secret)
    assert result.sequence == 2 and result.path == orphan
    assert changes_of(orphan, ring)[0]["cells"] == {"marital_status": "20"}


def test_pending_until_acknowledged(setup):
    domains, secret, folder, ring, first = setup
    assert community.pending(folder) == [first.path]
    community.acknowledge(folder, 1)
    assert community.pending(folder) == [] and not first.path.exists()


def test_init_twice_is_refused(setup, tmp_path):
    domains, secret, folder, ring, _ = setup
    with pytest.raises(SyncdbError, match="already set up"):
        community.init(folder, CODE, tmp_path / "office" / "office.pub.json", domains, secret)


def test_init_refuses_a_bad_code_and_a_community_key_as_office_key(tmp_path, setup):
    domains, secret, folder, ring, _ = setup
    with pytest.raises(SyncdbError, match="12 digits"):
        community.init(tmp_path / "x", "4419", tmp_path / "office" / "office.pub.json", domains, secret)
    with pytest.raises(SyncdbError, match="not the office key"):
        community.init(tmp_path / "y", CODE, folder / f"{CODE}.pub.json", domains, secret)


def test_wrong_key_file_is_a_clear_error(setup):
    domains, secret, folder, ring, _ = setup
    with pytest.raises(SyncdbError, match="wrong passphrase or key file"):
        community.export(folder, domains, Secret(key_file_bytes=os.urandom(32)))


def test_hlc_never_runs_backwards():
    clock = Clock("A")
    first = clock.tick(1_000)
    second = clock.tick(500)  # the PC clock jumped back
    assert second > first and second.ms == 1_000
    clock.observe(Stamp(5_000, 3, "office"))
    assert clock.tick(2_000) > Stamp(5_000, 3, "office")
    assert Stamp.parse(str(first)) == first
    with pytest.raises(ValueError):
        Stamp.parse("yesterday")


def test_an_invalid_record_waits_at_the_community_until_fixed(setup):
    domains, secret, folder, ring, _ = setup
    bad = person("110105194912310011", "王五", sex="1")
    bad["ethnicity"] = "57"
    insert(folder / "huji.db", **bad)
    notes = []
    result = community.export(folder, domains, secret, notify=notes.append)
    assert result.sequence is None and result.changes == 0
    (line,) = result.held
    # The key is masked as the office masks it: enough to find the record, not to read it.
    assert "huji.persons / 110105********0011 / ethnicity: unknown ethnicity code '57'" in line
    assert any("not sent until fixed" in n for n in notes)
    # Nothing else touches the row: the next push looks at it again all the same.
    assert community.export(folder, domains, secret).held == [line]
    conn = sqlite3.connect(folder / "huji.db")
    conn.execute("UPDATE persons SET ethnicity = '01' WHERE id_number = '110105194912310011'")
    conn.commit()
    fixed = community.export(folder, domains, secret)
    assert fixed.held == [] and fixed.changes == 1
    (change,) = changes_of(fixed.path, ring)
    # The whole record goes, as an insert: the office never saw half of it.
    assert change["op"] == "insert" and change["cells"]["name"] == "王五" and change["cells"]["ethnicity"] == "01"
