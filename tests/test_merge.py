"""The merge engine: clean applies, conflicts, transfers, order independence, the ledger."""

import json
import os
import random
import shutil
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CODES, SECRET, World, id_number, open_conflicts, person, snapshot, stored_values
from syncdb import audit, community, merge, migrations, office
from syncdb.hlc import unpack_row_versions
from syncdb.plugins import extra_policies


def test_clean_updates_and_a_concurrent_edit(world, domains):
    w = world
    w.insert(CODES[0], person(1, CODES[0]))
    w.push(CODES[0])
    summary = merge.merge(w.store, w.bundles, SECRET, domains)
    assert summary.applied == 1 and summary.changes == 1 and summary.opened == 0
    # The same bundles again change nothing.
    before = snapshot(w.store, domains)
    again = merge.merge(w.store, w.bundles, SECRET, domains)
    assert again.applied == 0 and again.duplicates == 1
    assert snapshot(w.store, domains) == before
    w.sql(CODES[0], "UPDATE persons SET phone = '13800138000'")
    w.push(CODES[0])
    summary = merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    assert summary.changes == 1 and summary.opened == 0
    assert audit.verify(migrations.open_upgraded(w.store, SECRET, domains)) == 2


def test_transfer_in_either_order_opens_nothing(world, domains):
    w = world
    a, b = CODES[0], CODES[1]
    w.insert(a, person(7, a))
    w.push(a)
    w.sql(a, "UPDATE persons SET status = 'moved_out'")
    w.push(a)
    w.insert(b, person(7, b, name="居民7", phone="13900000007"))
    w.push(b)
    w.freeze_empty_store()
    results = []
    for order in ([0, 1, 2], [2, 0, 1], [0, 2, 1]):
        store = w.merge_in_order([w.bundles[i] for i in order], f"order-{''.join(map(str, order))}")
        rows, conflicts = snapshot(store, domains)
        assert conflicts == set()
        (record,) = [r for r in rows.values()]
        values = dict(record[1])
        assert values["community_code"] == b and values["status"] == "normal"
        assert values["phone"] == "13900000007"
        results.append((rows, conflicts))
    assert all(r == results[0] for r in results)


def test_duplicate_registration_opens_then_closes_itself(world, domains):
    w = world
    a, b = CODES[0], CODES[1]
    w.insert(a, person(8, a))
    w.insert(b, person(8, b))
    w.push(a)
    w.push(b)
    summary = merge.merge(w.store, w.bundles, SECRET, domains)
    rows, conflicts = snapshot(w.store, domains)
    assert [c[3] for c in conflicts] == ["duplicate-registration"]
    w.sql(a, "UPDATE persons SET status = 'moved_out'")
    w.push(a)
    summary = merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    assert summary.closed >= 1
    rows, conflicts = snapshot(w.store, domains)
    assert conflicts == set()
    assert dict(next(iter(rows.values()))[1])["community_code"] == b


def test_manual_column_and_update_against_delete_are_queued(world, tmp_path, domains):
    w = world
    a = CODES[0]
    w.insert(a, person(9, a))
    w.push(a)
    merge.merge(w.store, w.bundles, SECRET, domains)
    # A second copy of the community folder (a restored backup) edits the same resident.
    twin = tmp_path / "twin"
    shutil.copytree(w.folders[a], twin)
    w.sql(a, "UPDATE persons SET name = '新名'")
    w.push(a)
    conn = sqlite3.connect(twin / "huji.db")
    conn.execute("DELETE FROM persons")
    conn.commit()
    conn.close()
    twin_result = community.export(twin, w.domains, SECRET, confirm_deletes=True)  # its only record: held unless confirmed
    summary = merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    assert summary.opened == 0
    # The twin reuses sequence 2 with other content: refused as a fork, store unchanged.
    before = snapshot(w.store, domains)
    refused = merge.merge(w.store, [twin_result.path], SECRET, domains)
    assert refused.refused and "replay or a fork" in refused.refused[0][1]
    assert snapshot(w.store, domains) == before


