"""Second read of the merge's compiled validators (issue 14, item 2): a verdict remembered per value."""

from conftest import CODES, SECRET, person
from syncdb import merge


def _insert(row: dict, n: int, code: str) -> dict:
    row = dict(row)
    return {"table": "huji.persons", "op": "insert", "key": {"id_number": row.pop("id_number")}, "cells": row,
            "base": {}, "hlc": f"005000000000{n:03d}.000000.{code}"}


def test_a_value_is_judged_as_itself_not_as_an_equal_one_seen_before(world):
    """-0.0 and 0.0 are equal dictionary keys: the validators' memory of a verdict must not give
    the record holding 0.0 the message written for -0.0 (nor make it depend on --jobs)."""
    a = CODES[0]
    changes = [_insert(person(n, a, move_in_date=value), n, a) for n, value in enumerate([-0.0, 0.0])]
    path = world.signed_bundle(a, changes)
    summary = merge.merge(world.store, [path], SECRET, world.all_domains, jobs=1)
    assert summary.applied == 1 and len(summary.rejected) == 2
    first, second = summary.rejected
    assert "got '-0.0'" in first
    assert "got '0.0'" in second, second
