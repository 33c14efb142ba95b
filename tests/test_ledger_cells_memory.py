"""What a refresh holds while it reads which cells moved: about what it held when it read which records.

``Store.cells_changed_since`` keeps, per changed record, the columns the ledger says moved. A night
that moves one column of every record (contribution bases raised for everyone) names the same few
columns again and again: one set per record made each record cost 3.5 times what its key alone
does (about 317 bytes against 91 in CPython), 580 MB more at the top of a refresh after such a
night of 1.84 million records, where publish's memory is meant to stay near its start-up figure.
The sets are shared now: a record costs its key and a reference.
"""

import tracemalloc

from stdnum.cn import ric

from conftest import CODES, SECRET, World
from syncdb import merge
from syncdb.hlc import Stamp, now_ms
from syncdb.store import open_store
from test_i14_refresh_second_read import _signed

RECORDS = 3000


def _id(n: int) -> str:
    body = f"110105{19600101 + (n // 900) * 10000}{n % 900 + 100:03d}"
    return body + ric.calc_check_digit(body + "0")


def test_reading_the_cells_a_night_moved_holds_little_more_than_reading_its_records(tmp_path, domains):
    world = World(tmp_path, domains, codes=CODES[:1], community_domains=("huji", "shebao"))
    code, clock = CODES[0], now_ms() - 3_600_000
    keys = [{"id_number": _id(n), "insurance_type": "110"} for n in range(RECORDS)]
    inserts = [{"table": "shebao.enrolments", "op": "insert", "key": key, "base": {},
                "hlc": str(Stamp(clock, n, code)),
                "cells": {"status": "1", "start_date": "2024-01-01", "community_code": code, "monthly_base": 5000.0}}
               for n, key in enumerate(keys)]
    assert not merge.merge(world.store, [_signed(world, code, 1, inserts, "shebao")], SECRET, domains).rejected
    with open_store(world.store, SECRET, domains) as store:
        point = store.change_point()
    raised = [{"table": "shebao.enrolments", "op": "update", "key": key, "cells": {"monthly_base": 5200.0},
               "base": {"monthly_base": change["hlc"]}, "hlc": str(Stamp(clock + 1000, n, code))}
              for n, (key, change) in enumerate(zip(keys, inserts))]
    done = merge.merge(world.store, [_signed(world, code, 2, raised, "shebao")], SECRET, domains)
    assert not done.rejected and not done.opened
    with open_store(world.store, SECRET, domains) as store:
        held = {}
        for name, read in (("records", store.changed_since), ("cells", store.cells_changed_since)):
            tracemalloc.start()
            found = read(point)
            held[name] = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            assert len(found["shebao.enrolments"]) == RECORDS
            del found
    assert held["cells"] <= 1.3 * held["records"], held