def test_invalid_record_is_rejected_and_the_rest_applies(world, domains):
    """A community validates before sending, but the office checks again (an older syncdb,
    another code table): the bad record is rejected, the rest of the bundle applies."""
    w = world
    a = CODES[0]
    good, bad = person(10, a), person(11, a, ethnicity="57")
    path = w.signed_bundle(a, [
        {"table": "huji.persons", "op": "insert", "key": {"id_number": row.pop("id_number")},
         "cells": row, "base": {}, "hlc": f"001700000000000.00000{n}.{a}"}
        for n, row in enumerate((good, bad))])
    summary = merge.merge(w.store, [path], SECRET, domains)
    assert summary.changes == 1
    (line,) = summary.rejected
    assert line.startswith(f"{a} / huji.persons / ") and "/ ethnicity / unknown ethnicity code '57'" in line
    assert id_number(11) not in line  # the key is masked in what may be logged


def test_raw_bytes_of_the_store_hold_no_sensitive_value(tmp_path, domains):
    from syncdb.sample import generate

    store = tmp_path / "office"
    migrations.init(store, SECRET)
    sample_domains = {d: domains[d] for d in ("huji", "shebao", "minzheng")}
    folder = tmp_path / "c"
    generate(folder, CODES[0], 300, 1, domains)
    community.init(folder, CODES[0], store / "office.pub.json", sample_domains, SECRET)
    office.enroll(store, CODES[0], folder / f"{CODES[0]}.pub.json")
    community.export(folder, sample_domains, SECRET)
    merge.merge(store, [community.outbox_dir(folder)], SECRET, domains)
    secrets = set()
    for db, cols in (("huji.db", ("id_number", "name", "phone", "address")), ("shebao.db", ("employer",))):
        c = sqlite3.connect(folder / db)
        table = "persons" if db == "huji.db" else "enrolments"
        for row in c.execute(f"SELECT {', '.join(cols)} FROM {table}"):
            secrets.update(v for v in row if v and len(str(v)) >= 4)
    assert len(secrets) > 500
    blobs = b"".join(p.read_bytes() for p in store.rglob("*") if p.is_file())
    leaks = [s for s in secrets if str(s).encode() in blobs]
    assert leaks == []


# Weighted by repetition: registrations and edits are what most nights hold.
KINDS = ["register"] * 3 + ["edit"] * 2 + ["push"] * 2 + ["move", "delete", "office"]
OPS = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(KINDS), st.integers(0, 2)), min_size=6, max_size=30)


EXAMPLES = int(os.environ.get("SYNCDB_HYPOTHESIS_EXAMPLES", "25"))
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=HEALTH)
@given(ops=OPS, seed=st.integers(0, 1000))
def test_merge_is_order_independent(tmp_path_factory, domains, ops, seed):
    """Random histories from three communities and the office give one store, whatever the arrival order."""
    _one_store_whatever_the_order(tmp_path_factory, domains, ops, seed, jobs=1)


