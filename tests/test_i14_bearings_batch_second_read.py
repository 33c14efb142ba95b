"""Second read of what the checks keep per record, read and written 500 records at a time
(cases.keep_bearings): a night that moves more than 500 records of one table keeps what a run over
every record from nothing keeps, and one call for many records keeps what one call a record keeps."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from syncdb import cases, checks, migrations, workdir
from syncdb.crypto import Secret
from syncdb.plugins import registered
from syncdb.store import open_store
from test_checks import CODES, Street
from test_checks_bearings import SameAddress, looks

PERSONS = "huji.persons"


def kept(st) -> set[tuple]:
    """(table, key, in clear or sealed, subject opened, checks keeping it) of every row."""
    names = {i: tbl for tbl, i in cases._table_ids(st).items()}
    bits = dict(st.conn.execute("SELECT bit, check_name FROM bearing_checks"))
    out = set()
    for tbl_id, key, stored, holders in st.conn.execute("SELECT * FROM record_bearings"):
        tbl = names[tbl_id]
        subject = cases._subject(st, tbl, bytes(key), stored)
        out.add((tbl, bytes(key), type(stored).__name__, type(subject).__name__, repr(subject),
                 frozenset(name for bit, name in bits.items() if holders >> bit & 1)))
    return out


def test_a_night_moving_more_than_500_records_of_a_table_keeps_what_a_run_from_nothing_keeps(tmp_path, domains):
    (tmp_path / "keyfile").write_bytes(b"b" * 32)
    with registered(SameAddress()):  # a subject kept sealed beside the 户号s kept in clear
        street = Street(tmp_path, domains, tmp_path / "keyfile", codes=CODES[:1], residents=560)
        rng, code = random.Random(5), CODES[0]
        huji = workdir.connect(workdir.db_path(street.folder(code), "huji"))
        liudong = workdir.connect(workdir.db_path(street.folder(code), "liudong"))
        try:
            people = [n for (n,) in huji.execute("SELECT id_number FROM persons")]
            households = sorted({h for (h,) in huji.execute("SELECT household_no FROM persons")})
            addresses = sorted({a for (a,) in huji.execute("SELECT address FROM persons") if a})
            houses = sorted({h for (h,) in liudong.execute("SELECT house_code FROM migrants") if h})
            migrants = [n for (n,) in liudong.execute("SELECT id_number FROM migrants")]
            assert len(people) > 500 and len(migrants) > 500
            huji.executemany("UPDATE persons SET household_no = ?, address = ? WHERE id_number = ?",
                             [(rng.choice(households), rng.choice(addresses + [None]), p) for p in people])
            huji.executemany("DELETE FROM persons WHERE id_number = ?", [(p,) for p in rng.sample(people, 40)])
            liudong.executemany("UPDATE migrants SET house_code = ? WHERE id_number = ?",
                                [(rng.choice(houses), m) for m in migrants])
            liudong.executemany("DELETE FROM migrants WHERE id_number = ?", [(m,) for m in rng.sample(migrants, 30)])
        finally:
            huji.close()
            liudong.close()

        with looks() as looked:
            summary = street.push_and_merge()
        assert "failed" not in "\n".join(summary.lines())
        assert looked and looked[0]["household_head"] is not None, "the night's run looked at what changed only"

        shutil.copytree(street.store, tmp_path / "copy")
        with street.opened() as st:
            night = kept(st)
        with open_store(tmp_path / "copy", street.secret, domains, write=True) as st:
            with st.transaction():  # nothing kept, nor the settings used: every check builds it from every record
                st.conn.execute("DELETE FROM record_bearings")
                st.conn.execute("DELETE FROM check_settings")
            report = checks.run(st)
            assert not report.failed and set(report.looked.values()) == {None}
            fresh = kept(st)
    moved = {(t, k) for t, k, *_rest in night if t == PERSONS}
    assert len(moved) > 500 and {t for t, *_rest in night} == {PERSONS, "liudong.migrants"}
    assert night == fresh


def _keys(seed: int, tbl: str, n: int) -> list[bytes]:
    rng = random.Random(f"{seed} {tbl}")
    return sorted({rng.randbytes(16) for _ in range(n)})


def _random_keeps(store: Path, secret, domains, seed: int, one_by_one: bool) -> list[int]:
    """Random keeps of four checks over three tables (one unknown to the store until then), 1,100 records
    of one: moves, records gone, subjects shared, a subject kept both in clear and sealed for one record.
    ``one_by_one``: one call a record. Return what the calls said they wrote, step by step."""
    rng = random.Random(seed)
    tables = {PERSONS: 1100, "huji.households": 60, "liudong.migrants": 40}
    keys = {t: _keys(seed, t, n) for t, n in tables.items()}
    pool = ["4419001", "4419002", "4419003", "广东省东莞市", 7, 2.5, True]
    written = []
    with open_store(store, secret, domains, write=True) as st:
        for __ in range(6):
            check = rng.choice(["c1", "c2", "c3", "c4"])
            now: dict = {}
            before = {k: v for k, v in sorted(cases.all_bearings(st, check, "household").items()) if rng.random() < .9}
            for tbl in rng.sample(sorted(tables), rng.randint(1, 3)):
                for key in rng.sample(keys[tbl], rng.randint(0, len(keys[tbl]))):
                    if rng.random() < .85:  # else gone: in ``before`` only
                        now[tbl, key] = {cases.subject_index(st, "household", s): (s, rng.random() < .6)
                                         for s in rng.sample(pool, rng.randint(0, 3))}
            with st.transaction():
                if one_by_one:
                    n = sum(cases.keep_bearings(st, check, {k: v}, {k: before[k]} if k in before else {})
                            for k, v in now.items())
                    n += sum(cases.keep_bearings(st, check, {}, {k: v}) for k, v in before.items() if k not in now)
                else:
                    n = cases.keep_bearings(st, check, now, before)
            written.append(n)
    return written


@pytest.mark.parametrize("seed", [1, 2])
def test_one_call_for_many_records_keeps_what_one_call_a_record_keeps(tmp_path, domains, seed):
    secret = Secret(key_file_bytes=b"c" * 32)
    migrations.init(tmp_path / "a", secret, domains=domains)
    with open_store(tmp_path / "a", secret, domains, write=True) as st:
        with st.transaction():
            cases.ensure(st)
            st.conn.execute("INSERT INTO bearing_tables (tbl) VALUES (?)", (PERSONS,))
            cases._bit(st, "c1", make=True)
            cases._bit(st, "c2", make=True)
            tbl_id = cases._table_ids(st)[PERSONS]
            rng = random.Random(seed)
            # Rows as earlier runs left them, some shared by c1 and c2, some subjects both in clear and sealed.
            for key in _keys(seed, PERSONS, 1100)[::3]:
                subject = rng.choice(["4419001", "4419002"])
                st.conn.execute("INSERT INTO record_bearings VALUES (?, ?, ?, ?)",
                                (tbl_id, key, subject, rng.choice([1, 2, 3])))
                if rng.random() < .3:
                    st.conn.execute("INSERT INTO record_bearings VALUES (?, ?, ?, ?)", (tbl_id, key, cases._seal(
                        st, "subject", subject, cases._bearing_cell(PERSONS, key)), rng.choice([1, 2, 3])))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    batched = _random_keeps(tmp_path / "a", secret, domains, seed, one_by_one=False)
    single = _random_keeps(tmp_path / "b", secret, domains, seed, one_by_one=True)
    assert batched == single and max(batched) > 500
    with open_store(tmp_path / "a", secret, domains) as a, open_store(tmp_path / "b", secret, domains) as b:
        assert kept(a) == kept(b)
