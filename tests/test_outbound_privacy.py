"""Issue #8 item 8: a resolution carries to a community only what it owns or already sent.

The record's owner gets the settled record; any other community whose
version was settled gets the decision for the cells it held — a value only
where it sent that same value — and never another community's plaintext.
"""

import json
import sqlite3

import pytest

from conftest import CODES, SECRET, World, id_number, person
from syncdb import bundle, community, merge, outbound, resolve
from syncdb.conflicts import list_conflicts
from syncdb.crypto import Keyring, PublicKey
from syncdb.hlc import now_ms
from syncdb.pull import pull

A, B, C = CODES
A_ROW = person(7, A, name="李秀英", phone="13800138007", address="东莞市甲社区七号")
C_ROW = person(7, C, name="陈七", phone="13900139007", address="东莞市丙社区七号")
A_SECRETS = ("李秀英", "13800138007", "东莞市甲社区七号")


def decrypted(w: World, code: str) -> list[dict]:
    """Every change of every resolutions bundle queued for ``code``, opened with its own keyring."""
    ring = Keyring.load(community.state_dir(w.folders[code]) / "keyring.json", SECRET)
    office_key = PublicKey.read(w.store / "office.pub.json")
    changes = []
    for sequence in outbound.available(w.store, code):
        path = outbound.path_of(w.store, code, sequence)
        with open(path, "rb") as f:
            assert bundle.verify(f, {office_key.code: office_key}.get).kind == "resolutions"
        with open(path, "rb") as f:
            changes += list(bundle.changes(f, ring))
    return changes


def values_in(changes: list[dict]) -> set:
    return {v for c in changes for v in [*c["key"].values(), *c["cells"].values()]}


def local_row(w: World, code: str, n: int = 7) -> dict:
    conn = sqlite3.connect(w.folders[code] / "huji.db")
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("SELECT * FROM persons WHERE id_number = ?", (id_number(n),)).fetchone())
    finally:
        conn.close()


def _pull(w: World, code: str):
    return pull(w.folders[code], w.domains, SECRET, inbox=str(outbound.outbound_dir(w.store, code)))


def _attack(w: World, domains) -> None:
    """C, with its own key, puts a version into the name of A's resident (no base: a concurrent one)."""
    path = w.signed_bundle(C, [{"table": "huji.persons", "op": "update", "key": {"id_number": id_number(7)},
                                "cells": {"name": "冒名"}, "base": {}, "hlc": f"{now_ms():015d}.000000.{C}"}])
    merge.merge(w.store, [path], SECRET, domains)


def _duplicate(w: World, domains) -> None:
    """The same resident registered `normal` in A and in C, under different names."""
    w.register(C, dict(C_ROW))


@pytest.fixture
def a_registered(world):
    """The fixture world, where community A has registered resident 7."""
    world.register(A, dict(A_ROW))
    return world


def _keep_a(w: World, domains):
    """The administrator keeps A's side of the conflict on resident 7 (the registration if there is one)."""
    open_ = list_conflicts(w.store, SECRET, domains)
    if not open_:
        return None
    chosen = next((c for c in open_ if c["kind"] == "duplicate-registration"), open_[0])
    return resolve.resolve_conflict(w.store, SECRET, domains, chosen["id"], keep=A)


@pytest.mark.parametrize("scenario", [_attack, _duplicate], ids=["attack", "duplicate-registration"])
def test_item8_resolution_does_not_carry_another_communitys_value(a_registered, domains, scenario):
    w = a_registered
    scenario(w, domains)
    summary = _keep_a(w, domains)
    if summary is None:
        # An ownership check at the merge refused C's version outright: nothing to settle, nothing sent to C.
        assert decrypted(w, C) == []
        return
    sent_by_c = set(C_ROW.values()) | {"冒名", None}  # None: the cells C left empty
    to_c = decrypted(w, C)
    shown = json.dumps(to_c, ensure_ascii=False)
    for secret in A_SECRETS:
        assert secret not in shown
    # Nothing C did not send itself, except the decision that the record is A's.
    assert values_in(to_c) <= sent_by_c | {A}
    assert to_c and all(set(c.get("superseded", [])) >= {"name"} and c["owner"] == A for c in to_c)
    # A, the owner, gets the settled record.
    settled = [c for c in decrypted(w, A) if c["hlc"] == to_c[-1]["hlc"]]
    assert settled and {k: settled[0]["cells"][k] for k in ("name",)} == {"name": A_ROW["name"]}
    if scenario is _duplicate:
        assert {settled[0]["cells"][k] for k in ("phone", "address", "community_code")} == \
            {A_ROW["phone"], A_ROW["address"], A}
        # C's share: the cells it sent with the value it sent, the rest only named as superseded.
        (share,) = to_c
        assert set(share["superseded"]) == {"name", "phone", "address"}
        assert {k: v for k, v in share["cells"].items() if v is not None} == {
            "sex": "1", "ethnicity": "01", "birth_date": "1980-01-01", "status": "normal", "community_code": A}
        assert "equal" not in share and "equal" not in settled[0]