# Worker processes take twice as long a merge on these small bundles: half the histories, the same checks.
@settings(max_examples=max(1, EXAMPLES // 2), deadline=None, suppress_health_check=HEALTH)
@given(ops=OPS, seed=st.integers(0, 1000))
def test_merge_with_workers_is_order_independent(tmp_path_factory, domains, ops, seed, monkeypatch):
    """The same merged with worker processes (jobs=2: every bundle through them, however small)."""
    monkeypatch.setattr(merge._Pool, "SMALL", 0)
    _one_store_whatever_the_order(tmp_path_factory, domains, ops, seed, jobs=2)


def _one_store_whatever_the_order(tmp_path_factory, domains, ops, seed, jobs: int) -> None:
    w = World(tmp_path_factory.mktemp("w"), domains)
    w.freeze_empty_store()
    held = {code: set() for code in CODES}
    for who, op, n in ops + [(i, "push", 0) for i in range(3)]:
        code = CODES[who]
        pid = id_number(n)
        if op == "register" and pid not in held[code]:
            w.insert(code, person(n, code))
            held[code].add(pid)
        elif op == "edit" and pid in held[code]:
            w.sql(code, "UPDATE persons SET phone = ?, name = ? WHERE id_number = ?",
                  (f"1390000{who}{n:03d}", f"名{who}{n}", pid))
        elif op == "move" and pid in held[code]:
            w.sql(code, "UPDATE persons SET status = 'moved_out' WHERE id_number = ?", (pid,))
        elif op == "delete" and pid in held[code]:
            w.sql(code, "DELETE FROM persons WHERE id_number = ?", (pid,))
            held[code].discard(pid)
        elif op == "push":
            w.push(code)
        elif op == "office":
            w.office_edit(n, f"0769-2200{who}{n:03d}")
    from hypothesis import event

    event(f"office bundles: {sum(p.name.startswith('office') for p in w.bundles) > 0}")
    event(f"bundles: {min(len(w.bundles), 6)}{'+' if len(w.bundles) > 6 else ''}")
    rng = random.Random(seed)
    orders = [list(w.bundles), list(reversed(w.bundles))]
    for _ in range(2):
        shuffled = list(w.bundles)
        rng.shuffle(shuffled)
        orders.append(shuffled)
    results = []
    for i, order in enumerate(orders):
        store = w.fresh_store(f"o{i}")
        for path in order:
            merge.merge(store, [path], SECRET, w.all_domains, jobs=jobs)
        results.append(snapshot(store, domains))
    for other in results[1:]:
        assert other == results[0]


def test_audit_verify_finds_an_entry_edited_or_deleted_by_hand(world, tmp_path, domains):
    from click.testing import CliRunner

    from syncdb.cli import cli

    w = world
    for n in range(3):
        w.insert(CODES[0], person(n, CODES[0]))
        w.push(CODES[0])  # one bundle, so one ledger entry, per resident
    merge.merge(w.store, w.bundles, SECRET, domains)
    key_file = tmp_path / "key"
    key_file.write_bytes(SECRET.key_file_bytes)
    env = {"SYNCDB_KEY_FILE": str(key_file)}
    runner = CliRunner()

    def verify(store):
        return runner.invoke(cli, ["audit", "verify", str(store)], env=env)

    ok = verify(w.store)
    assert ok.exit_code == 0 and "3 entries recording 3 changes" in ok.output
    copies = iter(range(100))

    def tamper(*statements):
        """A copy of the store, edited by hand with a plain sqlite3 connection."""
        store = tmp_path / f"tampered-{next(copies)}"
        shutil.copytree(w.store, store)
        conn = sqlite3.connect(store / "store.db")
        for statement in statements:
            conn.execute(statement)
        conn.commit()
        conn.close()
        return verify(store)

    edited = tamper("UPDATE ledger SET origin = '441900003002' WHERE id = 2")
    assert edited.exit_code == 1 and "entry 2" in edited.output and "edited" in edited.output
    deleted = tamper("DELETE FROM ledger WHERE id = 2")
    assert deleted.exit_code == 1 and "entry 2 is missing" in deleted.output
    last = tamper("DELETE FROM ledger WHERE id = 3")
    assert last.exit_code == 1 and "after entry 2 are missing" in last.output
    swapped = tamper("UPDATE ledger SET id = 9 WHERE id = 1", "UPDATE ledger SET id = 1 WHERE id = 2",
                     "UPDATE ledger SET id = 2 WHERE id = 9")
    assert swapped.exit_code == 1 and "entry 1" in swapped.output
    head = tamper("UPDATE ledger_head SET id = 2")
    assert head.exit_code == 1 and "head" in head.output


def test_export_decrypts_for_a_keyholder_with_a_bom(world, tmp_path, domains):
    from click.testing import CliRunner

    from syncdb.cli import cli

    w = world
    w.insert(CODES[0], person(1, CODES[0], phone="13800138000"))
    w.insert(CODES[0], person(2, CODES[0], status="moved_out"))
    w.push(CODES[0])
    merge.merge(w.store, w.bundles, SECRET, domains)
    key_file = tmp_path / "key"
    key_file.write_bytes(SECRET.key_file_bytes)
    out = tmp_path / "persons.csv"
    result = CliRunner().invoke(cli, ["export", str(w.store), "huji.persons", "--where", "status=normal",
                                      "-o", str(out)], env={"SYNCDB_KEY_FILE": str(key_file)})
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data.startswith("\ufeff".encode())
    text = data.decode("utf-8-sig")
    assert id_number(1) in text and "居民1" in text and "13800138000" in text and id_number(2) not in text
    bad = CliRunner().invoke(cli, ["export", str(w.store), "huji.nothing"], env={"SYNCDB_KEY_FILE": str(key_file)})
    assert bad.exit_code == 2


def test_keys_rotate_reencrypts_without_losing_a_record(world, domains):
    from syncdb import keys

    w = world
    for n in range(5):
        w.insert(CODES[0], person(n, CODES[0], phone=f"1380013800{n}"))
    w.insert(CODES[1], person(1, CODES[1]))  # a duplicate registration: candidates in the queue
    w.push(CODES[0])
    w.push(CODES[1])
    merge.merge(w.store, w.bundles, SECRET, domains)
    before = snapshot(w.store, domains)
    counts = keys.rotate(w.store, SECRET, domains)
    assert counts["huji.persons"] == 5
    assert snapshot(w.store, domains) == before
    ring = office.load_keyring(w.store, SECRET)
    assert ring.data_key_id == "2" and set(ring.data_keys) == {"1", "2"}
    conn = sqlite3.connect(w.store / "store.db")
    assert {bytes(v)[1] for (v,) in conn.execute("SELECT _sealed FROM huji__persons")} == {2}
    # Run again: nothing left under the old key, so it makes a new one and moves everything once more.
    assert keys.rotate(w.store, SECRET, domains)["huji.persons"] == 5
    assert snapshot(w.store, domains) == before


def test_keys_rotate_stopped_in_the_conflict_queue_is_finished_not_restarted(world, domains, monkeypatch):
    from syncdb import keys

    w = world
    a = CODES[0]
    w.register(a, person(7, a))
    # The office and the community change the name (sensitive, manual) at once: sealed candidates in the queue.
    w.both_rename(a, 7, "王小名", "王晓明")
    assert open_conflicts(w.store) == [("name", "value")]
    before = snapshot(w.store, domains)

    def stopped(*args):
        raise KeyboardInterrupt  # the administrator pressed Ctrl-C, or the power went

    monkeypatch.setattr(keys, "_reseal_conflicts", stopped)
    with pytest.raises(KeyboardInterrupt):
        keys.rotate(w.store, SECRET, domains)
    monkeypatch.undo()
    counts = keys.rotate(w.store, SECRET, domains)
    assert office.load_keyring(w.store, SECRET).data_key_id == "2"  # finished, no third key
    assert counts["conflicts"] > 0 and counts["huji.persons"] == 0
    conn = sqlite3.connect(w.store / "store.db")
    (candidates,) = conn.execute("SELECT candidates FROM conflicts").fetchone()
    assert [bytes.fromhex(item["value"])[1] for item in json.loads(candidates)] == [2, 2]
    assert {bytes(v)[1] for (v,) in conn.execute("SELECT value FROM frontier")} == {2}
    conn.close()
    assert snapshot(w.store, domains) == before


def test_the_gm_suite_merges_end_to_end(tmp_path, domains):
    """office init --suite gm: SM4-GCM bundles and store values, HMAC-SM3 indexes and ledger."""
    w = World(tmp_path, domains, codes=(), suite_name="gm")
    store = w.store
    w.add_community(CODES[0], set_up=False)
    w.insert(CODES[0], person(3, CODES[0]))
    w.set_up(CODES[0])
    result = w.push(CODES[0])
    summary = merge.merge(store, [result.path], SECRET, domains)
    assert summary.changes == 1
    st_ = migrations.open_upgraded(store, SECRET, domains)
    assert st_.suite.name == "gm" and audit.verify(st_) == 1
    assert len(st_.keyring.data_keys["1"]) == 16
    assert [name for _key, name in stored_values(st_, "huji.persons", "name")] == ["居民3"]


def test_an_office_resolution_settles_a_conflict_in_any_order(world, domains):
    from syncdb import resolve

    w = world
    w.freeze_empty_store()
    a, b = CODES[0], CODES[1]
    w.insert(a, person(4, a))
    w.insert(b, person(4, b))
    w.push(a)
    w.push(b)
    merge.merge(w.store, w.bundles, SECRET, domains)
    ((conflict_id, kind),) = sqlite3.connect(w.store / "store.db").execute(
        "SELECT id, kind FROM conflicts WHERE status = 'open'").fetchall()
    assert kind == "duplicate-registration"
    summary = resolve.resolve_conflict(w.store, SECRET, domains, conflict_id, keep=b)
    assert summary.closed == 1 and summary.applied == 1
    rows, conflicts = snapshot(w.store, domains)
    assert conflicts == set()
    # Keeping b's registration keeps b's record, its community code included.
    assert dict(next(iter(rows.values()))[1])["community_code"] == b
    assert audit.verify(migrations.open_upgraded(w.store, SECRET, domains)) == 3
    (office_bundle,) = office.inbox_dir(w.store).glob("office-*.bundle")
    # The resolution travels as a bundle: merged first or last elsewhere, the same store.
    for i, order in enumerate(([office_bundle] + w.bundles, w.bundles + [office_bundle])):
        assert snapshot(w.merge_in_order(order, f"resolved-{i}"), domains) == (rows, conflicts)


def test_office_edit_refuses_an_unknown_record(world, domains):
    from syncdb import resolve
    from syncdb.errors import SyncdbError

    w = world
    with pytest.raises(SyncdbError, match="no record"):
        resolve.office_edit(w.store, SECRET, domains, [
            {"table": "huji.persons", "key": {"id_number": id_number(1)}, "cells": {"phone": "13800000000"}}])


def test_a_bundle_written_under_another_schema_is_held_not_lost(world, tmp_path, domains):
    from syncdb.schema import DEFAULT_SCHEMAS, load_domains as load

    w = world
    w.insert(CODES[0], person(5, CODES[0]))
    w.push(CODES[0])
    # The office's huji schema has a column more than the community's.
    office_schemas = tmp_path / "office-schemas"
    shutil.copytree(DEFAULT_SCHEMAS, office_schemas)
    toml = office_schemas / "huji.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace(
        'status         = {', 'note           = { type = "text", label = "备注" }\nstatus         = {'), encoding="utf-8")
    newer = load(office_schemas, extra_policies=extra_policies())
    summary = merge.merge(w.store, w.bundles, SECRET, newer)
    assert summary.applied == 0 and summary.changes == 0
    ((name, why),) = summary.held
    assert f"schema version {domains['huji'].version}" in why and "huji.toml" in why
    # Once the community writes under the same schema (here: the office goes back), the inbox merges.
    assert merge.merge(w.store, [], SECRET, domains).changes == 1
    # And a store opened under the newer schema gains the new column, keeping every row.
    migrations.open_upgraded(w.store, SECRET, newer).conn.close()
    conn = sqlite3.connect(w.store / "store.db")
    assert "note" in {r[1] for r in conn.execute("PRAGMA table_info(huji__persons)")}
    assert conn.execute("SELECT count(*) FROM huji__persons").fetchone()[0] == 1
    # No version was ever written for the new column: it is marked unset, not given the row's.
    (versions,) = conn.execute("SELECT _versions FROM huji__persons").fetchone()
    assert "note" not in unpack_row_versions(versions, newer["huji"].tables["persons"].non_key)
    assert "phone" in unpack_row_versions(versions, newer["huji"].tables["persons"].non_key)


