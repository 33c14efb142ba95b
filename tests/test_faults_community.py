"""Issue #9's community-side faults, each with a test named for it (test_itemN_…), and the
end-to-end cases: a community on the wrong office key, a dropped table, a non-unique key and an
invalid key correction each leave the office holding every record it held, and tell the community
what to do."""

import shutil
import sqlite3
import subprocess

import pytest
from stdnum.cn import ric

from syncdb import bundle, capture, community, migrations, office, workdir
from syncdb.crypto import PublicKey
from syncdb.errors import SyncdbError
from syncdb.masks import mask

from conftest import SYNCDB, Community, folder_unlike_the_schema, stored_values

CODE = "441900003001"


def syncdb(*args, env, timeout=60):
    return subprocess.run([SYNCDB, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def db(c) -> sqlite3.Connection:
    return sqlite3.connect(c.path / "huji.db", isolation_level=None)


def ids(c) -> list[str]:
    conn = db(c)
    try:
        return [row[0] for row in conn.execute("SELECT id_number FROM persons ORDER BY rowid")]
    finally:
        conn.close()


def sent(c, path) -> tuple[dict, list[dict]]:
    """A bundle as the office reads it: its header, and its changes decrypted with the office keyring."""
    header = bundle.open_verified(path, {c.code: PublicKey.read(c.path / f"{c.code}.pub.json")}.get)
    return header.fields, list(bundle.iter_path(path, office.load_keyring(c.store, c.secret)))


def office_persons(c) -> dict[str, str]:
    """{ID number: name} of the live persons the office holds from this community."""
    store = migrations.open_upgraded(c.store, c.secret, c.domains)
    try:
        return {i: n for _key, i, n in stored_values(store, "huji.persons", "id_number", "name",
                                                     where=f"_exists = 1 AND community_code = '{c.code}'")}
    finally:
        store.conn.close()


def push_and_merge(c, tmp_path, env, *flags) -> subprocess.CompletedProcess:
    """`syncdb push --outbox` then `syncdb merge` at the office, as a USB stick carries it."""
    stick = tmp_path / "stick"
    pushed = syncdb("push", c.path, "--outbox", stick, *flags, env=env)
    if stick.exists():
        merged = syncdb("merge", c.store, stick, env=env)
        assert merged.returncode == 0, merged.stdout + merged.stderr
        shutil.rmtree(stick)
    return pushed


def bad_check_digit(number: str) -> str:
    """The same ID number with a wrong check character: what a typo makes."""
    return number[:-1] + ("0" if number[-1] != "0" else "1")


def another_valid(number: str) -> str:
    """A valid ID number of the same birth date and sex: the right number, typed at last."""
    body = number[:14] + f"{(int(number[14:17]) + 2) % 1000:03d}"
    return body + ric.calc_check_digit(body + "0")


# ------------------------------------------------------------------ item 1: a natural key held twice

LOOSE_PERSONS = """CREATE TABLE persons (
    id INTEGER PRIMARY KEY, id_number TEXT, name TEXT, sex TEXT, ethnicity TEXT, birth_date TEXT,
    household_no TEXT, relationship TEXT, marital_status TEXT, phone TEXT, address TEXT,
    community_code TEXT, status TEXT, former_name TEXT, native_place TEXT, education TEXT, workplace TEXT,
    address_code TEXT, move_in_date TEXT, death_date TEXT, deregistration_reason TEXT,
    deregistration_destination TEXT)"""
# The columns the rows below fill (huji version 2's added columns stay empty).
LOOSE_COLUMNS = ("id_number, name, sex, ethnicity, birth_date, household_no, relationship, marital_status, "
                 "phone, address, community_code, status")


def loose_folder(tmp_path, domains, duplicate: bool):
    """A community folder whose persons table keys rows by `id`, with no UNIQUE on id_number."""
    folder = tmp_path / "loose"
    folder.mkdir()
    conn = sqlite3.connect(folder / "huji.db")
    conn.execute(LOOSE_PERSONS)
    conn.execute(domains["huji"].tables["households"].create_sql())
    person = ("441900196002030011", "陈一", "1", "01", "1960-02-03", "H1", "02", "20", None, None, CODE, "normal")
    conn.execute(f"INSERT INTO persons ({LOOSE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", person)
    if duplicate:
        conn.execute(f"INSERT INTO persons ({LOOSE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (person[0], "陈二", *person[2:]))
    conn.commit()
    conn.close()
    return folder


def test_item1_init_refuses_a_natural_key_held_twice_naming_it_masked(tmp_path, domains, office_store,
                                                                      syncdb_env):
    folder = loose_folder(tmp_path, domains, duplicate=True)
    result = syncdb("community", "init", folder, "--code", CODE, "--office-key", office_store / "office.pub.json",
                    env=syncdb_env)
    assert result.returncode == 1
    assert "the natural key (id_number) is not unique" in result.stderr
    assert f"{mask('441900196002030011')} (2 rows)" in result.stderr
    assert "441900196002030011" not in result.stderr
    assert "correct or delete the others" in result.stderr and "Nothing was set up" in result.stderr
    assert not (folder / ".syncdb").exists() and not (folder / f"{CODE}.pub.json").exists()
    conn = sqlite3.connect(folder / "huji.db")
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE '_syncdb%'").fetchone()[0] == 0


def test_item1_capture_makes_the_key_unique_so_a_second_row_fails_where_it_is_typed(tmp_path, domains,
                                                                                    office_store, syncdb_secret):
    folder = loose_folder(tmp_path, domains, duplicate=False)
    community.init(folder, CODE, office_store / "office.pub.json", domains, syncdb_secret)
    conn = sqlite3.connect(folder / "huji.db")
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute("INSERT INTO persons (id_number, name, community_code) VALUES ('441900196002030011', '陈二', ?)",
                     (CODE,))


def test_item1_a_duplicate_that_got_in_is_held_back_and_reported_by_validate(make_community, syncdb_env):
    c = make_community()
    c.add_persons(3)
    c.export()
    conn = db(c)
    # The table made again by the community's program, keyed by rowid only: it took a second row.
    conn.execute("CREATE TABLE loose AS SELECT * FROM persons")
    conn.execute("DROP TABLE persons")
    conn.execute("ALTER TABLE loose RENAME TO persons")
    assert not capture.key_is_unique(conn, c.domains["huji"].tables["persons"])
    first = ids(c)[0]
    conn.execute("INSERT INTO persons SELECT * FROM persons WHERE id_number = ?", (first,))
    conn.execute("UPDATE persons SET name = '改名' WHERE rowid = (SELECT max(rowid) FROM persons)")
    conn.close()

    checked = syncdb("validate", c.path, env=syncdb_env)
    assert checked.returncode == 1
    assert f"huji.persons / {first} / id_number / 2 rows have this id_number" in checked.stdout

    result = community.export(c.path, c.domains, c.secret)
    assert result.sequence is None  # nothing of that record goes: the office keeps it as it was
    (line,) = result.held
    assert line.startswith(f"huji.persons / {mask(first)} / 2 rows of table 'persons' have this id_number")

    # Fixed by deleting the old row: the unique index is made, and the rename goes.
    conn = db(c)
    conn.execute("DELETE FROM persons WHERE rowid = (SELECT min(rowid) FROM persons WHERE id_number = ?)", (first,))
    conn.close()
    fixed = community.export(c.path, c.domains, c.secret)
    assert fixed.held == []
    (change,) = sent(c, fixed.path)[1]
    assert change["op"] == "update" and change["cells"] == {"name": "改名"}
    conn = db(c)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO persons SELECT * FROM persons WHERE id_number = ?", (first,))


# ------------------------------------------------------------------ item 2: a dropped table, mass deletes

def test_item2_a_dropped_table_is_held_never_sent_as_deletes(office_server, make_community, syncdb_env, tmp_path):
    c = make_community()
    c.add_persons(80)
    server = office_server()
    first = syncdb("push", c.path, "--to", server.url, env=syncdb_env)
    assert first.returncode == 0, first.stderr
    shutil.copy(c.path / "huji.db", tmp_path / "backup.db")
    conn = db(c)
    conn.execute("DROP TABLE persons")
    conn.close()

    result = syncdb("push", c.path, "--to", server.url, env=syncdb_env)
    assert result.returncode == 1
    assert "80 delete" not in result.stdout
    assert "table 'persons' is gone from huji.db" in result.stderr
    assert "the office holds 80 of its records" in result.stderr
    assert "None of those deletions was sent" in result.stderr
    assert f"syncdb push {c.path} --to {server.url} --confirm-deletes" in result.stderr
    conn = db(c)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'persons'").fetchone()[0] == 0
    conn.close()
    # Pushing again says the same, and still sends no deletion.
    assert syncdb("push", c.path, "--to", server.url, env=syncdb_env).returncode == 1

    # The backup is put back: nothing to send, and the office held every record all along.
    shutil.copy(tmp_path / "backup.db", c.path / "huji.db")
    restored = syncdb("push", c.path, "--to", server.url, env=syncdb_env)
    assert restored.returncode == 0, restored.stderr
    assert "delete" not in restored.stdout
    server.kill()
    merged = syncdb("merge", c.store, env=syncdb_env)
    assert merged.returncode == 0, merged.stderr
    assert len(office_persons(c)) == 80


def test_item2_the_confirmed_drop_deletes_and_makes_the_table_again(make_community, syncdb_env, tmp_path):
    c = make_community()
    c.add_persons(12)
    assert push_and_merge(c, tmp_path, syncdb_env).returncode == 0
    conn = db(c)
    conn.execute("DROP TABLE persons")
    conn.close()
    assert push_and_merge(c, tmp_path, syncdb_env).returncode == 1
    assert len(office_persons(c)) == 12
    confirmed = push_and_merge(c, tmp_path, syncdb_env, "--confirm-deletes")
    assert confirmed.returncode == 0, confirmed.stderr
    assert "12 delete" in confirmed.stdout
    assert office_persons(c) == {} and ids(c) == []


def test_item2_deleting_more_than_a_fifth_of_a_table_waits_for_confirmation(make_community):
    c = make_community()
    c.add_persons(40)
    c.export()
    conn = db(c)
    conn.execute("DELETE FROM persons WHERE rowid <= 12")  # 30% of the table
    conn.execute("UPDATE persons SET phone = '13900000000' WHERE rowid = 13")
    conn.close()
    result = c.export()
    (held,) = result.deletes_held
    assert (held.table, held.deletes, held.rows, held.dropped) == ("huji.persons", 12, 40, False)
    assert "would delete 12 of the 40 records of huji.persons" in held.message()
    assert "None of those deletions was sent" in held.message()
    ops = [ch["op"] for ch in sent(c, result.path)[1]]
    assert ops == ["update"]  # the rest of the push went
    # The deletions stay held at the next push, then go once confirmed.
    again = c.export()
    assert again.sequence is None and len(again.deletes_held) == 1
    confirmed = community.export(c.path, c.domains, c.secret, confirm_deletes=True)
    assert confirmed.deletes_held == [] and confirmed.counts["huji.persons"]["delete"] == 12


def test_item2_a_small_table_may_lose_a_record(make_community):
    c = make_community()
    c.add_persons(3)
    c.export()
    conn = db(c)
    conn.execute("DELETE FROM persons WHERE rowid = 1")
    conn.close()
    result = c.export()
    assert result.deletes_held == [] and result.counts["huji.persons"]["delete"] == 1


# ------------------------------------------------------------------ item 3: a key correction is one change

def test_item3_an_invalid_key_correction_holds_the_whole_change_back(make_community):
    c = make_community()
    c.add_persons(2)
    _, inserted = sent(c, c.export().path)
    old = ids(c)[0]
    typo, right = bad_check_digit(old), another_valid(old)
    conn = db(c)
    conn.execute("UPDATE persons SET id_number = ?, phone = '13700000000' WHERE id_number = ?", (typo, old))
    conn.close()

    held = c.export()
    assert held.sequence is None  # neither the delete of the old key nor the new record
    assert f"huji.persons / {mask(old)} / its key was changed to {mask(typo)}, which is held back; the record " \
           "stays at the office as it was, and the change goes as one once that record is fixed" in held.held
    assert any(line.startswith(f"huji.persons / {mask(typo)} / id_number: ") for line in held.held)
    assert len(held.held) == 2
    assert c.export().sequence is None  # and so at every push until fixed

    conn = db(c)
    conn.execute("UPDATE persons SET id_number = ? WHERE id_number = ?", (right, typo))
    conn.close()
    fixed = c.export()
    assert fixed.held == []
    header, (change,) = sent(c, fixed.path)
    versions = {ch["key"]["id_number"]: ch["hlc"] for ch in inserted}
    cells = change["cells"]
    assert change["op"] == "rekey" and change["key"] == {"id_number": old}
    assert change["new_key"] == {"id_number": right}
    assert cells["phone"] == "13700000000" and cells["community_code"] == c.code and "id_number" not in cells
    assert set(change["base"].values()) == {versions[old]} and "community_code" in change["base"]
    assert header["counts"] == {"huji.persons": {"insert": 0, "update": 0, "delete": 0, "rekey": 1}}
    assert list(change) == ["table", "op", "key", "new_key", "cells", "base", "hlc"]

    # The shadow moved: the next edit is an update of the new key, based on the rekey.
    conn = db(c)
    conn.execute("UPDATE persons SET name = '新名' WHERE id_number = ?", (right,))
    conn.close()
    (update,) = sent(c, c.export().path)[1]
    assert update["op"] == "update" and update["key"] == {"id_number": right}
    assert update["base"] == {"name": change["hlc"], "community_code": change["hlc"]}


def test_a_key_changed_and_changed_back_sends_nothing(make_community):
    c = make_community()
    c.add_persons(1)
    c.export()
    old = ids(c)[0]
    conn = db(c)
    conn.execute("UPDATE persons SET id_number = ? WHERE id_number = ?", (bad_check_digit(old), old))
    conn.execute("UPDATE persons SET id_number = ? WHERE id_number = ?", (old, bad_check_digit(old)))
    conn.close()
    result = c.export()
    assert result.sequence is None and result.held == []


# ------------------------------------------------------------------ item 6: one non-UTF-8 cell

def test_item6_a_non_utf8_cell_holds_back_only_its_record(make_community):
    c = make_community()
    c.add_persons(3)
    conn = db(c)
    conn.execute("UPDATE persons SET name = CAST(X'D5C5C8FD' AS TEXT) WHERE rowid = 2")  # 张三 in GBK
    garbled = conn.execute("SELECT id_number FROM persons WHERE rowid = 2").fetchone()[0]
    conn.close()
    notes = []
    result = community.export(c.path, c.domains, c.secret, notify=notes.append)
    (line,) = result.held
    assert line.startswith(f"huji.persons / {mask(garbled)} / name: is not UTF-8 text")
    assert "type the value again" in line and "integrity_check" not in line
    assert sorted(ch["key"]["id_number"] for ch in sent(c, result.path)[1]) == sorted(
        i for i in ids(c) if i != garbled)

    conn = db(c)
    conn.execute("UPDATE persons SET name = '张三' WHERE rowid = 2")
    conn.close()
    fixed = c.export()
    assert fixed.held == []
    (change,) = sent(c, fixed.path)[1]
    assert change["op"] == "insert" and change["cells"]["name"] == "张三"


# ------------------------------------------------------------------ item 11: community init refuses what it cannot set up

def init_cli(folder, office_store, env, *more):
    return syncdb("community", "init", folder, "--code", CODE, "--office-key", office_store / "office.pub.json",
                  *more, env=env)


def test_item11_init_refuses_a_folder_that_does_not_exist(tmp_path, office_store, syncdb_env):
    missing = tmp_path / "no-such-folder"
    result = init_cli(missing, office_store, syncdb_env)
    assert result.returncode == 1
    assert "Capture is set up" not in result.stdout
    assert f"{missing}: no such folder" in result.stderr and "huji.db" in result.stderr
    assert not missing.exists()


def test_item11_init_refuses_a_folder_with_no_database(tmp_path, office_store, syncdb_env):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = init_cli(empty, office_store, syncdb_env)
    assert result.returncode == 1
    assert f"{empty} holds no working database (" in result.stderr and "huji.db" in result.stderr
    assert "--create-tables" in result.stderr
    assert list(empty.iterdir()) == []
    made = init_cli(empty, office_store, syncdb_env, "--create-tables")
    assert made.returncode == 0, made.stderr
    assert (empty / "huji.db").exists() and (empty / f"{CODE}.pub.json").exists()


def test_item11_init_refuses_tables_that_do_not_match_the_schema(tmp_path, office_store, syncdb_env, domains):
    folder = folder_unlike_the_schema(tmp_path)
    before = (folder / "huji.db").read_bytes()

    result = init_cli(folder, office_store, syncdb_env)
    assert result.returncode == 1
    assert "table 'households' is missing" in result.stderr
    assert "table 'persons' has no column sex, ethnicity" in result.stderr
    assert "ALTER TABLE persons ADD COLUMN sex TEXT" in result.stderr
    assert "Nothing was set up" in result.stderr
    assert (folder / "huji.db").read_bytes() == before and not (folder / ".syncdb").exists()

    # --create-tables adds the missing table, never the missing columns: still refused.
    again = init_cli(folder, office_store, syncdb_env, "--create-tables")
    assert again.returncode == 1 and "table 'households' is missing" not in again.stderr
    assert "has no column sex" in again.stderr

    (folder / "huji.db").write_bytes(b"not a database at all, just text" * 40)
    with pytest.raises(SyncdbError, match="huji.db is not an SQLite database"):
        community.init(folder, CODE, office_store / "office.pub.json", domains, None)


# ------------------------------------------------------------------ end to end: the office keeps every record

def test_end_to_end_an_invalid_key_correction_leaves_the_office_its_record(make_community, syncdb_env, tmp_path):
    c = make_community()
    c.add_persons(3)
    assert push_and_merge(c, tmp_path, syncdb_env).returncode == 0
    before = office_persons(c)
    old = ids(c)[0]
    conn = db(c)
    conn.execute("UPDATE persons SET id_number = ? WHERE id_number = ?", (bad_check_digit(old), old))
    conn.close()
    result = push_and_merge(c, tmp_path, syncdb_env)
    assert result.returncode == 0, result.stderr
    assert f"not sent until fixed: huji.persons / {mask(old)} / its key was changed to" in result.stderr
    assert "No new changes" in result.stdout
    assert office_persons(c) == before

    # Corrected at last: one change, and the office holds the resident under the right number.
    conn = db(c)
    conn.execute("UPDATE persons SET id_number = ? WHERE id_number = ?", (another_valid(old), bad_check_digit(old)))
    conn.close()
    fixed = push_and_merge(c, tmp_path, syncdb_env)
    assert fixed.returncode == 0, fixed.stderr
    assert "huji.persons: 1 rekey" in fixed.stdout
    after = dict(before)
    after[another_valid(old)] = after.pop(old)
    assert office_persons(c) == after


def test_end_to_end_a_community_on_the_wrong_office_key(office_server, make_community, syncdb_env, tmp_path):
    enrolled = make_community("441900003002")
    enrolled.add_persons(3)
    assert push_and_merge(enrolled, tmp_path, syncdb_env).returncode == 0
    before = office_persons(enrolled)
    other = tmp_path / "other-office"
    migrations.init(other, enrolled.secret)
    folder = tmp_path / "wrong"
    workdir.create(folder, enrolled.domains)
    pub = community.init(folder, CODE, other / "office.pub.json", enrolled.domains, enrolled.secret)
    office.enroll(enrolled.store, CODE, pub)
    wrong = Community(folder, CODE, enrolled.store, enrolled.domains, enrolled.secret)
    wrong.next_person = 100  # residents of its own, not the other community's
    wrong.add_persons(2)
    server = office_server()
    result = syncdb("push", folder, "--to", server.url, env=syncdb_env)
    assert result.returncode == 1
    assert "set up with another office's key" in result.stdout + result.stderr
    assert "office.pub.json" in result.stdout + result.stderr
    assert len(community.pending(folder)) == 1  # kept, not lost
    assert "syncdb community set-office-key" in result.stdout + result.stderr
    assert office_persons(enrolled) == before
    # What the message says to do works: the right key, and every record goes again.
    fixed = syncdb("community", "set-office-key", folder, enrolled.store / "office.pub.json", env=syncdb_env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert (folder / ".syncdb" / "unsent").is_dir()
    result = syncdb("push", folder, "--to", server.url, env=syncdb_env)
    assert result.returncode == 0, result.stdout + result.stderr
    server.kill()
    merged = syncdb("merge", enrolled.store, env=syncdb_env)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    rehomed = Community(folder, CODE, enrolled.store, enrolled.domains, enrolled.secret)
    assert len(office_persons(rehomed)) == 2 and office_persons(enrolled) == before


def test_set_office_key_resends_every_record_over_what_the_office_had(make_community, syncdb_env, tmp_path):
    """A community whose office key was replaced by a wrong one after it had pushed: once pointed
    back, its whole records go again and merge cleanly over what the office held, edits included."""
    c = make_community(CODE)
    c.add_persons(3)
    assert push_and_merge(c, tmp_path, syncdb_env).returncode == 0
    right = c.path / ".syncdb" / "office.pub.json"
    kept = tmp_path / "right.pub.json"
    shutil.copy(right, kept)
    other = tmp_path / "other-office"
    migrations.init(other, c.secret)
    shutil.copy(other / "office.pub.json", right)  # someone copied the wrong file in
    conn = db(c)
    conn.execute("UPDATE persons SET name = '改名' WHERE rowid = 1")
    conn.close()
    c.add_persons(1)
    c.export()  # encrypted to the wrong office: would be refused at receipt
    fixed = syncdb("community", "set-office-key", c.path, kept, env=syncdb_env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    # The first bundle went to the right office on a stick (not yet acknowledged): it stays.
    assert [p.name for p in c.pending()] == [f"{CODE}-00000001.bundle"]
    assert push_and_merge(c, tmp_path, syncdb_env).returncode == 0
    held = office_persons(c)
    assert len(held) == 4 and "改名" in held.values()
    store = migrations.open_upgraded(c.store, c.secret, c.domains)
    try:
        assert store.conn.execute("SELECT count(*) FROM conflicts").fetchone() == (0,)
        assert store.conn.execute("SELECT count(*) FROM rejected").fetchone() == (0,)
    finally:
        store.conn.close()


# ------------------------------------------------------------------ a small table lost whole is held too

def _drop_and_make_again_empty(c):
    """What an application's own migration does: the table dropped and created again, without
    syncdb's capture triggers and without a row."""
    conn = db(c)
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'persons'").fetchone()
    conn.execute("DROP TABLE persons")
    conn.execute(sql)
    conn.close()


def test_a_small_table_dropped_and_made_again_empty_is_held_not_sent_as_deletes(make_community, tmp_path,
                                                                              syncdb_env):
    c = make_community()
    c.add_persons(5)  # under DELETE_MINIMUM: a share rule alone lets all five go
    assert push_and_merge(c, tmp_path, syncdb_env).returncode == 0
    _drop_and_make_again_empty(c)
    pushed = push_and_merge(c, tmp_path, syncdb_env)
    assert pushed.returncode == 1
    assert "capture triggers were dropped" in pushed.stdout + pushed.stderr
    assert "5 delete" not in pushed.stdout
    assert "would delete 5 of the 5 records of huji.persons" in pushed.stderr
    assert len(office_persons(c)) == 5
    # Still held at the next push (the triggers are back by then), and sent once confirmed.
    again = push_and_merge(c, tmp_path, syncdb_env)
    assert again.returncode == 1 and "5 delete" not in again.stdout
    assert len(office_persons(c)) == 5
    confirmed = push_and_merge(c, tmp_path, syncdb_env, "--confirm-deletes")
    assert confirmed.returncode == 0, confirmed.stderr
    assert office_persons(c) == {}


def test_a_small_table_emptied_is_held_not_sent_as_deletes(make_community):
    c = make_community()
    c.add_persons(3)
    c.export()
    conn = db(c)
    conn.execute("DELETE FROM persons")
    conn.close()
    result = c.export()
    (held,) = result.deletes_held
    assert (held.table, held.deletes, held.rows) == ("huji.persons", 3, 3)
    assert result.sequence is None


def test_deletions_of_a_table_whose_triggers_were_gone_are_held_however_few(make_community):
    c = make_community()
    c.add_persons(30)
    c.export()
    conn = db(c)
    conn.execute("DROP TRIGGER _syncdb_persons_delete")
    conn.execute("DELETE FROM persons WHERE rowid <= 2")  # unseen by capture
    conn.close()
    result = c.export()
    (held,) = result.deletes_held
    assert (held.table, held.deletes, held.rows) == ("huji.persons", 2, 30)
    assert result.sequence is None
    # Once held, they stay held at a push that finds the triggers in place, until confirmed.
    again = c.export()
    assert [(h.table, h.deletes) for h in again.deletes_held] == [("huji.persons", 2)]
    confirmed = community.export(c.path, c.domains, c.secret, confirm_deletes=True)
    assert confirmed.counts["huji.persons"]["delete"] == 2