def test_item8_the_losing_community_keeps_its_record_and_does_not_reopen_the_conflict(a_registered, domains):
    w = a_registered
    _duplicate(w, domains)
    _keep_a(w, domains)
    assert list_conflicts(w.store, SECRET, domains) == []
    report = _pull(w, C)
    # C's own values stay (the office never sent A's); the record is marked as A's.
    row = local_row(w, C)
    assert (row["name"], row["phone"], row["address"]) == (C_ROW["name"], C_ROW["phone"], C_ROW["address"])
    assert row["community_code"] == A
    (line,) = report.superseded
    assert "name" in line and "phone" in line and "address" in line and f"belongs to {A}" in line
    assert any("ask that community to transfer them" in text for text in report.lines())
    state = sqlite3.connect(community.state_dir(w.folders[C]) / "state.db")
    try:
        noted = state.execute("SELECT col, owner FROM superseded ORDER BY col").fetchall()
    finally:
        state.close()
    assert noted == [("address", A), ("name", A), ("phone", A)]
    # Nothing of what was pulled goes back, and night after night nothing reopens.
    assert w.push(C).path is None
    for night in range(2):
        w.insert(C, person(20 + night, C))  # C goes on with its own work
        w.push(C)
        summary = merge.merge(w.store, w.bundles[-1:], SECRET, domains)
        assert summary.opened == 0 and list_conflicts(w.store, SECRET, domains) == []
        assert _pull(w, C).applied == []
    # C's staff mark the resident moved out of C: A's record stays as settled, nothing reopens.
    w.sql(C, "UPDATE persons SET status = 'moved_out' WHERE id_number = ?", (id_number(7),))
    w.push(C)
    assert merge.merge(w.store, w.bundles[-1:], SECRET, domains).opened == 0
    assert list_conflicts(w.store, SECRET, domains) == []
    # A, the owner, holds the settled record and sends nothing back either.
    _pull(w, A)
    row = local_row(w, A)
    assert (row["name"], row["phone"], row["status"]) == (A_ROW["name"], A_ROW["phone"], "normal")
    assert w.push(A).path is None


def test_item8_a_value_lost_by_rule_goes_back_only_as_a_decision_to_a_non_owner(a_registered, domains):
    """send_to: C's later address loses to the office's by lww on A's record; C is not told the office's."""
    w = a_registered
    _duplicate(w, domains)
    _keep_a(w, domains)
    _pull(w, C)
    before = len(decrypted(w, C))
    w.sql(C, "UPDATE persons SET address = '东莞市丙社区新址' WHERE id_number = ?", (id_number(7),))
    w.push(C)  # on its way when the office sets the address
    w.office_sets(7, address="东莞市办事处定址")
    summary = merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    shown = json.dumps(decrypted(w, C), ensure_ascii=False)
    assert "东莞市办事处定址" not in shown and not any(s in shown for s in A_SECRETS)
    new = decrypted(w, C)[before:]
    if summary.rejected or summary.set_aside:
        # C's edit of its own copy of A's record is kept aside (C does not hold the record): nothing is
        # lost, and C, told at the settlement that its address was superseded, is sent nothing more.
        assert new == []
    else:
        assert new and all(c["cells"] == {} and c["superseded"] == ["address"] for c in new)


def test_item8_a_record_moved_away_tells_the_former_owner_only_the_decision(a_registered, domains):
    """A record A owned goes to B with a new address: A learns it is B's, not B's address."""
    w = a_registered
    summary = w.office_sets(7, community_code=B, address="东莞市乙社区新址")
    assert set(summary.sent_back) == {A, B}
    (to_a,) = decrypted(w, A)
    assert to_a["cells"] == {"community_code": B} and to_a["superseded"] == ["address"] and to_a["owner"] == B
    (to_b,) = decrypted(w, B)
    assert to_b["cells"] == {"community_code": B, "address": "东莞市乙社区新址"}
    report = _pull(w, A)
    assert local_row(w, A)["community_code"] == B and local_row(w, A)["address"] == A_ROW["address"]
    assert report.superseded and w.push(A).path is None