def test_update_against_delete_is_queued_never_dropped(world, domains):
    w = world
    a = CODES[0]
    w.register(a, person(6, a))
    # The office corrects the phone while the community, not knowing, deletes the resident.
    w.office_sets(6, phone="13800138006")
    w.sql(a, "DELETE FROM persons")
    w.push(a, confirm_deletes=True)  # the table's only record: held unless confirmed
    summary = merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    assert summary.opened == 1
    assert open_conflicts(w.store) == [("phone", "update-delete")]
    from syncdb.conflicts import list_conflicts

    (item,) = list_conflicts(w.store, SECRET, domains)
    assert sorted((c["origin"], c["deleted"], c["value"]) for c in item["candidates"]) == [
        (a, True, None), ("office", False, "13800138006")]


def test_the_same_value_reached_concurrently_is_no_conflict(world, domains):
    w = world
    a = CODES[0]
    w.register(a, person(7, a))
    # name is a manual column: a real difference would be queued
    summary = w.both_rename(a, 7, "王小明", "王小明")
    assert summary.changes == 1 and summary.opened == 0 and open_conflicts(w.store) == []
    w.both_rename(a, 7, "王小名", "王晓明")
    assert open_conflicts(w.store) == [("name", "value")]


def test_a_resident_deleted_and_entered_again_is_no_conflict(world, domains):
    w = world
    a = CODES[0]
    w.insert(a, person(8, a))
    w.push(a)
    w.sql(a, "DELETE FROM persons")
    w.push(a, confirm_deletes=True)  # the table's only record: held unless confirmed
    w.insert(a, person(8, a, phone="13800138008"))
    w.push(a)
    summary = merge.merge(w.store, w.bundles, SECRET, domains)
    assert summary.changes == 3 and summary.opened == 0
    rows, conflicts = snapshot(w.store, domains)
    ((exists, values),) = rows.values()
    assert exists == 1 and dict(values)["phone"] == "13800138008" and conflicts == set()


