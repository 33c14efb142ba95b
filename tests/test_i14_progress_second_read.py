"""Second read of publish's start-up progress (470b2dc): what its log says about a build."""

import shutil
import time

from syncdb import merge


def _wait_for(check, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {seconds} s")


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
    _wait_for(lambda: "refreshed 1 changed record from" in site.log(), 30, "the night was not refreshed")

    put_aside = tmp_path / "put-aside"
    before = len(site.log())
    office_store.rename(put_aside)
    backup.rename(office_store)

    def told() -> str:  # what publish logged about the store put back, once it logged the build's end
        after = site.log()[before:]
        return after if " from " in after.partition("indexing them")[2] else ""
    _wait_for(told, 30, "the backup was not built")
    assert "decrypted 40 records; indexing them" in told(), told()
    assert "published 40 records from" in told() and "refreshed 40 changed records" not in told(), told()
