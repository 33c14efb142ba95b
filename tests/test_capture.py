"""Change capture: what a push finds to send, however the working database was written."""

import json
import os
import shutil
import sqlite3
from datetime import date

import pytest
from stdnum.cn import ric

from conftest import World
from syncdb import bundle, community, migrations, office, validate, workdir
from syncdb.crypto import Secret
from syncdb.errors import SyncdbError
from syncdb.hlc import Stamp
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
    migrations.init(store, secret)
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


# ------------------------------------------------------------------ capture → export → bundle, end to end
# Every change as the office reads it: received, verified and decrypted with the office's keyring.

PERSON_COLUMNS = list(load_domains()["huji"].tables["persons"].columns)
# Every cell but the key: an insert versions them all, the empty ones included.
PERSON_CELLS = [c for c in PERSON_COLUMNS if c != "id_number"]


def id_number_born(region: str, birth: date, order: int) -> str:
    body = f"{region}{birth:%Y%m%d}{order:03d}"
    number = body + ric.calc_check_digit(body + "0")  # stdnum expects the check place filled
    validate.id_number(number)  # raises if invalid; an unlisted region is only a warning
    return number


A = id_number_born("110105", date(1949, 12, 31), 2)  # 11010519491231002X
B = id_number_born("441900", date(1978, 3, 14), 11)
C = id_number_born("441900", date(1985, 7, 2), 24)
C_FIXED = id_number_born("441900", date(1985, 7, 2), 26)  # C's number, typed wrongly at first
D = id_number_born("440306", date(2024, 5, 20), 33)
E = id_number_born("420106", date(1960, 11, 8), 40)


def resident(number: str, name: str, sex: str, birth: str, **more) -> dict:
    """A whole huji.persons row of community CODE."""
    row = {"id_number": number, "name": name, "sex": sex, "ethnicity": "01", "birth_date": birth,
           "household_no": "4419000030010001", "relationship": None, "marital_status": "20",
           "phone": "13800138000", "address": "广东省东莞市莞城街道运河路1号", "community_code": CODE,
           "status": "normal"}
    row.update(more)
    return row


