"""Hybrid logical clocks (syncdb/hlc.py): stamps never run backwards, whatever the PC clock does."""

import json
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import World
from syncdb import community, hlc
from syncdb.hlc import Clock, Stamp
from test_capture import A, B, C, CODE, E, assert_increasing, by_change, insert_row
from test_capture import resident as registered


def resident(number: str, name: str, sex: str, birth: str) -> dict:
    """A resident with no household: the clock is all these tests look at, not the record rules."""
    return registered(number, name, sex, birth, household_no=None)


@pytest.fixture
def site(tmp_path, domains) -> World:
    """An office and community CODE's working databases (every domain), not yet set up for sync."""
    w = World(tmp_path, domains, codes=(), community_domains=tuple(domains))
    w.add_community(CODE, folder="community", set_up=False)
    return w


def test_hlc_never_runs_backwards():
    clock = Clock("A")
    first = clock.tick(1_000)
    second = clock.tick(500)  # the PC clock jumped back
    assert second > first and second.ms == 1_000
    clock.observe(Stamp(5_000, 3, "office"))
    assert clock.tick(2_000) > Stamp(5_000, 3, "office")
    assert Stamp.parse(str(first)) == first
    with pytest.raises(ValueError):
        Stamp.parse("yesterday")


def test_stamps_increase_when_the_pc_clock_jumps(site):
    site.set_up(CODE)
    conn = site.connect(CODE)
    insert_row(conn, "persons", resident(A, "王秀英", "2", "1949-12-31"))
    conn.close()
    header1, changes1 = site.received(site.push(CODE).path)

    # The PC clock runs ten years fast for a while …
    conn = site.connect(CODE)
    insert_row(conn, "persons", resident(B, "李强", "1", "1978-03-14"))
    conn.execute("UPDATE persons SET phone = '13900000001' WHERE id_number = ?", (A,))
    conn.execute("UPDATE _syncdb_log SET ms = ms + 10 * 365 * 86400000")
    conn.close()
    header2, changes2 = site.received(site.push(CODE).path)
    future = Stamp.parse(header2["hlc"]["max"]).ms
    assert future > Stamp.parse(header1["hlc"]["max"]).ms + 9 * 365 * 86400000

    # … then is put right, and later even falls back to 1970 (a flat CMOS battery).
    conn = site.connect(CODE)
    insert_row(conn, "persons", resident(C, "陈明", "2", "1985-07-02"))
    conn.execute("UPDATE persons SET phone = '13900000002' WHERE id_number = ?", (A,))
    conn.execute("UPDATE persons SET name = '李刚' WHERE id_number = ?", (B,))
    conn.close()
    header3, changes3 = site.received(site.push(CODE).path)
    conn = site.connect(CODE)
    insert_row(conn, "persons", resident(E, "赵桂兰", "2", "1960-11-08"))
    conn.execute("DELETE FROM persons WHERE id_number = ?", (C,))
    conn.execute("UPDATE _syncdb_log SET ms = 1000 + seq")
    conn.close()
    header4, changes4 = site.received(site.push(CODE).path)

    every = changes1 + changes2 + changes3 + changes4
    assert [len(changes1), len(changes2), len(changes3), len(changes4)] == [1, 2, 3, 2]
    assert_increasing(every)
    for header, changes in ((header1, changes1), (header2, changes2), (header3, changes3), (header4, changes4)):
        assert header["hlc"] == {"min": changes[0]["hlc"], "max": changes[-1]["hlc"]}
    # The later bundles stamp past the fast clock instead of going back in time.
    assert all(Stamp.parse(c["hlc"]).ms >= future for c in changes3 + changes4)
    # And base versions point at the stamps the office already has.
    update_b = by_change(changes3)[("huji.persons", "update", json.dumps({"id_number": B}))]
    inserted_b = changes2[[c["key"]["id_number"] for c in changes2].index(B)]["hlc"]
    assert update_b["base"] == {"name": inserted_b, "community_code": inserted_b}


def test_stamps_stay_fixed_width_when_the_counter_runs_out(site):
    site.set_up(CODE)
    # The stored clock far ahead and at the top of its counter: what years of writes stamped
    # after a PC clock once ran years fast come to. (The community state keeps it in meta 'hlc'.)
    ahead = Stamp(hlc.now_ms() + 10 * 365 * 86400000, 999_998, CODE)
    state = sqlite3.connect(site.folders[CODE] / community.STATE_DIR / "state.db")
    with state:
        state.execute("INSERT OR REPLACE INTO meta VALUES ('hlc', ?)", (str(ahead),))
    state.close()
    conn = site.connect(CODE)
    for number, name in ((A, "王秀英"), (B, "李强"), (E, "赵桂兰")):
        # Valid records (birth date and sex as the ID number says), or the community holds them back.
        sex = "1" if int(number[16]) % 2 else "2"
        insert_row(conn, "persons", resident(number, name, sex, f"{number[6:10]}-{number[10:12]}-{number[12:14]}"))
    conn.close()
    header, changes = site.received(site.push(CODE).path)
    assert_increasing(changes)  # Stamp.parse refuses a stamp that is not fixed-width
    assert all(c["hlc"] > str(ahead) for c in changes)


VERSION_PARTS = st.tuples(
    st.sampled_from(["", "~"]),
    st.one_of(st.integers(0, 2**48 + 10), st.integers(0, 10**15 - 1)),
    st.integers(0, 10**6 - 1),
    st.one_of(st.sampled_from(["441900003001", "000000000001", "office", "社区"]), st.text(min_size=1, max_size=300)))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "名字", "x" * 300, "gone"]),
                       VERSION_PARTS.map(lambda p: f"{p[0]}{p[1]:015d}.{p[2]:06d}.{p[3]}"), max_size=5))
def test_the_office_rows_versions_in_bytes_mean_what_the_text_meant(versions):
    """hlc.pack_row_versions (store version 4) reads back as pack_versions did, whatever the stamps:
    an odd one (a long node, milliseconds past 48 bits) is kept as the text."""
    columns = ["a", "b", "名字", "x" * 300]
    packed = hlc.pack_row_versions(versions, columns)
    assert hlc.unpack_row_versions(packed, columns) == hlc.unpack_versions(hlc.pack_versions(versions, columns), columns)
    same = dict.fromkeys(columns, "001796122448817.001852.441900003001")
    assert len(hlc.pack_row_versions(same, columns)) == 16
    assert hlc.unpack_row_versions(hlc.one_row_version(same["a"]), columns) == same