def test_a_damaged_inbox_copy_is_quarantined_and_the_others_merge(world, domains):
    w = world
    w.insert(CODES[0], person(1, CODES[0]))
    w.insert(CODES[1], person(2, CODES[1]))
    w.push(CODES[0])
    w.push(CODES[1])
    for path in w.bundles:
        office.receive(w.store, path.read_bytes())
    damaged = office.inbox_dir(w.store) / w.bundles[0].name
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 1  # inside the payload: the signature no longer holds
    damaged.write_bytes(bytes(data))
    summary = merge.merge(w.store, [], SECRET, domains)
    assert summary.applied == 1 and summary.changes == 1
    ((name, why),) = summary.refused
    assert name == damaged.name and "restore it from a backup" in why
    assert any(p.name.endswith(f"inbox-{damaged.name}.reason.json") for p in office.quarantine_dir(w.store).iterdir())
    assert damaged.exists()


def test_an_office_policy_column_merges_without_error(tmp_path, domains):
    from syncdb.schema import DEFAULT_SCHEMAS, load_domains as load

    folder = tmp_path / "schemas"
    shutil.copytree(DEFAULT_SCHEMAS, folder)
    toml = folder / "huji.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace(
        'validator = "phone", policy = "prefer_non_null"', 'validator = "phone", policy = "office"'), encoding="utf-8")
    changed = load(folder, extra_policies=extra_policies())
    assert changed["huji"].tables["persons"].columns["phone"].policy == "office"
    w = World(tmp_path / "w", changed)
    w.insert(CODES[0], person(3, CODES[0], phone="13800000001"))
    w.insert(CODES[1], person(3, CODES[1], phone="13800000002"))
    w.push(CODES[0])
    w.push(CODES[1])
    summary = merge.merge(w.store, w.bundles, SECRET, changed)
    assert summary.applied == 2 and summary.held == []


