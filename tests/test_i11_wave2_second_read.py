"""Issue 11, second wave, second read: shebao v2 (77688b2) and minzheng v2 (34a3178).

The code rename (`was`) and `community upgrade` under a crash and a second run; the merge accepting
a deletion under a code the schemas no longer have; the move of per-person 低保/特困 into household
records. Real files, real crypto, the previous schemas in tests/schemas_previous/.
"""

import sqlite3

import pytest

from conftest import SECRET, snapshot
from syncdb import merge, resolve
from syncdb.errors import SyncdbError
from syncdb.schema import load_domains
from syncdb.workdir_upgrade import upgrade
from test_schema_upgrade import (A, ADDRESS, BENEFITS_V1, CHILD, HEAD, WIFE, rows_of,  # noqa: F401
                                 with_dibao)
from test_shebao_upgrade import NEW_CODES, OLD_ENROLMENTS, enrolments_at_the_office, insured, previous  # noqa: F401


def live(store, domains, table):
    rows, _ = snapshot(store, domains)
    return [dict(cells) for (t, _), (exists, cells) in rows.items() if t == table and exists]


# -- 2. community upgrade recoding a key column --------------------------------------------------

def test_upgrade_crashing_in_the_recode_then_run_again_loses_nothing_at_the_office(insured):
    """The community's own trigger refuses one rewrite: the recode rolls back whole; run again once
    it is gone, then push and merge: every enrolment under its new code, none twice, none old."""
    shipped = load_domains()
    kept = {name: shipped[name] for name in ("huji", "shebao")}
    folder = insured.folders[A]
    conn = insured.connect(A, "shebao.db")
    conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON enrolments WHEN NEW.insurance_type = '510' "
                 "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    conn.close()
    with pytest.raises(SyncdbError):
        upgrade(folder, kept)
    assert sorted(r[1] for r in rows_of(folder / "shebao.db", "enrolments")) == sorted(
        t for _, t, *_ in OLD_ENROLMENTS)  # nothing rewritten
    conn = insured.connect(A, "shebao.db")
    conn.execute("DROP TRIGGER refuse")
    conn.close()
    upgrade(folder, kept)
    assert not upgrade(folder, kept).changed  # a third run changes nothing
    insured.all_domains = shipped
    insured.communities[A].domains = kept
    result = insured.push(A)
    assert result.held == []
    summary = merge.merge(insured.store, insured.bundles[-1:], SECRET, shipped)
    assert (summary.applied, summary.rejected, summary.opened) == (1, [], 0)
    assert set(enrolments_at_the_office(insured.store, shipped)) == {(n, NEW_CODES[t]) for n, t, *_ in OLD_ENROLMENTS}


def test_a_rekey_of_an_enrolment_the_office_edited_meanwhile_leaves_no_old_code_record(insured):
    """The office corrects an old-coded enrolment (under version 1, not yet pulled by the community);
    the community upgrades and pushes its rekey. The store must not keep the enrolment twice (once
    under the old code, alive through the office's version, once under AAE140)."""
    previous_domains = insured.all_domains
    resolve.office_edit(insured.store, SECRET, previous_domains, [
        {"table": "shebao.enrolments", "key": {"id_number": WIFE, "insurance_type": "maternity"},
         "cells": {"employer": "东莞市妇幼保健院"}}])
    shipped = load_domains()
    kept = {name: shipped[name] for name in ("huji", "shebao")}
    upgrade(insured.folders[A], kept)
    insured.all_domains = shipped
    insured.communities[A].domains = kept
    insured.push(A)
    merge.merge(insured.store, insured.bundles[-1:], SECRET, shipped)
    at_office = enrolments_at_the_office(insured.store, shipped)
    mine = sorted(t for n, t in at_office if n == WIFE)
    assert mine == ["170", "390", "510"], mine


# -- 1. a deletion under a code the schemas no longer have -----------------------------------------