def insert_row(conn, table: str, row: dict) -> None:
    cols = ", ".join(f"[{c}]" for c in row)
    conn.execute(f"INSERT INTO [{table}] ({cols}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))


@pytest.fixture
def site(tmp_path, domains) -> World:
    """An office and community CODE's working databases (every domain), not yet set up for sync."""
    w = World(tmp_path, domains, codes=(), community_domains=tuple(domains))
    w.add_community(CODE, folder="community", set_up=False)
    return w


def by_change(changes) -> dict:
    return {(c["table"], c["op"], json.dumps(c["key"], ensure_ascii=False)): c for c in changes}


def without_hlc(change: dict) -> dict:
    return {k: v for k, v in change.items() if k != "hlc"}


def assert_increasing(changes) -> None:
    stamps_ = [Stamp.parse(c["hlc"]) for c in changes]
    assert all(a < b for a, b in zip(stamps_, stamps_[1:])), stamps_


def test_capture_exports_exactly_what_changed(site):
    assert A == "11010519491231002X"
    rows = {
        A: resident(A, "王秀英", "2", "1949-12-31", phone=None, relationship="02"),
        B: resident(B, "李强", "1", "1978-03-14"),
        C: resident(C, "陈明", "2", "1985-07-02", marital_status=None),
        E: resident(E, "赵桂兰", "2", "1960-11-08"),
    }
    household = {"household_no": "4419000030010001", "household_type": "family", "head_id_number": A,
                 "address": "广东省东莞市莞城街道运河路1号", "community_code": CODE}
    conn = site.connect(CODE)
    with conn:
        for row in rows.values():
            insert_row(conn, "persons", row)
        insert_row(conn, "households", household)
    conn.close()
    site.set_up(CODE)

    first = site.push(CODE)
    assert (first.sequence, first.path.name) == (1, f"{CODE}-00000001.bundle")
    header1, changes1 = site.received(first.path)
    assert_increasing(changes1)
    assert header1["counts"] == {"huji.persons": {"insert": 4, "update": 0, "delete": 0},
                                 "huji.households": {"insert": 1, "update": 0, "delete": 0}}
    assert header1["hlc"] == {"min": changes1[0]["hlc"], "max": changes1[-1]["hlc"]}
    for number, row in rows.items():
        change = by_change(changes1)[("huji.persons", "insert", json.dumps({"id_number": number}))]
        assert without_hlc(change) == {
            "table": "huji.persons", "op": "insert", "key": {"id_number": number},
            "cells": {k: v for k, v in row.items() if k != "id_number" and v is not None}, "base": {}}
    version = {c["key"].get("id_number") or c["key"]["household_no"]: c["hlc"] for c in changes1}

    # Any program, plain sqlite3: an insert, updates, a delete, a key update, a no-op.
    d_row = resident(D, "黄子轩", "1", "2024-05-20", relationship="22", marital_status="10", phone=None)
    conn = site.connect(CODE)
    with conn:
        insert_row(conn, "persons", d_row)
    with conn:
        conn.execute("UPDATE persons SET name = ?, phone = ? WHERE id_number = ?", ("王秀兰", "13912345678", A))
        conn.execute("DELETE FROM persons WHERE id_number = ?", (B,))
    conn.execute("UPDATE persons SET id_number = ? WHERE id_number = ?", (C_FIXED, C))
    conn.execute("UPDATE persons SET status = status, name = name WHERE id_number = ?", (E,))
    conn.execute("UPDATE persons SET phone = '13000000000' WHERE id_number = ?", (E,))
    conn.execute("UPDATE persons SET phone = '13800138000' WHERE id_number = ?", (E,))  # and back
    conn.execute("UPDATE households SET address = ? WHERE household_no = ?",
                 ("广东省东莞市莞城街道运河路3号", "4419000030010001"))
    conn.close()

    second = site.push(CODE)
    assert (second.sequence, second.path.name) == (2, f"{CODE}-00000002.bundle")
    header2, changes2 = site.received(second.path)
    persons = "huji.persons"
    person_cells = lambda row: {k: v for k, v in row.items() if k != "id_number" and v is not None}  # noqa: E731
    expected = [
        {"table": persons, "op": "insert", "key": {"id_number": D}, "cells": person_cells(d_row), "base": {}},
        # A had no phone, but its empty phone has a version too: the insert set it.
        {"table": persons, "op": "update", "key": {"id_number": A},
         "cells": {"name": "王秀兰", "phone": "13912345678"},
         "base": {"name": version[A], "phone": version[A], "community_code": version[A]}},
        {"table": persons, "op": "delete", "key": {"id_number": B}, "cells": {},
         "base": {c: version[B] for c in PERSON_CELLS}},
        # A corrected natural key is one change, old key -> new key, based on the old record.
        {"table": persons, "op": "rekey", "key": {"id_number": C}, "new_key": {"id_number": C_FIXED},
         "cells": person_cells(rows[C]), "base": {c: version[C] for c in PERSON_CELLS}},
        {"table": "huji.households", "op": "update", "key": {"household_no": "4419000030010001"},
         "cells": {"address": "广东省东莞市莞城街道运河路3号"},
         "base": {"address": version["4419000030010001"], "community_code": version["4419000030010001"]}},
    ]
    assert len(changes2) == len(expected)
    assert {k: without_hlc(v) for k, v in by_change(changes2).items()} == by_change(expected)
    assert header2["changes"] == 5
    assert header2["counts"] == {persons: {"insert": 1, "update": 1, "delete": 1, "rekey": 1},
                                 "huji.households": {"insert": 0, "update": 1, "delete": 0}}
    assert_increasing(changes2)
    assert header2["hlc"] == {"min": changes2[0]["hlc"], "max": changes2[-1]["hlc"]}
    assert header2["hlc"]["min"] > header1["hlc"]["max"]

    # Nothing more changed: nothing more to send.
    assert site.push(CODE).sequence is None
