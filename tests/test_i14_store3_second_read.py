"""Second read of store version 3's checks' bearings and look-up indexes (issue 14, item 5): what a check
plugin's bug, or many checks over the years, must not do to the other checks and to the merge."""

from __future__ import annotations

import sqlite3

import pytest

from syncdb import cases, checks, merge
from syncdb.checks import Check
from syncdb.hookspecs import hookimpl
from syncdb.plugins import registered
from syncdb.store import STORE_VERSION
from test_checks import CODES, Street

PERSONS = "huji.persons"


def _keeping(name: str) -> Check:
    """A check that keeps each resident's 户号 (a subject not from the record's key) and finds nothing."""
    return Check(name, name, (PERSONS,), "household", lambda records, subjects, settings: [],
                 lambda table, record: [record["household_no"]])


class Many:
    def __init__(self, names):
        self.names = names

    @hookimpl
    def cross_checks(self):
        return [_keeping(n) for n in self.names]


class BadSeverity:
    @hookimpl
    def cross_checks(self):
        return [Check("bad_severity", "bad", (PERSONS,), "person", lambda r, s, o: [], lambda t, r: [],
                      severity="urgent", lookups={PERSONS: ("household_no",)})]


@pytest.fixture
def street(tmp_path, domains):
    (tmp_path / "keyfile").write_bytes(b"w" * 32)
    return Street(tmp_path, domains, tmp_path / "keyfile", codes=CODES[:1], residents=120)


def bits(street) -> dict[str, int]:
    conn = sqlite3.connect(street.store / "store.db")
    try:
        return dict(conn.execute("SELECT check_name, bit FROM bearing_checks"))
    finally:
        conn.close()


def test_a_check_past_the_bits_of_holders_fails_alone_and_the_others_run(street):
    """Past 63 checks keeping subjects, the one that finds no bit is reported failed; the run does not stop."""
    taken = len(bits(street))
    extra = [f"extra_{n:02d}" for n in range(cases.MAX_BEARING_CHECKS - taken + 1)]
    with registered(Many(extra)):
        with street.opened(write=True) as st:
            report = checks.run(st)
    assert [name for name, __ in report.failed] == [extra[-1]]
    assert set(report.tallies) >= {"household_head", *extra[:-1]}


def test_a_check_removed_from_the_plugins_gives_its_bit_back_when_one_is_needed(street):
    """Checks come and go over the years: a removed check's bit serves a new one, and the removed check, if it
    comes back, looks at everything again (what it kept was cleared)."""
    taken = len(bits(street))
    first = [f"old_{n:02d}" for n in range(cases.MAX_BEARING_CHECKS - taken)]
    with registered(Many(first)):
        with street.opened(write=True) as st:
            assert not checks.run(st).failed
    assert len(bits(street)) == cases.MAX_BEARING_CHECKS
    second = ["new_00", "new_01"]
    with registered(Many(second + first[2:])):
        with street.opened(write=True) as st:
            report = checks.run(st)
    assert not report.failed and set(second) <= set(bits(street)) and not set(first[:2]) & set(bits(street))
    with registered(Many(first[:1] + first[2:])):  # old_00 is back: it kept nothing, so it looks at all
        with street.opened(write=True) as st:
            report = checks.run(st, names=["old_00", "old_05"])
    assert report.looked["old_00"] is None and report.looked["old_05"] == 0 and not report.failed