def test_a_quoted_sensitive_value_never_reaches_the_store_in_clear(world, domains):
    w = world
    a = CODES[0]
    typed = id_number(12) + "\n"  # typed with a newline: the validator quotes it with repr()
    row = person(12, a)
    del row["id_number"]
    path = w.signed_bundle(a, [{"table": "huji.persons", "op": "insert", "key": {"id_number": typed},
                                "cells": row, "base": {}, "hlc": f"001700000000000.000000.{a}"}])
    summary = merge.merge(w.store, [path], SECRET, domains)
    assert len(summary.rejected) == 1 and id_number(12) not in summary.rejected[0]
    blobs = b"".join(p.read_bytes() for p in w.store.rglob("*") if p.is_file())
    assert id_number(12).encode() not in blobs


def test_keys_rotate_past_key_id_191(world, domains):
    from syncdb import keys

    w = world
    w.insert(CODES[0], person(1, CODES[0]))
    w.push(CODES[0])
    merge.merge(w.store, w.bundles, SECRET, domains)
    ring = office.load_keyring(w.store, SECRET)
    for n in range(2, 200):
        ring.data_keys[str(n)] = os.urandom(32)
    ring.data_key_id = "199"
    ring.save(office.keyring_path(w.store), SECRET)
    before = snapshot(w.store, domains)
    # Key 199 is current but the values are under key 1: a rotation to finish, not a new key.
    assert keys.rotate(w.store, SECRET, domains)["huji.persons"] == 1
    assert office.load_keyring(w.store, SECRET).data_key_id == "199"
    assert keys.rotate(w.store, SECRET, domains)["huji.persons"] == 1
    assert office.load_keyring(w.store, SECRET).data_key_id == "200"
    assert snapshot(w.store, domains) == before


