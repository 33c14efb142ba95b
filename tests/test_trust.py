"""The store's trust model (docs/merge.md): a bundle's signer is the origin of its changes,
and a community changes only the records it holds (issue #8, items 1 and 4).

Each attack is a bundle signed with community C's own key, as a thief of that key could
make it; the office must hold every record A owns exactly as before, queue what a person
must decide, and refuse the same things in any arrival order.
"""

import itertools

from conftest import CODES, SECRET, World, id_number, open_conflicts, person, snapshot
from syncdb import audit, merge, migrations
from syncdb.hlc import Stamp

A, B, C = CODES
PERSONS = "huji.persons"


def stamp(ms: int, node: str) -> str:
    return str(Stamp(ms, 0, node))


def a_holds(tmp_path, domains, *numbers):
    """An office where community A has registered residents ``numbers`` (and C has pushed once)."""
    w = World(tmp_path, domains)
    w.register(A, *(person(n, A, phone=f"1380000{n:04d}") for n in numbers))
    return w


def records(w, domains):
    rows, _ = snapshot(w.store, domains)
    return {dict(cells)["id_number"]: (exists, dict(cells)) for exists, cells in rows.values()}


def a_versions(w, domains, n):
    """The versions A's resident ``n`` has at the office, as a thief could guess or learn them."""
    st = migrations.open_upgraded(w.store, SECRET, domains)
    try:
        table = st.table(PERSONS)
        key = st.blind_key(table, [id_number(n)])
        (packed,) = st.conn.execute("SELECT _versions FROM huji__persons WHERE _key = ?", (key,)).fetchone()
        from syncdb.hlc import unpack_row_versions
        return unpack_row_versions(packed, table.non_key)
    finally:
        st.conn.close()


def attack(w, changes, sequence=1):
    return merge.merge(w.store, [w.signed_bundle(C, changes, sequence)], SECRET, w.all_domains)


def change(op, n, cells=None, base=None, hlc=None, node=C):
    return {"table": PERSONS, "op": op, "key": {"id_number": id_number(n)}, "cells": cells or {},
            "base": base or {}, "hlc": hlc or stamp(2_000_000_000_000 + n, node)}


def test_item1_a_community_cannot_move_anothers_resident_into_itself(tmp_path, domains):
    w = a_holds(tmp_path, domains, 1)
    before = records(w, domains)
    versions = a_versions(w, domains, 1)
    summary = attack(w, [change("update", 1, {"community_code": C, "address": "别处1号"},
                                base={"community_code": versions["community_code"], "address": versions["address"]})])
    assert records(w, domains) == before
    assert summary.changes == 0 and open_conflicts(w.store) == []
    (line,) = summary.rejected
    assert line.startswith(f"{C} / {PERSONS} / ") and f"changes community {A}'s version" in line
    assert id_number(1) not in line  # masked


def test_item1_re_registering_anothers_resident_never_overwrites_and_queues_the_name(tmp_path, domains):
    w = a_holds(tmp_path, domains, 2)
    before = records(w, domains)
    row = person(2, C, name="冒名", phone="13999999999", address="别处2号")
    row.pop("id_number")
    summary = attack(w, [change("insert", 2, row)])
    after = records(w, domains)
    assert after == before  # A's name, phone, address and community code all stand
    queued = {(c["kind"], c["column"]) for c in _conflicts(w)}
    # A person decides: the duplicate registration, and the manual name the two disagree on.
    assert queued == {("duplicate-registration", "status"), ("duplicate-registration", "name")}
    assert summary.rejected == []


def _conflicts(w):
    from syncdb.conflicts import list_conflicts
    return list_conflicts(w.store, SECRET, w.all_domains)


def test_item1_a_community_cannot_file_a_new_record_under_anothers_code(tmp_path, domains):
    w = a_holds(tmp_path, domains, 3)
    row = person(4, A)
    row.pop("id_number")
    summary = attack(w, [change("insert", 4, row)])
    assert id_number(4) not in records(w, domains)
    (line,) = summary.rejected
    assert "/ community_code / " in line and f"under community {A}" in line


