"""`syncdb status`, `syncdb bundles` and community names (issue #9).

The acceptance: `syncdb status` on an office after a planted fault of each
kind names it and exits 1; after it is cleared, it exits 0. Every command
runs as the real `syncdb` against real files.
"""

import hashlib
import json
import sqlite3
import subprocess

import pytest

from conftest import SYNCDB
from syncdb import community as community_lib, migrations
from syncdb import keys, office, transport

A, B, C, D = "441900003001", "441900003002", "441900003003", "441900003004"
NAMES = {A: "岗贝社区", B: "东门社区", C: "西湖社区", D: "南城社区"}


def run(env, *args, ok=None):
    done = subprocess.run([SYNCDB, *map(str, args)], env=env, capture_output=True, text=True, timeout=120)
    if ok is not None:
        assert (done.returncode == 0) == ok, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def status(env, path, *extra):
    return run(env, "status", path, *extra)


class Office:
    """An office with named communities whose bundles travel on a USB stick (the outbox stays full)."""

    def __init__(self, tmp_path, office_store, make_community, env):
        self.store, self.env, self.usb = office_store, env, tmp_path / "usb"
        self.communities = {}
        for n, code in enumerate((A, B, C, D)):
            c = make_community(code)
            c.next_person = 100 * (n + 1)  # no resident registered in two communities by accident
            run(env, "office", "rename", office_store, code, NAMES[code], ok=True)
            self.communities[code] = c

    def push(self, code, persons=2):
        c = self.communities[code]
        c.add_persons(persons)
        made = c.export().path
        transport.push_to_folder(c.path, self.usb / code)
        return made

    def receive_damaged(self, code):
        """The next bundle of ``code`` received, then its inbox copy damaged (a disk fault)."""
        made = self.push(code)
        ((_, receipt),) = office.receive_files(self.store, [made])
        data = bytearray(receipt.path.read_bytes())
        data[-40] ^= 0xFF
        receipt.path.write_bytes(bytes(data))
        return receipt

    def merge(self, *paths, ok=None):
        return run(self.env, "merge", self.store, *paths, ok=ok)


@pytest.fixture
def street(tmp_path, office_store, make_community, syncdb_env):
    o = Office(tmp_path, office_store, make_community, syncdb_env)
    for code in o.communities:
        o.push(code)
    o.merge(o.usb, ok=True)
    return o


def _clean(street):
    done = status(street.env, street.store)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Nothing needs a person." in done.stdout
    return done


