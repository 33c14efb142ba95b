"""Records looking thousands of values up (second read of Records._many).

Records._many chooses, for thousands of values asked of an indexed column,
between looking them up by chunks of IN (...) and reading the whole index
first. Both ways must find the same records. test_checks_bearings asks a
one-column key's blind key (Records._by_key) both ways; here an indexed
column, a blind ID and a plain one (Records._ask), with deleted records
among those asked and values asked twice in one run.
"""

from __future__ import annotations

import pytest

from syncdb import checks
from syncdb.checks import Records
from test_checks import CODES, Street

PERSONS, ENROLMENTS = "huji.persons", "shebao.enrolments"


@pytest.fixture
def street(tmp_path, domains):
    (tmp_path / "keyfile").write_bytes(b"m" * 32)
    return Street(tmp_path, domains, tmp_path / "keyfile", codes=CODES[:1], residents=300)


def test_thousands_asked_of_any_indexed_column_find_alike_by_chunks_and_by_the_whole_index(street, monkeypatch):
    """Thousands of values asked of a blind ID (社保's ID numbers, not its whole key) and of a plain indexed
    column (the residents' 户号), some of them deleted records', asked twice over in one run, find
    the same live records by chunks of IN (...) and after reading the whole index (Records._ask's two
    ways), as the view of every record does."""
    code = CODES[0]
    gone = [i for (i,) in street.sql(code, "shebao", "SELECT DISTINCT id_number FROM enrolments LIMIT 12")]
    street.sql(code, "shebao", "DELETE FROM enrolments WHERE id_number IN (%s)" % ", ".join("?" * len(gone)), gone)
    street.push_and_merge(code)
    unknown = [f"44190019{n:010d}" for n in range(checks._MANY + 1)]
    read_whole: list = []
    present = Records._present
    monkeypatch.setattr(Records, "_present", lambda self, *a: read_whole.append(a) or present(self, *a))
    with street.opened() as st:
        deleted = {bytes(k) for (k,) in st.conn.execute("SELECT _key FROM shebao__enrolments WHERE _exists = 0")}
        assert len(deleted) >= len(gone) == 12
        everything = Records(st, everything=True)
        ids = sorted({r["id_number"] for r in everything.rows(ENROLMENTS)})
        numbers = sorted({p["household_no"] for p in everything.rows(PERSONS)})
        asked = [(ENROLMENTS, "id_number", ids[::2] + gone + unknown),
                 (ENROLMENTS, "id_number", ids[1::2] + gone[:3] + unknown[:50] + ids[:9]),
                 (PERSONS, "household_no", numbers[::2] + [f"no such {n}" for n in range(checks._MANY + 1)]),
                 (PERSONS, "household_no", numbers + ["no such 7"])]
        expected = [sorted(r.key for r in everything.where(*a)) for a in asked]
        assert all(expected) and not deleted & {k for e in expected for k in e}
        for share in (0, checks._SHARE):
            monkeypatch.setattr(checks, "_SHARE", share)
            read_whole.clear()
            records = Records(st)  # one run: the second ask of each column meets what the first cached
            found = [sorted(r.key for r in records.where(*a)) for a in asked]
            assert found == expected, share
            assert {a[1] for a in read_whole} == ({"id_number__bi", "household_no"} if share else set()), share

