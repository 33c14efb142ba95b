"""What the checks keep per record (store version 3) and the store indexes they look records up by.

A subject that is the plain value of one of the record's own columns is kept
in clear; any other is sealed, bound to the check, table and record, so it
cannot be moved to another record undetected. A version-2 store's old
``check_bearings`` is dropped by the upgrade and built again by each check's
next run, which looks at every record once; the look-up indexes are made by
the upgrade. Records.where answers the same through the blind key, a look-up
index or a scan.
"""

from __future__ import annotations

import contextlib
import sqlite3

import pytest
from cryptography.exceptions import InvalidTag

from syncdb import cases, checks, merge
from syncdb.checks import Check, Finding, Records
from syncdb.errors import SyncdbError
from syncdb.hookspecs import hookimpl
from syncdb.plugins import registered
from syncdb.store import STORE_VERSION
from conftest import stored_values
from test_checks import CODES, Street

PERSONS = "huji.persons"


class SameAddress:
    """A check whose subject comes from a sensitive column (a person's address): kept sealed."""

    @hookimpl
    def cross_checks(self):
        def find(records, subjects, settings):
            people = records.rows(PERSONS) if subjects is None else records.where(PERSONS, "address", subjects)
            by_address: dict = {}
            for p in people:
                if p["address"]:
                    by_address.setdefault(p["address"], []).append(p)
            for address, living in by_address.items():
                if len(living) >= 6:
                    yield Finding(address, "six or more residents at one address", living, {"residents": len(living)})
        return [Check("same_address", "same address", (PERSONS,), "address", find,
                      lambda table, record: [record["address"]])]


@pytest.fixture
def street(tmp_path, domains):
    (tmp_path / "keyfile").write_bytes(b"v" * 32)
    return Street(tmp_path, domains, tmp_path / "keyfile", codes=CODES[:1], residents=300)


@contextlib.contextmanager
def looks():
    """What each checks.run inside the block looked at (its Report.looked), in order."""
    looked, run = [], checks.run

    def watched(*args, **kwargs):
        report = run(*args, **kwargs)
        looked.append(report.looked)
        return report
    checks.run = watched
    try:
        yield looked
    finally:
        checks.run = run


def kept(conn, check: str) -> list[tuple]:
    return conn.execute("SELECT b.key, b.subject FROM record_bearings b JOIN bearing_checks c "
                        "ON b.holders & (1 << c.bit) WHERE c.check_name = ?", (check,)).fetchall()


def test_a_subject_from_a_sensitive_column_is_kept_sealed_and_cannot_be_moved(street):
    with registered(SameAddress()):
        with street.opened(write=True) as st:
            checks.run(st, names=["same_address"])
            rows = kept(st.conn, "same_address")
            addresses = {k for k, address in stored_values(st, PERSONS, "address") if address is not None}
            assert len(rows) == len(addresses) > 2
            assert all(isinstance(subject, bytes) for __, subject in rows)
            plain = {p["address"] for p in Records(st).rows(PERSONS)}
            assert not any(a.encode() in b"".join(s for __, s in rows) for a in plain)
            (first, one), (second, other) = rows[0], rows[1]
            opened = cases.bearings(st, "same_address", "address", PERSONS, [first])
            assert list(opened[first].values()) == [Records(st).get(PERSONS, first)["address"]]
            # Household 户号s (plain in the persons' rows) are kept in clear.
            assert all(isinstance(s, str) for __, s in kept(st.conn, "household_head"))
        with street.opened(write=True) as st:  # one record's sealed subject moved to another record
            st.conn.execute("UPDATE record_bearings SET subject = ? WHERE key = ? AND subject = ?", (one, second, other))
            with pytest.raises((InvalidTag, SyncdbError)):
                cases.bearings(st, "same_address", "address", PERSONS, [second])


