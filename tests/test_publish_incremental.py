"""Publishing refreshes in place (issue 14): only what changed since the last refresh is decrypted again.

The library tests build the published databases on private in-memory connections and compare
a refreshed pair with a pair built whole from the same store; the site tests run `syncdb publish`
on 127.0.0.1 and read it over HTTP while merges land.
"""

import sqlite3
import sys
import threading
import time

import pytest
from conftest import CODES, id_number, person
from syncdb import merge, projection
from syncdb.projection import MASKED_DB, PLAIN_DB, Published
from syncdb.store import open_store

PERSONS = "户籍_人员"


def _databases():
    return [sqlite3.connect(":memory:", isolation_level=None) for _ in range(2)]


def _contents(conn) -> dict[str, list]:
    """Every published table's rows, rowids left out, in a stable order."""
    tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {name: sorted((tuple(row) for row in conn.execute(f"SELECT * FROM [{name}]")), key=repr)
            for name in tables}


def _rows(conn, table=PERSONS) -> dict[int, tuple]:
    return {row[0]: tuple(row[1:]) for row in conn.execute(f"SELECT rowid, * FROM [{table}]")}


def _published(world) -> Published:
    published = Published(*_databases())
    with open_store(world.store, world.secret, world.all_domains) as store:
        published.update(store)
    return published


def _refreshed(world, published: Published) -> int:
    with open_store(world.store, world.secret, world.all_domains) as store:
        return published.update(store)


def _built_whole(world) -> tuple[dict, dict]:
    masked, plain = _databases()
    with open_store(world.store, world.secret, world.all_domains) as store:
        projection.fill(store, masked, plain)
    return _contents(masked), _contents(plain)


def _merge_last(world):
    return merge.merge(world.store, world.bundles[-1:], world.secret, world.all_domains)


@pytest.fixture
def street(world):
    """Three communities with ten residents each, merged and published."""
    for c, code in enumerate(CODES):
        world.register(code, *(person(10 * c + n, code, phone=f"1380000{10 * c + n:04d}") for n in range(10)))
    return world


def test_a_refresh_after_a_merge_shows_new_changed_and_deleted_records_and_nothing_else(street):
    world = street
    published = _published(world)
    assert published.decrypted == 30
    before_masked, before_plain = _rows(published.masked), _rows(published.plain)
    world.insert(CODES[0], person(40, CODES[0], phone="13900000040"))
    world.sql(CODES[0], "UPDATE persons SET name = '新名字', phone = '13911112222' WHERE id_number = ?",
              (id_number(1),))
    world.sql(CODES[0], "DELETE FROM persons WHERE id_number = ?", (id_number(2),))
    world.push(CODES[0], confirm_deletes=True)
    _merge_last(world)

    assert _refreshed(world, published) == 2  # the new and the changed record; the deleted one is not decrypted
    masked, plain = _rows(published.masked), _rows(published.plain)
    assert (_contents(published.masked), _contents(published.plain)) == _built_whole(world)
    # The 28 records nobody touched keep their rows, rowids and values, in both databases.
    untouched = {r for r, row in before_plain.items() if row[0] not in (id_number(1), id_number(2))}
    assert len(untouched) == 28 and all(plain[r] == before_plain[r] and masked[r] == before_masked[r]
                                        for r in untouched)
    shown = {row[0]: row for row in plain.values()}
    assert id_number(2) not in shown and shown[id_number(40)][1] == "居民40"
    assert shown[id_number(1)][1] == "新名字"
    hidden = {row[-1]: row for row in masked.values()}  # by the person token
    changed = hidden[shown[id_number(1)][-1]]
    assert changed[1] == "新*字" and changed[0] == id_number(1)[:6] + "********" + id_number(1)[-4:]
    assert changed[4] == "1980"  # the birth-date rule holds for a refreshed row
    assert len(masked) == len(plain) == 30


def test_a_refresh_with_nothing_changed_decrypts_nothing_and_a_later_one_only_the_night(street):
    world = street
    published = _published(world)
    assert _refreshed(world, published) == 0
    for n in range(3):  # three nights, each touching one record of each community
        for c, code in enumerate(CODES):
            world.sql(code, "UPDATE persons SET phone = ? WHERE id_number = ?", (f"1370000{n}{c:03d}", id_number(10 * c + n)))
            world.push(code)
        merge.merge(world.store, world.bundles[-3:], world.secret, world.all_domains)
        assert _refreshed(world, published) == 3
    assert (_contents(published.masked), _contents(published.plain)) == _built_whole(world)