def test_office_edits_made_at_the_same_time_both_apply(world, domains):
    """Two administrators settling records at once: each edit gets its own bundle number."""
    import threading

    from syncdb import resolve

    w = world
    a = CODES[0]
    for n in range(8):
        w.insert(a, person(n, a))
    w.push(a)
    merge.merge(w.store, w.bundles, SECRET, domains)
    errors = []

    def edit(numbers):
        try:
            for n in numbers:
                resolve.office_edit(w.store, SECRET, domains, [
                    {"table": "huji.persons", "key": {"id_number": id_number(n)},
                     "cells": {"phone": f"1380013{n:04d}"}}])
        except Exception as e:  # reported below, with the thread's failure
            errors.append(e)

    threads = [threading.Thread(target=edit, args=(range(k, 8, 2),)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    conn = sqlite3.connect(w.store / "store.db")
    assert [s for (s,) in conn.execute("SELECT sequence FROM applied WHERE origin = 'office' ORDER BY sequence")] \
        == list(range(1, 9))
    conn.close()
    st_ = migrations.open_upgraded(w.store, SECRET, domains)
    phones = sorted(phone for _key, phone in stored_values(st_, "huji.persons", "phone"))
    assert phones == [f"1380013{n:04d}" for n in range(8)]
    assert audit.verify(st_) == 16  # 8 registrations, 8 office edits
    st_.conn.close()


def test_merge_progress_counts_changes_within_a_bundle(world, domains, monkeypatch):
    w = world
    for n in range(12):
        w.insert(CODES[0], person(n, CODES[0]))
    w.push(CODES[0])
    monkeypatch.setattr(merge._Merger, "BATCH", 5)
    calls = []
    summary = merge.merge(w.store, w.bundles, SECRET, domains, progress=lambda d, t, name: calls.append((d, t)))
    assert summary.changes == 12
    assert calls == [(5, 12), (10, 12), (12, 12), (12, 12)]  # per batch, then the bundle done


@pytest.mark.parametrize("batch", [1, 2, 500])
def test_changes_to_one_record_within_a_bundle_apply_in_order(world, domains, monkeypatch, batch):
    """Rows are read and written per batch: a later change in the same batch sees the earlier one."""
    w = world
    a = CODES[0]
    w.insert(a, person(1, a))  # only to enroll the community's key and make its folder
    row = person(3, a)
    key = {"id_number": row.pop("id_number")}
    first, second, third = (f"00170000000000{n}.000000.{a}" for n in (1, 2, 3))
    path = w.signed_bundle(a, [
        {"table": "huji.persons", "op": "insert", "key": key, "cells": row, "base": {}, "hlc": first},
        {"table": "huji.persons", "op": "update", "key": key, "cells": {"phone": "13800138003"},
         "base": {"phone": first}, "hlc": second},
        {"table": "huji.persons", "op": "update", "key": key, "cells": {"phone": "13800138033"},
         "base": {"phone": first}, "hlc": third},  # the same community's later version: supersedes the second
    ])
    monkeypatch.setattr(merge._Merger, "BATCH", batch)
    summary = merge.merge(w.store, [path], SECRET, domains)
    assert summary.changes == 3 and summary.rejected == []
    st_ = migrations.open_upgraded(w.store, SECRET, domains)
    table = st_.table("huji.persons")
    k = st_.blind_key(table, [key["id_number"]])
    stored = st_.read_row(table, k)
    assert stored["phone"] == "13800138033"  # lww: the later stamp
    assert unpack_row_versions(stored["_versions"], table.non_key)["phone"] == third
    frontier = st_.conn.execute("SELECT version FROM frontier WHERE key = ? AND col = 'phone' ORDER BY version",
                                (k,)).fetchall()
    assert frontier == []  # one community's versions of a cell are ordered: no conflict with itself
    st_.conn.close()