def test_item1_deletes_stamped_as_another_community_are_refused(tmp_path, domains):
    w = a_holds(tmp_path, domains, 5, 6, 7)
    before = records(w, domains)
    summary = attack(w, [change("delete", n, base=a_versions(w, domains, n), node=A) for n in (5, 6, 7)])
    assert records(w, domains) == before
    assert len(summary.rejected) == 3 and all(f"stamped as community {A}" in line for line in summary.rejected)


def test_item1_deletes_stamped_as_the_thief_open_nothing_and_delete_nothing(tmp_path, domains):
    w = a_holds(tmp_path, domains, 8, 9)
    before = records(w, domains)
    fake = stamp(1_000_000_000_000, C)  # a version of C's own that never was
    summary = attack(w, [change("delete", 8), change("delete", 9, base={"name": fake})])
    assert records(w, domains) == before
    assert open_conflicts(w.store) == []
    # No base at all: refused. A made-up base of its own: C's own copy, kept aside, shown nowhere.
    (no_base,) = summary.rejected
    assert "without naming the version" in no_base
    assert len(summary.set_aside) == 1 and f"held by {A}" in summary.set_aside[0]


def test_item1_a_transfer_still_moves_the_resident_with_no_conflict(tmp_path, domains):
    """The rule that alone may move ownership: A marks the resident moved out, B registers them."""
    w = a_holds(tmp_path, domains, 10)
    w.sql(A, "UPDATE persons SET status = 'moved_out'")
    w.push(A)
    w.register(B, person(10, B, phone="13912345678"))
    merge.merge(w.store, w.bundles, SECRET, domains)
    (exists, cells) = records(w, domains)[id_number(10)]
    assert cells["community_code"] == B and cells["phone"] == "13912345678" and cells["status"] == "normal"
    assert open_conflicts(w.store) == []
    # A tidies its own copy away: B's record stays, and nobody is asked about it.
    w.sql(A, "DELETE FROM persons WHERE id_number = ?", (id_number(10),))
    w.push(A)
    summary = merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    assert summary.rejected == [] and open_conflicts(w.store) == []
    assert records(w, domains)[id_number(10)] == (exists, cells)


def test_item1_refusals_and_store_are_the_same_in_any_arrival_order(world, domains):
    w = world
    w.freeze_empty_store()
    w.insert(A, person(11, A))
    w.insert(A, person(12, A))
    w.push(A)
    w.insert(B, person(13, B))
    w.push(B)
    w.sql(A, "UPDATE persons SET phone = '13700000011' WHERE id_number = ?", (id_number(11),))
    w.push(A)
    row = person(12, C, name="冒名")
    row.pop("id_number")
    hostile = w.signed_bundle(C, [
        change("insert", 12, row),
        change("update", 13, {"community_code": C}, base={"name": stamp(1, C)}),
        change("delete", 11, base={"phone": stamp(2, B)}),
        change("delete", 11, node=A),
    ])
    bundles = [*w.bundles, hostile]
    results = []
    for i, order in enumerate(itertools.permutations(range(len(bundles)))):
        if i % 5:
            continue  # 24 orders, every fifth: enough to put the hostile bundle in every place
        store = w.merge_in_order([bundles[j] for j in order], f"o{i}")
        st = migrations.open_upgraded(store, SECRET, domains)
        refused = sorted(st.conn.execute("SELECT origin, shown_key, field, why FROM rejected").fetchall())
        assert audit.verify(st) > 0
        st.conn.close()
        results.append((snapshot(store, domains), refused))
    for r in results[1:]:
        assert r[1] == results[0][1]
        assert r[0][1] == results[0][0][1]
        assert r[0][0] == results[0][0][0]
    assert len(results[0][1]) == 3