def test_a_store_put_back_from_a_backup_is_built_whole(street, tmp_path):
    """The ledger cannot say what changed against a store that went back in its history."""
    import shutil

    world = street
    backup = tmp_path / "backup"
    shutil.copytree(world.store, backup)
    published = _published(world)
    world.register(CODES[1], person(50, CODES[1]))
    assert _refreshed(world, published) == 1
    shutil.rmtree(world.store)
    shutil.copytree(backup, world.store)
    assert _refreshed(world, published) == 30
    assert (_contents(published.masked), _contents(published.plain)) == _built_whole(world)


class _failing_second_write:
    """A published database whose second batch's write fails inside its transaction (as memory running
    out would); everything else goes to the database itself."""

    def __init__(self, conn):
        self.conn, self.writes = conn, 0

    def __getattr__(self, name):
        return getattr(self.conn, name)

    def executemany(self, sql, rows):
        if sql.startswith(("INSERT OR REPLACE", "UPDATE")):
            self.writes += 1
            if self.writes == 2:
                raise sqlite3.OperationalError("out of memory")
        return self.conn.executemany(sql, rows)


@pytest.mark.parametrize("failing, decrypted", [("masked", 30), ("plain", 3)])
def test_a_refresh_that_fails_half_way_leaves_no_transaction_open(street, monkeypatch, failing, decrypted):
    """A refresh stopped by a fault in its second batch's write (as memory running out would): the batch's
    transaction is rolled back and pages read what was committed. Stopped in the masked database's write,
    which comes after the plaintext one's, the batch is in one database and not the other: the next
    update builds everything (30 records). Stopped in the plaintext database's, nothing of the batch was
    committed anywhere: the next update refreshes again from the same point (3 records), rather than
    build everything, which holds the old tables and the new at once."""
    world = street
    published = _published(world)
    for n in range(3):
        world.sql(CODES[0], "UPDATE persons SET phone = ? WHERE id_number = ?", (f"1391111{n:04d}", id_number(n)))
    world.push(CODES[0])
    _merge_last(world)
    monkeypatch.setattr(projection, "BATCH", 1)
    conn = getattr(published, failing)
    setattr(published, failing, _failing_second_write(conn))
    with pytest.raises(sqlite3.OperationalError):
        _refreshed(world, published)
    setattr(published, failing, conn)
    assert not any(c.in_transaction for c in (published.masked, published.plain, published.rowids))
    assert _refreshed(world, published) == decrypted
    assert (_contents(published.masked), _contents(published.plain)) == _built_whole(world)


def test_a_code_table_and_the_facet_indexes_are_kept_through_a_refresh(street):
    world = street
    published = _published(world)
    world.register(CODES[2], person(60, CODES[2], sex="2", id_number=id_number(60, "2")))
    _refreshed(world, published)
    for conn in (published.masked, published.plain):
        plan = " ".join(str(r) for r in conn.execute(f"EXPLAIN QUERY PLAN SELECT [性别], count(*) FROM [{PERSONS}] "
                                                     "GROUP BY [性别]"))
        # Facet indexes in the masked database only: the plaintext one, which view-pii alone opens, counts
        # its facets as plain Datasette does, holding a fifth less.
        assert ("USING COVERING INDEX" in plan) == (conn is published.masked), plan
        household = " ".join(str(r) for r in conn.execute(f"EXPLAIN QUERY PLAN SELECT * FROM [{PERSONS}] "
                                                          "WHERE [户号] = '1'"))
        assert "USING INDEX" in household, household  # the household page's look-up, in both
        assert conn.execute(f"SELECT count(*) FROM [{PERSONS}] WHERE [性别] = '2'").fetchone() == (1,)
        fks = conn.execute(f"PRAGMA foreign_key_list([{PERSONS}])").fetchall()
        assert any(fk[2] == "代码_性别" for fk in fks)


# ---------------------------------------------------------------- the site


def _ids(community) -> list[str]:
    conn = sqlite3.connect(community.path / "huji.db")
    try:
        return [i for (i,) in conn.execute("SELECT id_number FROM persons ORDER BY rowid")]
    finally:
        conn.close()