def test_status_names_each_planted_fault_and_exits_1_until_cleared(street, make_community, syncdb_secret,
                                                                   domains):
    env, store = street.env, street.store
    shown = _clean(street).stdout
    for code, name in NAMES.items():
        assert f"{code} {name}: last bundle 1 applied" in shown

    # 1. A held bundle: A's inbox copy of bundle 2 is damaged. Cleared by asking A to send it
    # again: A carries its bundles on a USB stick, so it still has it.
    street.receive_damaged(A)
    street.merge(ok=False)
    held = status(env, store)
    assert held.returncode == 1
    assert f"bundle 2 of {A} 岗贝社区 is held: its inbox copy no longer verifies" in held.stdout
    assert f"syncdb bundles resend {store} {A} 2" in held.stdout
    listed = run(env, "bundles", "list", store, "--code", A)
    assert listed.returncode == 1 and f"{A} 岗贝社区 #2 [held]" in listed.stdout
    resent = run(env, "bundles", "resend", store, A, 2, ok=True)
    assert "only if the community still has it" in resent.stdout
    _clean(street)
    assert "1 applied" in street.merge(street.usb / A, ok=True).stdout
    _clean(street)

    # 2. A held bundle the community cannot send again: skipped with a reason, and B's later
    # bundle then applies.
    street.receive_damaged(B)
    later = street.push(B)
    office.receive_files(store, [later])
    street.merge(ok=False)
    held = status(env, store)
    assert held.returncode == 1
    assert f"bundle 2 of {B} 东门社区 is held" in held.stdout and "bundle 3 (waiting): waits for bundle 2" in held.stdout
    run(env, "bundles", "skip", store, B, 3, "--reason", "x", ok=False)  # not next in line
    skipped = run(env, "bundles", "skip", store, B, 2, "--reason", "inbox copy damaged; the PC was replaced",
                  "--by", "wangfang", ok=True)
    assert "1 later bundle(s) of it apply at the next merge" in skipped.stdout
    assert "1 applied" in street.merge(ok=True).stdout
    _clean(street)
    listed = run(env, "bundles", "list", store, "--code", B, ok=True).stdout
    assert "#2 [skipped]" in listed and "skipped by wangfang" in listed and "#3 [applied]" in listed
    assert "audit ledger intact" in run(env, "audit", "verify", store, ok=True).stdout

    # 3. A refusal in quarantine: a community the office never enrolled. Cleared by --ack.
    unknown = store.parent / "usb-unenrolled"
    other = make_community("441900003099", enroll=False)
    other.next_person = 900
    other.make_bundles(1)
    transport.push_to_folder(other.path, unknown)
    street.merge(unknown, ok=False)
    refused = status(env, store)
    assert refused.returncode == 1
    assert "refused since the last acknowledgement (unenrolled)" in refused.stdout
    acked = run(env, "status", store, "--ack")
    assert acked.returncode == 0, acked.stdout + acked.stderr
    _clean(street)

    # 4. An open conflict: C registers a resident D holds. Cleared by settling it.
    street.communities[C].next_person = 400
    street.push(C, persons=1)
    street.merge(street.usb / C)
    conflicted = status(env, store)
    assert conflicted.returncode == 1 and "open conflict(s)" in conflicted.stdout
    assert "duplicate-registration: 1 open" in conflicted.stdout
    for item in map(json.loads, run(env, "conflicts", "list", store, "--format", "json", ok=True).stdout.splitlines()):
        run(env, "conflicts", "resolve", store, item["id"], "--keep", D)
    _clean(street)

    # 5. A record the merge refused: D files a resident under A's code. Cleared by --ack.
    wrong = sqlite3.connect(street.communities[D].path / "huji.db")
    with wrong:
        wrong.execute("UPDATE persons SET community_code = ? WHERE rowid = (SELECT min(rowid) FROM persons)", (A,))
    wrong.close()
    street.push(D, persons=0)
    merged = street.merge(street.usb / D, ok=False).stdout
    assert f"rejected {D}（南城社区） / huji.persons / " in merged  # the merge's summary names communities too
    rejected = status(env, store)
    assert rejected.returncode == 1
    assert f"record(s) from {D} 南城社区 refused by the merge" in rejected.stdout
    assert f"files the record under community {A}" in rejected.stdout
    run(env, "status", store, "--ack", ok=True)
    _clean(street)

    # 6. An unfinished key rotation: stopped after its first batch. Cleared by running it again.
    keys.BATCH, batch = 1, keys.BATCH
    try:
        with pytest.raises(KeyboardInterrupt):
            keys.rotate(store, syncdb_secret, domains, progress=_stop)
    finally:
        keys.BATCH = batch
    rotating = status(env, store)
    assert rotating.returncode == 1 and "a key rotation is unfinished" in rotating.stdout
    run(env, "keys", "rotate", store, ok=True)
    assert "the keyring's current key is 2" in _clean(street).stdout


def _stop(*_):
    raise KeyboardInterrupt


def test_status_opens_the_store_read_only_and_writes_nothing(street):
    street.receive_damaged(A)
    street.merge(ok=False)
    database = street.store / "store.db"
    before = hashlib.sha256(database.read_bytes()).hexdigest(), sorted(p.name for p in street.store.rglob("*"))
    assert status(street.env, street.store).returncode == 1
    machine = json.loads(status(street.env, street.store, "--format", "json").stdout)
    assert machine["needs_person"] and [(e["origin"], e["sequence"], e["state"])
                                         for e in machine["not_applied"]] == [(A, 2, "held")]
    assert run(street.env, "bundles", "list", street.store).returncode == 1
    after = hashlib.sha256(database.read_bytes()).hexdigest(), sorted(p.name for p in street.store.rglob("*"))
    assert after == before