def test_item4_many_updates_of_one_cell_keep_one_version_per_community(world, domains):
    """n updates of one cell with no base used to pile up as n concurrent versions, each later
    change paying for all of them (quadratic). A community's versions are ordered: one stays."""
    w = world
    row = person(14, C)
    row.pop("id_number")
    changes = [change("insert", 14, row, hlc=stamp(2_000_000_000_000, C))]
    changes += [change("update", 14, {"phone": f"139{i:08d}"}, base={"name": stamp(1_000_000_000_000 + i, C)},
                       hlc=stamp(2_000_000_000_001 + i, C)) for i in range(2000)]
    summary = attack(w, changes)
    assert summary.changes == 2001 and summary.rejected == []
    st = migrations.open_upgraded(w.store, SECRET, domains)
    try:
        (frontier,) = st.conn.execute("SELECT count(*) FROM frontier").fetchone()
        assert frontier == 0
    finally:
        st.conn.close()
    assert records(w, domains)[id_number(14)][1]["phone"] == "13900001999"


def test_item4_a_bundle_stamped_before_the_communitys_last_is_refused(world, domains):
    """A community's stamps only move forward, so its versions of a cell arrive in order and
    supersession is the same in any arrival order."""
    w = world
    row = person(15, C)
    row.pop("id_number")
    attack(w, [change("insert", 15, dict(row), hlc=stamp(2_000_000_000_000, C))])
    other = person(16, C)
    other.pop("id_number")
    summary = attack(w, [change("insert", 16, other, hlc=stamp(1_999_999_999_999, C))], sequence=2)
    (line,) = summary.rejected
    assert "not later than" in line and id_number(16) not in records(w, domains)


def test_item7_an_oversized_value_rejects_its_record_and_the_rest_applies(world, domains):
    w = world
    big, fine = person(17, C, name="名" * 40_000), person(18, C)  # 120 KB: over the value cap, within a line
    changes = []
    for n, row in ((17, big), (18, fine)):
        row.pop("id_number")
        changes.append(change("insert", n, row))
    summary = attack(w, changes)
    held = records(w, domains)
    assert id_number(17) not in held and id_number(18) in held
    (line,) = summary.rejected
    assert "/ name /" in line and "名名名" not in line


def test_item7_a_value_too_long_for_a_line_refuses_the_bundle_and_stores_nothing(world, domains):
    w = world
    row = person(19, C, address="址" * 2_000_000)  # a 6 MB address
    row.pop("id_number")
    summary = attack(w, [change("insert", 19, row)])
    assert summary.applied == 0 and summary.changes == 0
    assert records(w, domains) == {}
    assert summary.held or summary.refused


def rekey(w, code, old_n, new_id, sequence, ms):
    versions = a_versions(w, w.all_domains, old_n)
    row = person(old_n, code)
    row.pop("id_number")
    return merge.merge(w.store, [w.signed_bundle(code, [{
        "table": PERSONS, "op": "rekey", "key": {"id_number": id_number(old_n)}, "new_key": {"id_number": new_id},
        "cells": row, "base": versions, "hlc": stamp(ms, code)}], sequence)], SECRET, w.all_domains)


def test_a_key_correction_moves_the_record_whole_or_not_at_all(tmp_path, domains):
    """Issue #9 item 3, at the office: a rekey is the old record's delete and the new one's insert,
    applied together; with an invalid new key (or from a community that does not hold it) neither."""
    w = a_holds(tmp_path, domains, 20, 21)
    summary = rekey(w, C, 20, id_number(30), 1, 2_000_000_000_000)  # not C's resident
    assert summary.changes == 0 and "changes only records it holds" in summary.rejected[0]  # A's versions
    bad = id_number(31)[:-1] + ("0" if id_number(31)[-1] != "0" else "1")  # a wrong check digit
    summary = rekey(w, A, 20, bad, 2, 2_000_000_000_001)
    assert summary.changes == 0 and len(summary.rejected) >= 1
    assert bad not in " ".join(summary.rejected)  # the new key is masked too
    assert records(w, domains)[id_number(20)][0] == 1
    summary = rekey(w, A, 20, id_number(32), 3, 2_000_000_000_002)
    assert summary.rejected == [] and summary.changes == 2
    held = records(w, domains)
    assert held[id_number(20)][0] == 0 and held[id_number(32)][0] == 1
    assert held[id_number(32)][1]["name"] == "居民20" and held[id_number(32)][1]["community_code"] == A


