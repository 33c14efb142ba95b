"""Records looking thousands of values up (second read of Records._many).

Records._many chooses, for thousands of values asked of an indexed column,
between looking them up by chunks of IN (...) and reading the whole index
first. Both ways must find the same records. test_checks_bearings asks a
one-column key's blind key (Records._by_key) both ways; here an indexed
column, a blind ID and a plain one (Records._ask), with deleted records
among those asked and values asked twice in one run. And the
table's size it weighs them against is its rowid's, also where a schema
names a column rowid.
"""

from __future__ import annotations

import shutil
import textwrap

import pytest

from conftest import SECRET, World
from syncdb import checks, merge
from syncdb.checks import Records
from syncdb.schema import DEFAULT_SCHEMAS, load_domains
from syncdb.store import open_store
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


def test_a_table_with_a_column_named_rowid_is_asked_thousands_of_values(tmp_path, domains):
    """A schema may name a column rowid (行号, a number a local app gives its rows): in SQLite that name is
    then the column, text here. Records._many asked max(rowid) for the table's size and compared text
    with a number: thousands of values asked of the table failed the check that asked them."""
    schemas = tmp_path / "schemas"
    shutil.copytree(DEFAULT_SCHEMAS, schemas)
    (schemas / "wupin.toml").write_text(textwrap.dedent("""
        label = "物品"
        version = 1
        [tables.items]
        label = "物品"
        key = ["code"]
        owner = "community_code"
        [tables.items.columns]
        code = { type = "text", label = "编码" }
        rowid = { type = "text", label = "行号" }
        community_code = { type = "text", label = "社区代码", validator = "community_code", required = true, policy = "owner" }
        """), encoding="utf-8")
    mine = load_domains(schemas)
    world = World(tmp_path / "street", mine, CODES[:1], community_domains=("huji", "wupin"))
    conn = world.connect(CODES[0], "wupin.db")
    for n in range(5):
        conn.execute("INSERT INTO items (code, rowid, community_code) VALUES (?, ?, ?)", (f"c{n}", f"A{n}", CODES[0]))
    conn.close()
    world.push(CODES[0])
    assert merge.merge(world.store, world.bundles, SECRET, mine).applied == 1
    asked = [f"c{n}" for n in range(checks._MANY + 1)]
    with open_store(world.store, SECRET, mine) as st:
        assert st.conn.execute("SELECT max(rowid) FROM wupin__items").fetchone() == ("A4",)
        found = sorted(r["code"] for r in Records(st).where("wupin.items", "code", asked))
        assert found == sorted(r["code"] for r in Records(st, everything=True).where("wupin.items", "code", asked))
        assert found == [f"c{n}" for n in range(5)]