def test_a_missing_bundle_that_holds_later_ones_is_skipped(street):
    lost = street.push(A)
    later = street.push(A)
    lost.unlink()  # the PC lost it before it reached the office
    office.receive_files(street.store, [later])
    street.merge(ok=True)  # a gap waits: not a failure of this run
    gap = status(street.env, street.store)
    assert gap.returncode == 1 and "bundle 2 never reached the office" in gap.stdout
    run(street.env, "bundles", "resend", street.store, A, 2, ok=False)  # the office has nothing to forget
    run(street.env, "bundles", "skip", street.store, A, 2, ok=False)  # a reason is required
    run(street.env, "bundles", "skip", street.store, A, 2, "--reason", "lost with the old PC", ok=True)
    assert "1 applied" in street.merge(ok=True).stdout
    _clean(street)
    run(street.env, "bundles", "skip", street.store, A, 3, "--reason", "again", ok=False)  # applied already
    run(street.env, "bundles", "skip", street.store, A, 4, "--reason", "nothing waits", ok=False)


def test_community_status_names_held_records_and_the_last_acknowledgement(tmp_path, make_community, syncdb_env):
    c = make_community(A)
    c.add_persons(2)
    conn = sqlite3.connect(c.path / "huji.db")
    with conn:
        conn.execute("UPDATE persons SET sex = '7' WHERE rowid = 1")
    conn.close()
    made = c.export()
    held = status(syncdb_env, c.path)
    assert held.returncode == 1, held.stdout
    assert "huji.persons / " in held.stdout and "sex" in held.stdout and "held back" in held.stdout
    assert "the office has acknowledged no bundle yet" in held.stdout
    assert run(syncdb_env, "status", c.path, "--ack").returncode == 2  # --ack is for the office
    conn = sqlite3.connect(c.path / "huji.db")
    with conn:
        conn.execute("UPDATE persons SET sex = '1' WHERE rowid = 1")
    conn.close()
    c.export()
    community_lib.acknowledge(c.path, made.sequence)
    fixed = status(syncdb_env, c.path)
    assert fixed.returncode == 0, fixed.stdout
    assert f"last acknowledged bundle {made.sequence} at" in fixed.stdout
    assert "Outbox: 1 bundle(s) the office has not acknowledged" in fixed.stdout
    late = status(syncdb_env, c.path, "--max-lag", "0.00001")
    assert late.returncode == 1 and "has waited" in late.stdout


def test_names_from_enrolment_to_the_merge_and_the_conflicts(tmp_path, office_store, make_community, syncdb_env):
    env = syncdb_env
    a = make_community(A, enroll=False)
    b = make_community(B, enroll=False)
    run(env, "office", "enroll", office_store, A, a.path / f"{A}.pub.json", "--name", "岗贝社区", ok=True)
    assert "441900003001 岗贝社区 enrolled" in run(env, "office", "enroll", office_store, A,
                                                  a.path / f"{A}.pub.json", ok=True).stdout  # the name is kept
    run(env, "office", "enroll", office_store, B, b.path / f"{B}.pub.json", ok=True)
    renamed = run(env, "office", "rename", office_store, B, "东门社区", ok=True)
    assert "(no name) -> 东门社区" in renamed.stdout
    run(env, "office", "rename", office_store, C, "西湖社区", ok=False)  # not enrolled
    run(env, "office", "rename", office_store, B, "   ", ok=False)
    a.add_persons(1)
    b.add_persons(1)  # the same resident: a duplicate registration
    for c in (a, b):
        transport.push_to_folder(c.path, tmp_path / "usb") if c.export().path else None
    merged = run(env, "merge", office_store, tmp_path / "usb").stdout
    assert "conflicts: 1 opened" in merged
    listed = run(env, "conflicts", "list", office_store, ok=True).stdout
    assert f"{A} 岗贝社区: " in listed and f"{B} 东门社区: " in listed
    (item,) = map(json.loads, run(env, "conflicts", "list", office_store, "--format", "json").stdout.splitlines())
    assert {c["origin_name"] for c in item["candidates"]} == {"岗贝社区", "东门社区"}
    shown = run(env, "conflicts", "show", office_store, item["id"], ok=True).stdout
    assert f"{A} 岗贝社区" in shown and f"--keep {A}" in shown


