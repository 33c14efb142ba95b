"""`syncdb keys rotate` re-seals the checks' cases (issue 13): after a rotation the findings, the
dismissal reasons and the subjects each record bore on open with the new data key alone, so the old
one can be retired."""

from __future__ import annotations

import dataclasses
import sqlite3

from syncdb import cases, checks, keys, office
from syncdb.store import open_store
from test_checks import CODES, Street


def test_after_rotation_the_cases_open_with_the_new_data_key_only(tmp_path, domains):
    (tmp_path / "keyfile").write_bytes(b"r" * 32)
    street = Street(tmp_path, domains, tmp_path / "keyfile", codes=CODES[:1], residents=300)
    before = street.cases()
    assert before, "the sample street should show some cases"
    with street.opened(write=True) as st:
        cases.decide(st, before[0]["id"], "dismissed", by="王芳", reason="核实无误，已追回")
        assert cases.data_keys_used(st) == {1}
    every = street.cases(states=tuple(cases.STATES))

    counts = keys.rotate(street.store, street.secret, domains)

    assert counts["cases"] == len(every)
    ring = office.load_keyring(street.store, street.secret)
    assert ring.data_key_id == "2"
    # The old data key retired: a keyring holding only the new one opens every case, reason and all.
    retired = dataclasses.replace(ring, data_keys={"2": ring.data_keys["2"]})
    with open_store(street.store, retired, domains) as st:
        assert cases.data_keys_used(st) == {2}
        after = checks.list_cases(st, states=tuple(cases.STATES), masked=False)
        shown = checks.show_case(st, before[0]["id"], masked=False)
        # The subjects each record bore on that are kept sealed (tests/test_checks_bearings.py makes some)
        # count in data_keys_used above: none is left under the old key.
    assert after == every
    assert shown["reason"] == "核实无误，已追回" and shown["state"] == "dismissed"
    conn = sqlite3.connect(street.store / "store.db")
    try:
        assert {bytes(f)[1] for (f,) in conn.execute("SELECT finding FROM cases")} == {2}
    finally:
        conn.close()
    # Nothing is left under the old key to finish, and the checks still work on the re-sealed cases.
    assert keys.rotate(street.store, street.secret, domains, resume_only=True)["cases"] == 0
    with street.opened(write=True) as st:
        report = checks.run(st, everything=True)
    assert all(t.opened == t.reopened == t.fixed == 0 for t in report.tallies.values())