def test_the_site_shows_a_refresh_and_pages_answer_while_it_runs(office_store, make_community, publisher,
                                                                  syncdb_secret, domains):
    """New, changed and deleted records over HTTP, masked and plain, and no page failing meanwhile."""
    a = make_community("441900003001")
    a.add_persons(40)
    merge.merge(office_store, [a.export().path], syncdb_secret, domains)
    first, second, *_ = _ids(a)
    site = publisher(office_store, "--refresh", "1")
    li, wang = site.sign_in("lilei"), site.sign_in("wangfang")

    def count(session, db):
        return session.get(f"{site.url}/{db}/{PERSONS}.json?_size=1").json()["filtered_table_rows_count"]

    def found(session, db, column, value):
        return session.get(f"{site.url}/{db}/{PERSONS}.json", params={"_shape": "array", column: value}).json()
    assert count(li, MASKED_DB) == 40
    statuses, stop = [], threading.Event()

    def read():
        # At least 20 pages whatever the machine's speed: a busy CI runner read only 19 during the refresh.
        while not stop.is_set() or len(statuses) < 20:
            statuses.append(li.get(f"{site.url}/{MASKED_DB}/{PERSONS}.json?_size=5&_facet=性别",
                                   timeout=10).status_code)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        conn = sqlite3.connect(a.path / "huji.db")
        with conn:
            conn.execute("UPDATE persons SET phone = '13999990001' WHERE id_number = ?", (first,))
            conn.execute("DELETE FROM persons WHERE id_number = ?", (second,))
        conn.close()
        a.add_persons(1200)
        merge.merge(office_store, [a.export(confirm_deletes=True).path], syncdb_secret, domains)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and count(li, MASKED_DB) != 40 - 1 + 1200:
            time.sleep(0.3)
    finally:
        stop.set()
        reader.join()
    assert len(statuses) >= 20 and [s for s in statuses if s != 200] == []
    assert count(li, MASKED_DB) == count(wang, PLAIN_DB) == 1239
    assert found(wang, PLAIN_DB, "公民身份号码", second) == []
    (changed,) = found(wang, PLAIN_DB, "公民身份号码", first)
    assert changed["联系电话"] == "13999990001"
    (hidden,) = found(li, MASKED_DB, "档案", changed["档案"])
    assert hidden["联系电话"] == "139****0001" and hidden["公民身份号码"] == first[:6] + "********" + first[-4:]
    assert "refreshed 1,201 changed records" in site.log() or "refreshed 1201 changed records" in site.log()


def test_a_build_over_the_last_gives_its_pages_back(street):
    """A whole build makes the new tables beside the old: once swapped in, the old ones' pages are given
    back (an in-memory database keeps its freed pages unless told), and a refresh leaves none free."""
    world = street
    databases = _databases()
    for conn in databases:
        projection.prepare_database(conn)
    published = Published(*databases)
    with open_store(world.store, world.secret, world.all_domains) as store:
        published.update(store)
        first = [conn.execute("PRAGMA page_count").fetchone()[0] for conn in databases]
        published.build(store)
    assert [conn.execute("PRAGMA page_count").fetchone()[0] for conn in databases] == first
    world.sql(CODES[0], "DELETE FROM persons WHERE id_number IN (?, ?)", (id_number(3), id_number(4)))
    world.push(CODES[0], confirm_deletes=True)
    _merge_last(world)
    assert _refreshed(world, published) == 0  # two records gone: nothing to decrypt
    assert [conn.execute("PRAGMA freelist_count").fetchone()[0] for conn in (*databases, published.rowids)] == [0] * 3
    assert (_contents(published.masked), _contents(published.plain)) == _built_whole(world)