def test_an_upgrade_drops_the_old_bearings_and_the_next_run_looks_at_everything_once(street, domains):
    before = street.cases()
    with street.opened() as st:
        counts = {check: len(kept(st.conn, check)) for check in ("household_head", "rental_overfull")}
        lookups = set(checks.lookup_indexes(st))
    assert all(counts.values()) and {"huji__persons__by_household_no", "huji__persons__by_birth_date"} <= lookups
    # As a version-2 store left it: the old table, no look-up index, the checks' settings naming version 1.
    conn = sqlite3.connect(street.store / "store.db", isolation_level=None)
    for table in ("record_bearings", "bearing_checks", "bearing_tables"):
        conn.execute(f"DROP TABLE {table}")
    for name in lookups:
        conn.execute(f"DROP INDEX [{name}]")
    conn.execute("CREATE INDEX huji__persons_id_number__bi ON huji__persons (id_number__bi)")  # version 2 made it
    conn.execute("CREATE TABLE check_bearings (check_name TEXT NOT NULL, tbl TEXT NOT NULL, key BLOB NOT NULL, "
                 "subject BLOB NOT NULL, sealed BLOB NOT NULL, PRIMARY KEY (check_name, tbl, key, subject)) "
                 "WITHOUT ROWID")
    conn.execute("INSERT INTO check_bearings VALUES ('household_head', 'huji.persons', x'00', x'01', x'02')")
    conn.execute("UPDATE check_settings SET used = json_set(used, '$.bearings[0]', 1)")
    conn.execute("PRAGMA user_version = 2")
    conn.close()

    with looks() as looked:
        merge.merge(street.store, [], street.secret, street.domains)  # upgrades, then runs the checks

    assert looked and all(looked[0][c] is None for c in counts), "a check keeping version 1 looks at everything"
    with street.opened(write=True) as st:
        names = {n for (n,) in st.conn.execute("SELECT name FROM sqlite_master")}
        assert "check_bearings" not in names and lookups <= names and "huji__persons_id_number__bi" not in names
        assert st.conn.execute("PRAGMA user_version").fetchone() == (STORE_VERSION,) == (5,)
        assert {c: len(kept(st.conn, c)) for c in counts} == counts
        assert checks.run(st).looked["household_head"] == 0  # and then at what changes only
    unchecked = [{k: v for k, v in c.items() if k != "checked"} for c in before]  # when last found: now
    assert [{k: v for k, v in c.items() if k != "checked"} for c in street.cases()] == unchecked


def test_records_are_found_alike_by_blind_key_index_and_scan(street, monkeypatch):
    """Each way Records.where looks records up finds the same ones. Thousands asked of an indexed column
    are looked up one by one, or found by reading the whole index once when they are many against the
    table's rows (Records._many): both ways here, the first with every value asked looked up."""
    read_whole = []
    present = Records._present
    monkeypatch.setattr(Records, "_present", lambda self, *a: read_whole.append(a) or present(self, *a))
    for share in (0, checks._SHARE):
        monkeypatch.setattr(checks, "_SHARE", share)
        read_whole.clear()
        _found_alike(street)
        assert bool(read_whole) == bool(share), share


def _found_alike(street):
    with street.opened() as st:
        everything = Records(st, everything=True)
        persons = everything.rows(PERSONS)
        numbers = sorted({p["household_no"] for p in persons})[:7] + ["no such household"]
        days = sorted({p["birth_date"] for p in persons})[:5]
        addresses = sorted({p["address_code"] for p in persons if p["address_code"]})[:5]
        ids = sorted(p["id_number"] for p in persons)
        unknown = [f"44190019{n:010d}" for n in range(checks._MANY + 1)]  # nobody's: asked as the neighbours are
        asked = [(PERSONS, "id_number", ids[:9]), (PERSONS, "id_number", ids[::3] + unknown),
                 ("shebao.enrolments", "id_number", ids[:40]),
                 ("huji.households", "household_no", numbers), (PERSONS, "household_no", numbers),
                 (PERSONS, "birth_date", days), (PERSONS, "address_code", addresses)]
        for table, column, values in asked:
            expected = sorted(r.key for r in everything.where(table, column, values))
            assert expected, (table, column)
            assert sorted(r.key for r in Records(st).where(table, column, values)) == expected, (table, column)
        # The non-key columns are asked through their look-up indexes, the 户号 of households by its blind key.
        for column in ("household_no", "birth_date", "address_code"):
            plan = " ".join(row[-1] for row in st.conn.execute(
                f"EXPLAIN QUERY PLAN SELECT * FROM huji__persons WHERE _exists = 1 AND [{column}] IN (?, ?)",
                ("a", "b")))
            assert f"huji__persons__by_{column}" in plan, plan
        records = Records(st)
        records.where("huji.households", "household_no", numbers)
        assert ("huji.households", "household_no") not in records._scanned