def test_a_store_from_before_names_gets_the_column(office_store, make_community, syncdb_env, syncdb_secret, domains):
    from syncdb import pages
    from syncdb.migrations import open_upgraded as open_store

    make_community(A)
    conn = sqlite3.connect(office_store / "store.db")
    conn.execute("ALTER TABLE communities DROP COLUMN name")  # as `office init` made it before names
    conn.close()
    assert office.read_names(office_store) == {}
    assert status(syncdb_env, office_store).returncode == 0  # read-only: it adds nothing
    assert "name" not in {r[1] for r in sqlite3.connect(office_store / "store.db").execute(
        "PRAGMA table_info(communities)")}
    run(syncdb_env, "office", "rename", office_store, A, "岗贝社区", ok=True)
    assert office.read_names(office_store) == {A: "岗贝社区"}
    office.connect(office_store).close()  # again: nothing to add
    store = open_store(office_store, syncdb_secret, domains)
    try:
        (row,) = pages.sync_status(store, office_store)
    finally:
        store.conn.close()
    assert (row["code"], row["name"]) == (A, "岗贝社区")


def test_enrolment_keeps_to_the_offices_street(tmp_path, syncdb_secret, make_community):
    street = tmp_path / "street-office"
    migrations.init(street, syncdb_secret, code="441900003")
    mine = make_community(A, enroll=False)
    other = make_community("441900004001", enroll=False)
    office.enroll(street, A, mine.path / f"{A}.pub.json", name="岗贝社区")
    with pytest.raises(Exception, match="not in this office's street 441900003"):
        office.enroll(street, "441900004001", other.path / "441900004001.pub.json")


# --- what status must not miss, and must not make -----------------------------------------------

def test_community_status_names_a_dropped_table_the_push_would_hold(tmp_path, make_community, syncdb_env):
    c = make_community()
    c.add_persons(4)
    c.export()
    conn = sqlite3.connect(c.path / "huji.db", isolation_level=None)
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'persons'").fetchone()
    conn.execute("DROP TABLE persons")
    conn.close()
    before = _files(c.path)
    done = status(syncdb_env, c.path)
    assert done.returncode == 1, done.stdout
    assert "table 'persons' is gone from huji.db" in done.stdout
    assert "the office holds 4 of its records" in done.stdout
    assert f"syncdb push {c.path} --to URL (or --outbox DIR) --confirm-deletes" in done.stdout
    assert "Nothing needs a person" not in done.stdout
    assert _files(c.path) == before  # read only: the dropped table is not made again
    # Made again empty (an application's migration): the push holds it the same, and so says status.
    conn = sqlite3.connect(c.path / "huji.db", isolation_level=None)
    conn.execute(sql)
    conn.close()
    done = status(syncdb_env, c.path)
    assert done.returncode == 1, done.stdout
    assert "would delete 4 of the 4 records of huji.persons" in done.stdout
    assert done.stdout.count("the next push holds back deletions") == 1


def test_office_status_names_a_keyring_that_is_not_the_stores(street, tmp_path, syncdb_secret):
    other = tmp_path / "other-office"
    migrations.init(other, syncdb_secret)
    (street.store / "keyring.json").write_bytes((other / "keyring.json").read_bytes())
    assert run(street.env, "export", street.store, "huji.persons").returncode == 1
    done = status(street.env, street.store)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "is not this store's" in done.stdout and "keyring.json" in done.stdout
    assert "Nothing needs a person" not in done.stdout


def _files(folder) -> dict:
    """Every file under ``folder`` with the hash of its bytes: what a read-only command must leave."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_status_makes_no_wal_or_shm_files_beside_a_cleanly_closed_database(street):
    c = street.communities[A]
    for db in (street.store / "store.db", c.path / ".syncdb" / "state.db"):
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()  # the last connection: SQLite removes -wal and -shm
        assert not db.with_name(db.name + "-wal").exists()
    for folder in (street.store, c.path):
        before = _files(folder)
        status(street.env, folder)
        status(street.env, folder, "--format", "json")
        assert _files(folder) == before, folder
