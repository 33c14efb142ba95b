"""A refresh after a store put back from a backup and merged past the point publish last read.

A refresh trusts the ledger since the point it last read to name every record and cell that moved.
A backup put back has a shorter ledger, and publish built whole when it found the point lower than
its own; but a merge run at once after the restore (a night's bundles, publish refreshing every 30
seconds) takes the ledger past that point again, in another history: its entries after the point
name what moved since the restore, not what the restore took back. The office's edit made after
the backup stayed on the site, where a full build of the same store shows it gone. Each ledger
entry's MAC is chained over every entry before it: a refresh now checks the entry at its point is the
one it read, and builds whole when it is not.
"""

import shutil

from conftest import CODES, SECRET, id_number, person
from syncdb import merge
from syncdb.projection import Published
from syncdb.store import open_store
from test_i14_refresh_second_read import _built_whole, _databases, _every_value


def test_a_store_put_back_and_merged_past_the_point_is_published_as_a_full_build_shows_it(world, domains):
    w = world
    a = CODES[0]
    w.register(a, person(1, a, phone="13800000001"), person(2, a, phone="13800000002"))
    backup = w.root / "backup"
    shutil.copytree(w.store, backup)
    w.office_sets(2, phone="13911112222")  # made after the backup: the restore takes it back
    published = Published(*_databases())
    with open_store(w.store, SECRET, domains) as store:
        published.update(store)
        point = store.change_point()
    (phone,) = published.plain.execute("SELECT [联系电话] FROM [户籍_人员] WHERE [联系电话] LIKE '139%'").fetchone()
    assert phone == "13911112222"

    shutil.rmtree(w.store)
    shutil.copytree(backup, w.store)  # the operator puts the backup back, and the night's merge runs
    for name in ("王一", "王二"):
        w.sql(a, "UPDATE persons SET name = ? WHERE id_number = ?", (name, id_number(1)))
        w.push(a)
        merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    with open_store(w.store, SECRET, domains) as store:
        assert store.change_point() > point
        published.update(store)
    for refreshed, whole in zip((published.masked, published.plain), _built_whole(w)):
        assert _every_value(refreshed) == whole