def test_a_stolen_keys_stamps_from_the_future_are_cleared_by_a_new_key(world, tmp_path, domains):
    """One far-future stamp would hold every later bundle of that community out; the remedy for a
    stolen key, enrolling the community's new key, clears it."""
    from syncdb import office
    from syncdb.crypto import Keyring, PublicKey

    w = world
    row = person(40, C)
    row.pop("id_number")
    attack(w, [change("insert", 40, row, hlc=stamp(99_999_999_999_999, C))])
    honest = person(41, C)
    honest.pop("id_number")
    held_out = attack(w, [change("insert", 41, dict(honest))], sequence=2)
    assert "not later than" in held_out.rejected[0] and "enrol it again" in held_out.rejected[0]
    fresh = Keyring.generate("community", C, PublicKey.read(w.store / "office.pub.json").suite)
    (tmp_path / "new.pub.json").write_text(fresh.public.to_json())
    office.enroll(w.store, C, tmp_path / "new.pub.json")
    path = tmp_path / "again.bundle"
    from syncdb import bundle
    bundle.write(path, {"origin": C, "sequence": 3, "schemas": {
        "huji": {"version": 1, "fingerprint": w.domains["huji"].fingerprint}}},
        [change("insert", 41, honest)], fresh, PublicKey.read(w.store / "office.pub.json"))
    summary = merge.merge(w.store, [path], SECRET, domains)
    assert summary.rejected == [] and id_number(41) in records(w, domains)


def test_a_guessed_office_version_named_as_base_takes_nothing_from_the_office(tmp_path, domains):
    """A base naming an office version the store does not hold (made up, or guessed ahead) is never
    recorded as superseded, so the office's next edit of that cell still applies."""
    from syncdb.hlc import now_ms

    w = a_holds(tmp_path, domains, 50)
    st = migrations.open_upgraded(w.store, SECRET, domains)
    office_code = st.office_code
    st.conn.close()
    soon = now_ms() + 23 * 3600 * 1000
    row = person(50, C, phone="13800000050")
    row.pop("id_number")
    attack(w, [change("insert", 50, row, hlc=stamp(soon, C))])
    guesses = [change("update", 50, {"phone": "13800000050"}, hlc=str(Stamp(soon, 1 + i, C)),
                      base={"phone": str(Stamp(soon, i, office_code)), "community_code": stamp(soon, C)})
               for i in range(5)]
    attack(w, guesses, sequence=2)
    w.office_sets(50, phone="13911112222")
    assert records(w, domains)[id_number(50)][1]["phone"] == "13911112222"


def test_a_version_kept_aside_is_kept_whatever_the_order(world, domains):
    """C's copy of A's resident, built on the office's phone, is kept aside; when A lets the
    resident go and C holds them, C's phone shows, in either arrival order."""
    w = world
    w.freeze_empty_store()
    w.insert(A, person(1, A, phone="13800000001"))
    w.push(A)
    w.office_edit(1, "13800000002")
    office_phone = a_versions(w, domains, 1)["phone"]
    reg = person(1, C, phone="13900000001")
    reg.pop("id_number")
    t = 1_900_000_000_000
    c1 = w.signed_bundle(C, [change("insert", 1, reg, hlc=stamp(t, C))], 1)
    c2 = w.signed_bundle(C, [change("update", 1, {"phone": "13900000002"}, hlc=str(Stamp(t, 1, C)),
                                    base={"phone": office_phone, "community_code": stamp(t, C)})], 2)
    w.sql(A, "UPDATE persons SET phone = '13800000003' WHERE id_number = ?", (id_number(1),))
    w.push(A)
    w.sql(A, "UPDATE persons SET status = 'moved_out' WHERE id_number = ?", (id_number(1),))
    w.push(A)
    a1, o, a2, a3 = w.bundles
    results = []
    for i, order in enumerate(([a1, o, c1, c2, a2, a3], [a1, o, a2, c1, c2, a3], [c1, c2, a1, o, a2, a3])):
        rows, conflicts = snapshot(w.merge_in_order(order, f"o{i}"), domains)
        results.append((rows, conflicts))
    assert all(r == results[0] for r in results)
    (record,) = [dict(cells) for _, cells in results[0][0].values()]
    assert record["community_code"] == C and record["phone"] == "13900000002"