def hand_signed(world, code, changes, sequence, domains, tmp_path):
    """A bundle made by hand and signed with ``code``'s key: what a hostile or buggy syncdb could send."""
    from syncdb import bundle, community as community_lib
    from syncdb.crypto import Keyring, PublicKey
    ring = Keyring.load(community_lib.state_dir(world.folders[code]) / "keyring.json", SECRET)
    path = tmp_path / bundle.file_name(code, sequence)
    bundle.write(path, {"origin": code, "sequence": sequence, "schemas": {
        name: {"version": domains[name].version, "fingerprint": domains[name].fingerprint}
        for name in ("huji", "shebao")}}, changes, ring, PublicKey.read(world.store / "office.pub.json"))
    return path


def stamp(code: str, later: int = 0) -> str:
    """A syncdb stamp of ``code``, ``later`` ms after now."""
    from syncdb.hlc import Stamp, now_ms
    return str(Stamp(now_ms() + later, 0, code))


def test_another_community_cannot_delete_an_old_coded_record_it_does_not_hold(insured, tmp_path):
    """B sends the deletion A's upgrade would send, naming A's version as its base: refused (a community
    changes only its own copy), the record stays at the office."""
    shipped = load_domains()
    B = "441900003002"
    insured.all_domains = shipped
    insured.domains = {name: shipped[name] for name in ("huji", "shebao")}
    insured.add_community(B)
    a_version = stamp(A, -60_000)
    change = {"table": "shebao.enrolments", "op": "delete", "key": {"id_number": WIFE, "insurance_type": "maternity"},
              "cells": {}, "base": {"status": a_version}, "hlc": stamp(B, 1000)}
    path = hand_signed(insured, B, [change], 1, shipped, tmp_path)
    summary = merge.merge(insured.store, [path], SECRET, shipped)
    assert (WIFE, "maternity") in enrolments_at_the_office(insured.store, shipped), summary.lines()


def test_a_deletion_under_a_made_up_code_leaves_nothing_in_the_store(insured, tmp_path):
    """A community's deletion under a key whose code no version of the schemas ever had (here a
    resident's name where the 险种 goes) names no record anyone holds: before 77688b2 refused; now?"""
    shipped = load_domains()
    insured.all_domains = shipped
    own = stamp(A, -60_000)
    junk = "陈志强 13800138000"
    change = {"table": "shebao.enrolments", "op": "delete", "key": {"id_number": WIFE, "insurance_type": junk},
              "cells": {}, "base": {"status": own}, "hlc": stamp(A, 1000)}
    path = hand_signed(insured, A, [change], 2, shipped, tmp_path)
    summary = merge.merge(insured.store, [path], SECRET, shipped)
    # Refused, and no record or tombstone is made under it. (The rejection names the value, masked
    # key and all, as it does any invalid value of a column that is not sensitive.)
    assert summary.changes == 0 and len(summary.rejected) == 1 and "unknown insurance_type code" in summary.rejected[0]
    conn = sqlite3.connect(insured.store / "store.db")
    stored = conn.execute("SELECT count(*) FROM shebao__enrolments WHERE insurance_type = ?", (junk,)).fetchone()
    conn.close()
    assert stored == (0,), "a made-up code keyed a record in the store"


# -- 3. the move of per-person 低保/特困 into household records --------------------------------------

def test_members_amounts_that_differ_are_not_dropped_silently(with_dibao):
    """H001's three 低保 rows at 800, 800 and 700 (CHILD): no one amount is the household's, so the rows stay
    per person and the upgrade names the household's members and why, instead of keeping the most common."""
    conn = sqlite3.connect(with_dibao.folders[A] / "minzheng.db")
    with conn:
        conn.execute("UPDATE benefits SET monthly_amount = 700 WHERE id_number = ? AND benefit_type = 'dibao'",
                     (CHILD,))
    conn.close()
    shipped = load_domains()
    done = upgrade(with_dibao.folders[A], {d: shipped[d] for d in ("huji", "minzheng")})
    left = {(r[0], r[1], r[3]) for r in rows_of(with_dibao.folders[A] / "minzheng.db", "benefits")}
    assert {(HEAD, "dibao", 800.0), (WIFE, "dibao", 800.0), (CHILD, "dibao", 700.0)} <= left
    assert "H001" not in {r[0] for r in rows_of(with_dibao.folders[A] / "minzheng.db", "assistance")}
    notes = "\n".join(done.assistance)
    assert "monthly amounts differ (700, 800)" in notes, notes


