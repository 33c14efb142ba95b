"""Second read of "a community's batch looks up the versions set aside only in the side tables that
held any record of its table before the bundle's first batch of it" (issue 14): a record whose
versions the bundle itself sets aside, touched again in a later batch of the same bundle, must still
be merged with its versions kept aside, in whatever order the bundles arrive."""

import sqlite3

import pytest

from conftest import CODES, SECRET, id_number, person, snapshot
from syncdb import bundle, merge, office


def kept_aside(store) -> tuple[list, list]:
    conn = sqlite3.connect(store / "store.db")
    try:
        return (conn.execute("SELECT tbl, col, version, origin, deleted FROM frontier ORDER BY 1, 2, 3").fetchall(),
                conn.execute("SELECT tbl, col, version FROM dominated ORDER BY 1, 2, 3").fetchall())
    finally:
        conn.close()


@pytest.mark.parametrize("batch", [1, 500])
def test_a_record_set_aside_by_a_bundles_first_batch_is_merged_as_such_in_its_next(world, domains, monkeypatch,
                                                                                  batch):
    """The office corrects a resident's phone while the community, not having heard of it, changes
    it twice in one bundle. Where the office's version arrives first, the bundle's first change
    keeps both versions aside (the store held none for the table, so its batches look nothing up);
    its second change, in the next batch with a batch of one, must still see them: the store is
    the one the other order gives."""
    w = world
    a = CODES[0]
    w.freeze_empty_store()
    w.insert(a, person(7, a))
    w.push(a)
    w.office_edit(7, "0769-22000007")
    first, correction = w.bundles
    (insert,) = bundle.iter_path(first, office.load_keyring(w.store, SECRET))
    ms = int(insert["hlc"].split(".")[0])
    second, third = (f"{ms + n:015d}.000000.{a}" for n in (1, 2))
    key = {"id_number": id_number(7)}
    edits = w.signed_bundle(a, [
        {"table": "huji.persons", "op": "update", "key": key, "cells": {"phone": "13900000701"},
         "base": {"phone": insert["hlc"]}, "hlc": second},
        {"table": "huji.persons", "op": "update", "key": key, "cells": {"phone": "13900000702"},
         "base": {"phone": second}, "hlc": third},
    ], sequence=2)
    monkeypatch.setattr(merge._Merger, "BATCH", batch)
    assert kept_aside(w.merge_in_order([first, correction], "before")) == ([], [])  # nothing aside yet
    results = []
    for i, order in enumerate([(first, correction, edits), (first, edits, correction)]):
        store = w.merge_in_order(order, f"order-{i}")
        results.append((snapshot(store, domains), kept_aside(store)))
    frontier, dominated = results[0][1]
    assert {origin for *_, origin, _deleted in frontier} == {a, "office"} and dominated
    assert results[0] == results[1]