def test_a_refresh_writes_only_the_cells_that_differ_in_value_or_type():
    """projection._writes: an unchanged row is not written; a changed one is updated in the cells that
    differ, a value of another type (1 and 1.0, 1 and True, '1' and 1) counting as different. The
    plaintext row says which cells differ, and the masked database is written the same cells, from
    the masked row, without being read."""
    plain = sqlite3.connect(":memory:", isolation_level=None)
    plain.execute("CREATE TABLE t (a, b, c)")
    plain.executemany("INSERT INTO t (rowid, a, b, c) VALUES (?, ?, ?, ?)",
                      [(1, "x", 1, None), (2, "y", 2, 2.5), (3, "z", 3, "3"), (4, "w", 4, 4)])
    masked = sqlite3.connect(":memory:", isolation_level=None)
    masked.execute("CREATE TABLE t (a, b, c)")
    masked.executemany("INSERT INTO t (rowid, a, b, c) VALUES (?, ?, ?, ?)",
                       [(1, "*", 1, None), (2, "*", 2, 2.5), (3, "*", 3, "3"), (4, "*", 4, 4)])

    class Layout:
        name, labels = "t", ["a", "b", "c"]

        def insert(self, target, verb):
            return f"{verb} INTO [{target}] (rowid, a, b, c) VALUES (?, ?, ?, ?)"

    rows = [["x", 1, None], ["y", 2.0, 2.5], ["Z", 3, 3], ["w", 4, 4], ["v", 5, 5]]
    hidden = [["*", *row[1:]] for row in rows]
    shown_writes, hidden_writes = projection._writes(plain, Layout(), [1, 2, 3, 4, 5], rows, hidden, fresh={5})
    assert sorted(shown_writes) == sorted([
        ("INSERT OR REPLACE INTO [t] (rowid, a, b, c) VALUES (?, ?, ?, ?)", [[5, "v", 5, 5]]),
        ("UPDATE [t] SET [b] = ? WHERE rowid = ?", [[2.0, 2]]),
        ("UPDATE [t] SET [a] = ?, [c] = ? WHERE rowid = ?", [["Z", 3, 3]]),
    ])
    assert sorted(hidden_writes) == sorted([
        ("INSERT OR REPLACE INTO [t] (rowid, a, b, c) VALUES (?, ?, ?, ?)", [[5, "*", 5, 5]]),
        ("UPDATE [t] SET [b] = ? WHERE rowid = ?", [[2.0, 2]]),
        ("UPDATE [t] SET [a] = ?, [c] = ? WHERE rowid = ?", [["*", 3, 3]]),
    ])
    for conn, writes in ((plain, shown_writes), (masked, hidden_writes)):
        for sql, values in writes:
            conn.executemany(sql, values)
    assert [tuple(r) for r in plain.execute("SELECT rowid, a, b, c FROM t ORDER BY rowid")] == \
        [(1, "x", 1, None), (2, "y", 2.0, 2.5), (3, "Z", 3, 3), (4, "w", 4, 4), (5, "v", 5, 5)]
    assert [tuple(r) for r in masked.execute("SELECT rowid, a, b, c FROM t ORDER BY rowid")] == \
        [(1, "*", 1, None), (2, "*", 2.0, 2.5), (3, "*", 3, 3), (4, "*", 4, 4), (5, "*", 5, 5)]
    assert [type(v) for (v,) in plain.execute("SELECT b FROM t WHERE rowid = 2")] == [float]
    assert projection._writes(plain, Layout(), [1], [["x", True, None]], [["*", True, None]], fresh=set()) == \
        ([("UPDATE [t] SET [b] = ? WHERE rowid = ?", [[True, 1]])], [("UPDATE [t] SET [b] = ? WHERE rowid = ?", [[True, 1]])])


def test_a_fill_hands_the_interpreter_lock_to_pages_sooner_and_puts_the_interval_back():
    from syncdb import datasette_plugin

    before = sys.getswitchinterval()
    with pytest.raises(RuntimeError):
        with datasette_plugin._pages_first():
            assert sys.getswitchinterval() == pytest.approx(datasette_plugin.FILL_SWITCH_SECONDS)
            raise RuntimeError("a fill that failed")
    assert sys.getswitchinterval() == before


def test_a_fill_rests_between_its_chunks_while_pages_are_served_and_only_then(street, monkeypatch):
    """While pages are served, a build and a refresh rest after each chunk or batch (as long as it took),
    so a page has the process alone half the time; with no page, never. The data is the same either way."""
    world, rests, serving = street, [], [True]
    monkeypatch.setattr(projection, "CHUNK", 4)
    monkeypatch.setattr(projection, "BATCH", 4)
    monkeypatch.setattr(projection.time, "sleep", rests.append)
    published = Published(*_databases(), serving=lambda: serving[0])
    with open_store(world.store, world.secret, world.all_domains) as store:
        assert published.update(store) == 30
    assert len(rests) == 8 and all(rest > 0 for rest in rests)  # 30 persons: 8 chunks of 4
    rests.clear()
    for n in range(6):
        world.sql(CODES[0], "UPDATE persons SET phone = ? WHERE id_number = ?", (f"1370000{n:04d}", id_number(n)))
    world.push(CODES[0])
    _merge_last(world)
    assert _refreshed(world, published) == 6
    assert len(rests) == 2 and all(rest > 0 for rest in rests)  # 6 records, in batches of 4
    assert (_contents(published.masked), _contents(published.plain)) == _built_whole(world)
    rests.clear()
    serving[0] = False
    world.sql(CODES[1], "UPDATE persons SET phone = '13700009999' WHERE id_number = ?", (id_number(10),))
    world.push(CODES[1])
    _merge_last(world)
    assert _refreshed(world, published) == 1 and rests == []


