"""Second read of `checks run --all` building again what each check keeps per record (Bearings from every
record, no ledger read).

Found sound: a second run over everything writes nothing to ``record_bearings`` (what it builds from the
records is what it kept). Found and fixed: a sealed subject that does not open (damaged, or moved from
another record) made the check fail on every run over everything, so the run meant to make kept rows
whole could not make that one whole; and when another check had to write a row of that same record
(its row lost), cases.keep_bearings opened every subject kept for the record, the failed check's too,
and the whole run stopped on it. A kept subject that does not open is now no subject any record has
(cases.UNOPENED): the run builds the row again from the record and logs how many it replaced. Only a
check whose subject comes from a sensitive column keeps sealed ones (the built-in checks keep theirs
in clear).
"""

from __future__ import annotations

from syncdb import cases, checks
from syncdb.plugins import registered
from test_checks_bearings import PERSONS, SameAddress, kept, street  # noqa: F401 - the fixture


def test_a_second_run_over_everything_writes_nothing_it_kept(street):
    with registered(SameAddress()):
        with street.opened(write=True) as st:
            checks.run(st, everything=True)
            st.conn.execute("CREATE TEMP TABLE written (op TEXT)")
            for op in ("INSERT", "UPDATE", "DELETE"):
                st.conn.execute(f"CREATE TEMP TRIGGER bearings_{op.lower()} AFTER {op} ON main.record_bearings "
                                f"BEGIN INSERT INTO written VALUES ('{op}'); END")
            report = checks.run(st, everything=True)
            assert not report.failed
            assert st.conn.execute("SELECT count(*) FROM written").fetchone()[0] == 0


def test_a_run_over_everything_makes_whole_a_sealed_subject_that_does_not_open(street, caplog):
    with registered(SameAddress()):
        with street.opened(write=True) as st:
            checks.run(st, names=["same_address"])
            rows = sorted(kept(st.conn, "same_address"))
            keys = [bytes(k) for k, __ in rows]
            whole = cases.bearings(st, "same_address", "address", PERSONS, keys)  # opened: a new seal differs
            (__, one), (second, other) = rows[0], rows[1]
            st.conn.execute("UPDATE record_bearings SET subject = ? WHERE key = ? AND subject = ?", (one, second, other))
            with caplog.at_level("WARNING", logger="syncdb.cases"):
                report = checks.run(st, everything=True, names=["same_address"])
            assert not report.failed, report.lines()
            assert [r.getMessage() for r in caplog.records if "same_address" in r.getMessage() and "1" in r.getMessage()]
            assert cases.bearings(st, "same_address", "address", PERSONS, keys) == whole


def test_a_sealed_subject_that_does_not_open_stops_no_check(street):
    """same_address's row of a record is damaged and household_head's row of that same record lost: the
    run over everything builds both again, and neither check, nor the run, stops on the damaged one."""
    with registered(SameAddress()):
        with street.opened(write=True) as st:
            checks.run(st)
            before = {c: sorted(kept(st.conn, c)) for c in ("same_address", "household_head")}
            rows = before["same_address"]
            (__, one), (second, other) = rows[0], rows[1]
            st.conn.execute("UPDATE record_bearings SET subject = ? WHERE key = ? AND subject = ?", (one, second, other))
            st.conn.execute("DELETE FROM record_bearings WHERE key = ? AND typeof(subject) = 'text'", (second,))
            report = checks.run(st, everything=True)
            assert report.failed == [] and {"same_address", "household_head"} <= set(report.tallies)
            assert sorted(kept(st.conn, "household_head")) == before["household_head"]
            keys = [bytes(k) for k, __ in rows]
            assert len(kept(st.conn, "same_address")) == len(rows)
            assert cases.bearings(st, "same_address", "address", PERSONS, keys).keys() == set(keys)
