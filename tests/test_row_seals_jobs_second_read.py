"""merge --jobs on a store whose row seals list their columns in another order than the schema file
(a column made sensitive after the table was made is sealed last): the worker processes seal new
records under the store's list, so every record opens and holds what was sent."""

from __future__ import annotations

import sqlite3

from conftest import CODES, SECRET, World
from mutants import id_number, resident
from syncdb import merge
from syncdb.store import open_store, read_sealed_columns
from test_row_seals import schemas_where

NATIVE_PLACE = 'native_place   = { type = "text", label = "籍贯", validator = "division_code" }'


def test_workers_seal_new_records_under_the_stores_list_of_sealed_columns(tmp_path):
    edited = schemas_where(tmp_path, (NATIVE_PLACE, NATIVE_PLACE.replace(" }", ", sensitive = true }")))
    persons = edited["huji"].tables["persons"]
    assert persons.sensitive_columns[-1] != "native_place"  # in the middle of the schema file
    world = World(tmp_path / "street", edited)  # the store made under the shipped schemas first
    rows = [resident(n, CODES[0], native_place="441900") for n in range(1200)]  # more than a worker's minimum
    conn = sqlite3.connect(world.folders[CODES[0]] / "huji.db")
    with conn:
        conn.executemany(f"INSERT INTO persons ({', '.join(rows[0])}) VALUES ({', '.join('?' * len(rows[0]))})",
                         [list(r.values()) for r in rows])
    conn.close()
    world.push(CODES[0])
    summary = merge.merge(world.store, world.bundles, SECRET, edited, jobs=2)
    assert summary.applied == 1 and not summary.rejected
    with open_store(world.store, SECRET, edited) as st:
        assert read_sealed_columns(st.conn)["huji.persons"][-1] == "native_place"
        for n in (0, 599, 1199):
            row = st.read_row(persons, st.seals.blind_key(persons, [id_number(n)]))
            assert row["native_place"] == "441900" and row["name"] == f"居民{n}" and row["address"] == rows[n]["address"]