def test_rejections_of_one_bundle_are_bounded(world, domains):
    """A small bundle of many records with long bad values: each reason is cut short and only
    the first records are listed one by one, the rest counted."""
    w = world
    changes = []
    for n in range(1_100):
        row = person(n % 90 + 1, C, ethnicity="9" * 60_000)
        changes.append(change("insert", n % 90 + 1, {k: v for k, v in row.items() if k != "id_number"},
                              hlc=stamp(2_000_000_000_000 + n, C)))
    summary = attack(w, changes)
    assert len(summary.rejected) == merge.MAX_REJECTED + 1
    assert "100 more record(s) rejected" in summary.rejected[-1]
    assert max(len(line) for line in summary.rejected) < merge.MAX_WHY + 200


def test_a_registration_built_on_the_offices_versions_does_not_take_the_record(tmp_path, domains):
    """Found by bench/fuzz.py: after the office settled A's resident for A, C registered them again
    naming the office's versions as bases. Only a community holding a record may build on the
    office's versions of it; C's copy stays aside and A keeps the record."""
    from syncdb import resolve
    from syncdb.conflicts import list_conflicts

    w = a_holds(tmp_path, domains, 60)
    row = person(60, C, name="冒名")
    row.pop("id_number")
    attack(w, [change("insert", 60, dict(row))])
    for item in list_conflicts(w.store, SECRET, domains):
        if item["kind"] == "duplicate-registration" and item["column"] == "status":
            resolve.resolve_conflict(w.store, SECRET, domains, item["id"], keep=A)
    before = records(w, domains)
    attack(w, [change("insert", 60, dict(row), base=a_versions(w, domains, 60),
                      hlc=stamp(2_100_000_000_000, C))], sequence=2)
    assert records(w, domains) == before


def test_a_delete_of_no_valid_key_is_rejected(world, domains):
    """Found by bench/fuzz.py: a delete whose key is not a valid ID number left a row behind."""
    w = world
    summary = attack(w, [{"table": PERSONS, "op": "delete", "key": {"id_number": None}, "cells": {},
                          "base": {"name": stamp(1, C)}, "hlc": stamp(2_000_000_000_000, C)}])
    assert len(summary.rejected) == 1 and records(w, domains) == {}


def test_a_change_whose_key_is_not_the_tables_is_refused(world, domains):
    """Found by bench/fuzz.py: an update keyed by a column that is not the key left a row keyed by nothing."""
    w = world
    row = person(70, C)
    row.pop("id_number")
    first = stamp(2_000_000_000_000, C)
    summary = attack(w, [change("insert", 70, row, hlc=first),
                         {"table": PERSONS, "op": "update", "key": {"nope": id_number(70)},
                          "cells": {"phone": "13400003005"}, "base": {"phone": first},
                          "hlc": stamp(2_000_000_000_001, C)}])
    assert len(summary.rejected) == 1 and "not the table's key" in summary.rejected[0]
    assert list(records(w, domains)) == [id_number(70)]


def test_a_rival_registration_cannot_build_on_the_offices_versions(tmp_path, domains):
    """Found by bench/fuzz.py: C, holding a rival claim in an open duplicate registration, named the
    office's versions of A's settled record as bases; only the holder may build on them."""
    from syncdb import resolve
    from syncdb.conflicts import list_conflicts

    w = a_holds(tmp_path, domains, 80)
    row = person(80, C, name="冒名")
    row.pop("id_number")
    attack(w, [change("insert", 80, dict(row))])
    for item in list_conflicts(w.store, SECRET, domains):
        if item["kind"] == "duplicate-registration" and item["column"] == "status":
            resolve.resolve_conflict(w.store, SECRET, domains, item["id"], keep=A)
    office_versions = a_versions(w, domains, 80)
    attack(w, [change("insert", 80, dict(row), hlc=stamp(2_100_000_000_000, C))], sequence=2)  # a rival again
    before = records(w, domains)
    attack(w, [change("insert", 80, dict(row), base=office_versions, hlc=stamp(2_100_000_000_001, C))],
           sequence=3)
    assert records(w, domains) == before and records(w, domains)[id_number(80)][1]["community_code"] == A