def test_a_check_plugin_with_a_bug_does_not_stop_the_upgrade_and_the_merge(street):
    """The upgrade makes the checks' look-up indexes; a check plugin the checks refuse (a severity they do not
    know) must not stop it, nor the merge after it: the checks say so, as after any merge."""
    conn = sqlite3.connect(street.store / "store.db", isolation_level=None)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with registered(BadSeverity()):
        summary = merge.merge(street.store, [], street.secret, street.domains)
    assert summary.applied == 0
    conn = sqlite3.connect(street.store / "store.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (STORE_VERSION,)
    finally:
        conn.close()


class SameAddress:
    """A check whose subject is a sensitive value (a resident's address): its bearings are kept sealed."""

    @hookimpl
    def cross_checks(self):
        return [Check("same_address", "same address", (PERSONS,), "address", lambda records, subjects, settings: [],
                      lambda table, record: [record["address"]])]


def test_keys_rotate_after_the_upgrade_reseals_the_sealed_bearings(street, domains):
    """A version-2 store upgraded by ``keys rotate`` itself: every sealed subject the checks keep is under the
    new data key after it, and opens with it alone."""
    import dataclasses

    from syncdb import keys, office
    from syncdb.store import open_store
    with registered(SameAddress()):
        with street.opened(write=True) as st:
            checks.run(st, names=["same_address"])
            sealed = st.conn.execute("SELECT count(*) FROM record_bearings WHERE typeof(subject) = 'blob'").fetchone()
            assert sealed[0] > 10 and cases.data_keys_used(st) == {1}
        conn = sqlite3.connect(street.store / "store.db", isolation_level=None)
        conn.execute("PRAGMA user_version = 2")
        conn.close()
        keys.rotate(street.store, street.secret, domains)
        ring = office.load_keyring(street.store, street.secret)
        retired = dataclasses.replace(ring, data_keys={"2": ring.data_keys["2"]})
        with open_store(street.store, retired, domains) as st:
            assert cases.data_keys_used(st) == {2}
            assert st.conn.execute("PRAGMA user_version").fetchone() == (STORE_VERSION,)
            keys_ = [bytes(k) for (k,) in st.conn.execute(
                "SELECT key FROM record_bearings WHERE typeof(subject) = 'blob' LIMIT 5")]
            opened = cases.bearings(st, "same_address", "address", PERSONS, keys_)
            assert len(opened) == 5 and all(opened.values())


class OddLookups:
    """Checks declaring look-ups the store cannot index: a column no table has, a sensitive column, a table the
    office does not keep, and one declared as a list of pairs instead of a mapping."""

    @hookimpl
    def cross_checks(self):
        def check(name, lookups):
            return Check(name, name, (PERSONS,), "person", lambda r, s, o: [], lambda t, r: [], lookups=lookups)
        return [check("odd_missing", {PERSONS: ("no_such_column",), "nosuch.table": ("x",)}),
                check("odd_sealed", {PERSONS: ("name", "phone")}),
                check("odd_pairs", [(PERSONS, "household_no")])]


def test_look_ups_the_store_cannot_index_stop_no_upgrade_and_no_merge(street):
    """No index on a missing or sensitive column (sealed values differ each time: it would find nothing), and
    a malformed declaration is refused as the check's alone; the upgrade and the merge go on."""
    conn = sqlite3.connect(street.store / "store.db", isolation_level=None)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with registered(OddLookups()):
        merge.merge(street.store, [], street.secret, street.domains)
    conn = sqlite3.connect(street.store / "store.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (STORE_VERSION,)
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()
    assert not {n for n in names if "no_such" in n or n.endswith(("__by_name", "__by_phone"))}


class GoodAndFlaky:
    """Two checks keeping each resident's 户号 (one shared row a resident), the second failing while ``failing``."""

    failing = False

    @hookimpl
    def cross_checks(self):
        def flaky(records, subjects, settings):
            if GoodAndFlaky.failing:
                raise RuntimeError("flaky")
            return []
        return [_keeping("keeps_good"),
                Check("keeps_flaky", "keeps_flaky", (PERSONS,), "household", flaky,
                      lambda table, record: [record["household_no"]])]


def test_a_check_that_failed_over_a_move_still_looks_at_the_household_left_once_it_runs(street):
    """A resident moves to another household while one of two checks sharing the kept 户号 fails: the other
    keeps the new one, the failed one still the old, and its next run looks at both households."""
    code = CODES[0]
    with registered(GoodAndFlaky()):
        with street.opened(write=True) as st:
            assert not checks.run(st).failed
            person = next(p for p in checks.Records(st).rows(PERSONS)
                          if p["household_no"] and p["relationship"] != "02")  # a head's move may be refused
            key, old = person.key, person["household_no"]
            other = next(p["household_no"] for p in checks.Records(st).rows(PERSONS) if p["household_no"] != old)
            id_number = person["id_number"]
        street.sql(code, "huji", "UPDATE persons SET household_no = ? WHERE id_number = ?", (other, id_number))
        GoodAndFlaky.failing = True
        try:
            summary = street.push_and_merge()
        finally:
            GoodAndFlaky.failing = False
        with street.opened(write=True) as st:
            kept = {c: set(cases.bearings(st, c, "household", PERSONS, [key])[key].values())
                    for c in ("keeps_good", "keeps_flaky")}
            assert summary.changes and not summary.rejected, summary
            assert kept == {"keeps_good": {other}, "keeps_flaky": {old}}
            report = checks.run(st, names=["keeps_flaky"])
            assert report.looked["keeps_flaky"] == 2 and not report.failed
            assert set(cases.bearings(st, "keeps_flaky", "household", PERSONS, [key])[key].values()) == {other}
            rows = st.conn.execute("SELECT subject FROM record_bearings WHERE key = ? AND subject IN (?, ?)",
                                   (key, old, other)).fetchall()
            assert rows == [(other,)]  # one row again, shared with the built-in checks keeping the 户号


class ByEthnicity:
    """A check that looks persons up by their ethnicity: an index the store makes for it alone."""

    @hookimpl
    def cross_checks(self):
        return [Check("by_ethnicity", "by_ethnicity", (PERSONS,), "person", lambda r, s, o: [], lambda t, r: [],
                      lookups={PERSONS: ("ethnicity",)})]


def test_a_look_up_index_no_check_declares_any_more_is_dropped_by_the_next_run_of_every_check(street):
    """A check removed (its plugin file taken out) leaves no index behind for every later merge to write,
    once it has not run for LOOKUPS_KEPT_DAYS days; the built-in checks' indexes stay, and a run of some
    checks only drops nothing."""
    with registered(ByEthnicity()):
        with street.opened(write=True) as st:
            checks.run(st)
            assert "huji__persons__by_ethnicity" in indexes(st.conn)
    with street.opened(write=True) as st:
        checks.run(st, names=["household_head"])
        assert "huji__persons__by_ethnicity" in indexes(st.conn)
        # Without the plugin (as a shell without SYNCDB_PLUGINS beside a serve with it): kept while
        # the check has run in the last LOOKUPS_KEPT_DAYS days.
        checks.run(st)
        assert "huji__persons__by_ethnicity" in indexes(st.conn)
        st.conn.execute("UPDATE check_points SET at = '2000-01-01T00:00:00' WHERE check_name = 'by_ethnicity'")
        checks.run(st)
        left = indexes(st.conn)
    assert "huji__persons__by_ethnicity" not in left
    assert {"huji__persons__by_household_no", "huji__persons__by_birth_date"} <= left


def indexes(conn) -> set[str]:
    return {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
