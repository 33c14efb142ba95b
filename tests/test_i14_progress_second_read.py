"""Second read of publish's start-up progress (470b2dc): what its log says about a build."""

import shutil
import sqlite3

from conftest import CODES, id_number, person
from syncdb import datasette_plugin, merge, projection
from syncdb.store import open_store
from test_faults_office import wait_for


def test_a_store_put_back_from_a_backup_is_logged_as_published_whole_not_as_changed_records(
        office_store, make_community, publisher, syncdb_secret, domains, tmp_path):
    """A restored backup makes publish build every table again, and its log tells that build's progress;
    its last line said "refreshed 40 changed records", every record counted as changed by a night."""
    a = make_community("441900003001")
    a.add_persons(40)
    merge.merge(office_store, [a.export().path], syncdb_secret, domains)
    backup = tmp_path / "backup"
    shutil.copytree(office_store, backup)
    site = publisher(office_store, "--refresh", "1")
    a.add_persons(1)
    merge.merge(office_store, [a.export().path], syncdb_secret, domains)
    wait_for(lambda: "refreshed 1 changed record from" in site.log(), 30, "the night was not refreshed")

    put_aside = tmp_path / "put-aside"
    before = len(site.log())
    office_store.rename(put_aside)
    backup.rename(office_store)

    def told() -> str:  # what publish logged about the store put back, once it logged the build's end
        after = site.log()[before:]
        return after if " from " in after.partition("indexing them")[2] else ""
    wait_for(told, 30, "the backup was not built")
    assert "decrypted 40 records; indexing them" in told(), told()
    assert "published 40 records from" in told() and "refreshed 40 changed records" not in told(), told()


def test_a_build_tells_the_records_of_every_table_so_far_not_only_of_the_one_being_filled(world, monkeypatch):
    """The count after each chunk is of every table filled so far: with records in two tables (households
    before persons) and one resident deleted, it climbs through both and ends at the live records. The
    tests beside the change had records in one table only, where a count of the current table passed too."""
    code = CODES[0]
    conn = sqlite3.connect(world.folders[code] / "huji.db")
    with conn:
        for h in range(5):
            conn.execute("INSERT INTO households (household_no, household_type, head_id_number, address, "
                         "community_code) VALUES (?, 'family', ?, ?, ?)",
                         (f"H{h:03d}", id_number(h), f"东城街道{h}号", code))
    conn.close()
    for n in range(12):
        world.insert(code, person(n, code, **({"household_no": f"H{n:03d}", "relationship": "02"} if n < 5 else {})))
    world.push(code)
    world.sql(code, "DELETE FROM persons WHERE id_number = ?", (id_number(11),))
    world.push(code, confirm_deletes=True)
    merge.merge(world.store, world.bundles, world.secret, world.all_domains)

    monkeypatch.setattr(projection, "CHUNK", 2)
    masked, plain = (sqlite3.connect(":memory:", isolation_level=None) for _ in range(2))
    published, told = projection.Published(masked, plain), []
    with open_store(world.store, world.secret, world.all_domains) as store:
        records = published.update(store, progress=lambda count, table: told.append((count, table)))
        order = [projection.published_name(d, t) for d in store.domains.values() for t in d.tables.values()]
    live = {name: plain.execute(f"SELECT count(*) FROM [{name}]").fetchone()[0] for name in order}
    assert live["户籍_户"] == 5 and live["户籍_人员"] == 11
    assert records == sum(live.values()) and told[-1] == (records, None)
    assert [count for count, _ in told] == sorted(count for count, _ in told)
    so_far = 0
    for name in order:
        counts = [count for count, table in told if table == name]
        if live[name]:
            assert counts[0] > so_far and counts[-1] == so_far + live[name], (name, counts, so_far)
        else:
            assert counts == []  # a table with no record tells nothing
        so_far += live[name]


def test_one_record_decrypted_is_indexed_as_it_not_them(caplog):
    """A store with one record said "decrypted 1 record; indexing them"."""
    with caplog.at_level("INFO", logger="syncdb.publish"):
        datasette_plugin.FillProgress(0)(1, None)
        datasette_plugin.FillProgress(0)(2, None)
    assert [r.getMessage() for r in caplog.records if r.name == "syncdb.publish"] == [
        "decrypted 1 record; indexing it", "decrypted 2 records; indexing them"]