def test_checks_share_a_kept_subject_and_each_keeps_its_own_view(street):
    with street.opened(write=True) as st:
        bits = dict(st.conn.execute("SELECT check_name, bit FROM bearing_checks"))
        both = (1 << bits["household_head"]) | (1 << bits["dibao_employed"])
        holders = [h for (h,) in st.conn.execute(
            "SELECT b.holders FROM record_bearings b JOIN huji__persons p ON p._key = b.key "
            "WHERE b.subject = p.household_no")]
        assert len(holders) == 300 and all(h & both == both for h in holders), "one row a 户号 for both checks"
        person = Records(st).rows(PERSONS)[0]
        key, old = person.key, person["household_no"]
        blind = cases.subject_index(st, "household", old)
        for check in ("household_head", "dibao_employed"):
            assert cases.bearings(st, check, "household", PERSONS, [key]) == {key: {blind: old}}
        # household_head alone sees the person in another household (dibao_employed failed, say).
        moved = cases.subject_index(st, "household", "4419000000000")
        with st.transaction():
            cases.keep_bearings(st, "household_head", {(PERSONS, key): {moved: ("4419000000000", True)}},
                                {(PERSONS, key): {blind}})
        assert cases.bearings(st, "household_head", "household", PERSONS, [key]) == {key: {moved: "4419000000000"}}
        assert cases.bearings(st, "dibao_employed", "household", PERSONS, [key]) == {key: {blind: old}}
        with st.transaction():
            cases.keep_bearings(st, "dibao_employed", {(PERSONS, key): {moved: ("4419000000000", True)}},
                                {(PERSONS, key): {blind}})
        rows = st.conn.execute("SELECT subject, holders FROM record_bearings WHERE key = ? AND holders & ?",
                               (key, both)).fetchall()
        assert rows == [("4419000000000", both)]  # one row again, the old 户号's gone
        with st.transaction():  # deleted: nothing kept for it by either
            for check in ("household_head", "dibao_employed"):
                cases.keep_bearings(st, check, {(PERSONS, key): {}}, {(PERSONS, key): {moved}})
        assert st.conn.execute("SELECT subject FROM record_bearings WHERE key = ? AND holders & ?",
                               (key, both)).fetchall() == []


def test_a_run_over_everything_builds_again_what_each_check_keeps_per_record(street):
    """`checks run --all` looks at every record, and builds again from them what each check keeps of
    each record: kept rows lost or damaged are made whole, where a run on what changed would keep
    missing the households and houses the records left."""
    with street.opened(write=True) as st:
        everything = sorted(st.conn.execute("SELECT * FROM record_bearings").fetchall())
        assert len(everything) > 100
        st.conn.execute("DELETE FROM record_bearings WHERE key IN (SELECT key FROM record_bearings LIMIT 50)")
        st.conn.execute("UPDATE record_bearings SET holders = 0 WHERE key IN "
                        "(SELECT key FROM record_bearings ORDER BY key DESC LIMIT 20)")
        assert sorted(st.conn.execute("SELECT * FROM record_bearings").fetchall()) != everything
        checks.run(st)  # nothing changed since the last run: nothing is built again
        assert sorted(st.conn.execute("SELECT * FROM record_bearings").fetchall()) != everything

        def unread(*args):
            raise AssertionError("a run over everything read the ledger for what changed")
        st.cells_changed_since = unread
        checks.run(st, everything=True)
        assert sorted(st.conn.execute("SELECT * FROM record_bearings WHERE holders != 0").fetchall()) == everything