@pytest.mark.xfail(strict=True, reason="34a3178: the upgrade's advice cannot be followed for a household another community holds: held at every push")
def test_a_member_registered_in_another_community_can_follow_the_upgrades_advice(with_dibao, tmp_path):
    """WIFE's 低保 is kept by community B, her household H001 by A. B's upgrade leaves her row per
    person and says: enter the household's record in minzheng.assistance and delete the row. B does
    exactly that; its push must send it, not hold it forever (B's huji.db has no H001)."""
    B = "441900003002"
    previous_domains = with_dibao.all_domains
    with_dibao.add_community(B)
    conn = with_dibao.connect(B, "huji.db")
    conn.execute("INSERT INTO persons (id_number, name, sex, ethnicity, birth_date, household_no, relationship, "
                 "address, community_code, status) VALUES (?, '林美华', '2', '01', '1972-05-06', 'H001', '12', ?, ?, "
                 "'normal')", (WIFE, ADDRESS, B))
    conn.close()
    conn = with_dibao.connect(B, "minzheng.db")
    conn.execute("INSERT INTO benefits VALUES (?, 'dibao', 'active', 800.0, '2020-03-01', NULL, ?)", (WIFE, B))
    conn.close()
    with_dibao.push(B)
    merge.merge(with_dibao.store, with_dibao.bundles[-1:], SECRET, previous_domains)
    shipped = load_domains()
    kept = {d: shipped[d] for d in ("huji", "minzheng")}
    done = upgrade(with_dibao.folders[B], kept)
    assert "no household in huji.db" in "\n".join(done.assistance)
    conn = with_dibao.connect(B, "minzheng.db")
    conn.execute("INSERT INTO assistance VALUES ('H001', '1', 'active', 800.0, 1, '2020-03-01', NULL, ?)", (B,))
    conn.execute("DELETE FROM benefits WHERE id_number = ?", (WIFE,))
    conn.close()
    with_dibao.all_domains = shipped
    with_dibao.communities[B].domains = kept
    result = with_dibao.push(B, confirm_deletes=True)
    assert result.held == [], result.held


@pytest.mark.xfail(strict=True, reason="34a3178: an office edit racing the move leaves an update-delete conflict on a record whose code v2 no longer has")
def test_a_dibao_row_in_conflict_at_the_office_is_moved_and_its_conflict_closed(with_dibao):
    """The office and the community both change HEAD's 低保 amount (a manual column: a conflict). The
    community upgrades and pushes the move: the per-person row must not stay alive at the office
    beside the household's record, nor its conflict stay open on a record that is gone."""
    from conftest import open_conflicts
    previous_domains = with_dibao.all_domains
    resolve.office_edit(with_dibao.store, SECRET, previous_domains, [
        {"table": "minzheng.benefits", "key": {"id_number": HEAD, "benefit_type": "dibao"},
         "cells": {"monthly_amount": 850.0}}])
    conn = with_dibao.connect(A, "minzheng.db")
    conn.execute("UPDATE benefits SET monthly_amount = 820.0 WHERE id_number = ? AND benefit_type = 'dibao'", (HEAD,))
    conn.close()
    with_dibao.push(A)
    summary = merge.merge(with_dibao.store, with_dibao.bundles[-1:], SECRET, previous_domains)
    assert summary.opened == 1, summary.lines()
    shipped = load_domains()
    kept = {d: shipped[d] for d in ("huji", "minzheng")}
    upgrade(with_dibao.folders[A], kept)
    with_dibao.all_domains, with_dibao.communities[A].domains = shipped, kept
    with_dibao.push(A, confirm_deletes=True)
    merge.merge(with_dibao.store, with_dibao.bundles[-1:], SECRET, shipped)
    still = {(b["id_number"], b["benefit_type"]) for b in live(with_dibao.store, shipped, "minzheng.benefits")}
    assert (HEAD, "dibao") not in still
    assert not open_conflicts(with_dibao.store), open_conflicts(with_dibao.store)