def test_the_gate_says_pages_are_being_served_while_they_are():
    import asyncio

    from syncdb import datasette_plugin

    async def served():
        gate = datasette_plugin.Gate()
        seen = [gate.serving()]
        async with gate.reading():
            seen.append(gate.serving())
        return seen + [gate.serving()]
    assert asyncio.run(served()) == [False, True, False]


def test_a_full_build_tells_its_progress_chunk_by_chunk_and_a_refresh_batch_by_batch(street, monkeypatch):
    """At 1.8 million records a build takes minutes, and at start-up the site answers only after it:
    Published.update tells ``progress`` the records decrypted so far and the table being filled after
    each chunk, then (table None) that the tables are being indexed. A refresh tells after each batch the
    records re-read so far, the table and how many it has to re-read (a night of first loads re-reads
    as many as a build)."""
    world, told = street, []
    monkeypatch.setattr(projection, "CHUNK", 4)
    published = Published(*_databases())
    with open_store(world.store, world.secret, world.all_domains) as store:
        assert published.update(store, progress=lambda records, table: told.append((records, table))) == 30
    assert told[-1] == (30, None)
    persons = [records for records, table in told if table == PERSONS]
    assert persons == list(range(4, 30, 4)) + [30]  # 30 persons in chunks of 4, the only records
    assert all(a[0] <= b[0] for a, b in zip(told, told[1:]))
    told.clear()
    monkeypatch.setattr(projection, "BATCH", 4)
    for n in range(6):
        world.sql(CODES[0], "UPDATE persons SET phone = ? WHERE id_number = ?", (f"1370000{n:04d}", id_number(n)))
    world.sql(CODES[0], "DELETE FROM persons WHERE id_number = ?", (id_number(9),))
    world.push(CODES[0], confirm_deletes=True)
    _merge_last(world)
    with open_store(world.store, world.secret, world.all_domains) as store:
        assert published.update(store, progress=lambda *said: told.append(said)) == 6  # the deleted one is not decrypted
    assert told == [(4, PERSONS, 7), (7, PERSONS, 7)]  # of the 7 changed records, the deleted one counted


def test_build_progress_is_logged_at_most_so_often_and_the_indexing_always(caplog):
    from syncdb import datasette_plugin

    with caplog.at_level("INFO", logger="syncdb.publish"):
        every = datasette_plugin.FillProgress(0)
        every(2000, PERSONS)
        every(4000, PERSONS)
        every(4000, None)
        every(500, PERSONS, 1200)
        rarely = datasette_plugin.FillProgress(3600)
        rarely(2000, PERSONS)
        rarely(4000, None)
        rarely(500, PERSONS, 1200)  # a refresh shorter than the interval logs nothing of its progress
    lines = [r.getMessage() for r in caplog.records if r.name == "syncdb.publish"]
    assert lines == [
        f"decrypting the store for publishing: 2000 records so far, now {PERSONS}",
        f"decrypting the store for publishing: 4000 records so far, now {PERSONS}",
        "decrypted 4000 records; indexing them",
        f"refreshing the published data: 500 of 1200 changed records so far, now {PERSONS}",
        "decrypted 4000 records; indexing them",
    ]


def test_publish_says_in_chinese_that_it_is_decrypting_before_the_site_answers(office_store, make_community,
                                                                                syncdb_env, syncdb_secret,
                                                                                domains, tmp_path):
    from conftest import Publisher, add_staff

    a = make_community("441900003001")
    a.add_persons(5)
    merge.merge(office_store, [a.export().path], syncdb_secret, domains)
    add_staff(office_store, syncdb_env)
    site = Publisher(office_store, dict(syncdb_env, SYNCDB_LANG="zh_CN"), tmp_path / "publish.log")
    try:
        log = site.log()
        assert log.index("正在把汇总库解密到内存中；完成之前，网站 ") < log.index("已解密 ") \
            < log.index("条记录，正在为其建立索引") < log.index("已发布"), log
    finally:
        site.stop()
