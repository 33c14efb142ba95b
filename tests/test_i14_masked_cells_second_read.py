"""Second read of the publish refresh that compares the plaintext row only and writes the cells that
differ to both databases (issue 14, item 3): a masked cell must follow from its plaintext cell as the
plaintext database holds it, or a refresh leaves a mask a full build would not show."""

import math
import random

import pytest

from conftest import CODES, SECRET, World, id_number
from syncdb import merge, projection
from syncdb.hlc import Stamp, now_ms
from syncdb.projection import Published
from syncdb.store import open_store
from test_i14_refresh_second_read import _built_whole, _databases, _every_value, _signed

ENROLMENTS = "社保_参保登记"


def _same_as_built(world: World, published: Published) -> None:
    """Both databases, value by value, as a full build of the store makes them (the table that differs named)."""
    built = _built_whole(world)
    for which, refreshed, whole in zip(("masked", "plain"), (published.masked, published.plain), built):
        refreshed = _every_value(refreshed)
        assert refreshed.keys() == whole.keys()
        for name in whole:
            assert (which, name, refreshed[name]) == (which, name, whole[name])


class Nights:
    """One community sending shebao enrolments by signed bundles, merged for real, one bundle a night."""

    def __init__(self, tmp_path, domains):
        self.world = World(tmp_path, domains, codes=CODES[:1], community_domains=("huji", "shebao"))
        self.code, self.sequence, self.clock = CODES[0], 0, now_ms() - 3_600_000
        self.stamps: dict[tuple, str] = {}  # (record, column) -> the stamp of its last version

    def night(self, cells_of: dict[int, dict]) -> None:
        changes = []
        for n, cells in cells_of.items():
            self.clock += 1000
            stamp = str(Stamp(self.clock, 0, self.code))
            key = {"id_number": id_number(n), "insurance_type": "110"}
            if (n, "status") not in self.stamps:
                cells = {"status": "1", "start_date": "2024-01-01", "community_code": self.code} | cells
                change = {"table": "shebao.enrolments", "op": "insert", "key": key, "cells": cells, "base": {}}
            else:
                change = {"table": "shebao.enrolments", "op": "update", "key": key, "cells": cells,
                          "base": {c: self.stamps[(n, c)] for c in cells if (n, c) in self.stamps}}
            changes.append(change | {"hlc": stamp})
            self.stamps.update({(n, c): stamp for c in cells})
        self.sequence += 1
        done = merge.merge(self.world.store, [_signed(self.world, self.code, self.sequence, changes, "shebao")],
                           SECRET, self.world.all_domains)
        assert not done.rejected and not done.opened, done.lines()

    def published(self, published: Published) -> int:
        with open_store(self.world.store, self.world.secret, self.world.all_domains) as store:
            return published.update(store)


@pytest.mark.parametrize("before, after", [(True, 1), (False, 0), (math.nan, None), (True, "1")],
                         ids=["true-then-1", "false-then-0", "nan-then-null", "true-then-text-1"])
def test_a_refresh_masks_a_sensitive_cell_as_a_full_build_does_when_its_plaintext_reads_back_the_same(
        tmp_path, domains, before, after):
    """单位名称 is sensitive text: the schema asks no type of it, so a bundle may carry true, 1 or NaN.
    SQLite keeps true as 1 and NaN as NULL, so the plaintext database reads 1 (or NULL) either way, while
    the masked cell was made from the Python value ('T**e' for True, 'n*n' for NaN). A night that turns
    true into 1 (or NaN into null) is a change to the merge (repr), but the refresh, comparing the
    plaintext row only, found nothing to write, and the masked database kept 'T**e' where a full build
    shows '*'. A masked cell is now made from the value as the plaintext database keeps it."""
    nights = Nights(tmp_path, domains)
    nights.night({7: {"employer": before}})
    published = Published(*_databases())
    assert nights.published(published) == 1
    nights.night({7: {"employer": after}})
    assert nights.published(published) == 1
    _same_as_built(nights.world, published)


def test_a_masked_cell_is_the_mask_of_the_plaintext_cell_beside_it(tmp_path, domains):
    """Whatever type a bundle gave a sensitive value, the masked database shows the mask of what the
    plaintext database shows for it (a clerk's mask and a view-pii page agree)."""
    nights = Nights(tmp_path, domains)
    values = [True, False, math.nan, 1, 0, 1.0, -0.0, "1", "", None, "True", "nan", "某某科技有限公司"]
    nights.night({n: {"employer": v} for n, v in enumerate(values)})
    published = Published(*_databases())
    nights.published(published)
    column = domains["shebao"].tables["enrolments"].columns["employer"]
    pairs = dict(published.plain.execute(f"SELECT rowid, [单位名称] FROM [{ENROLMENTS}]"))
    for rowid, hidden in published.masked.execute(f"SELECT rowid, [单位名称] FROM [{ENROLMENTS}]"):
        assert repr(hidden) == repr(projection.mask_value(column, pairs[rowid])), pairs[rowid]


def test_refreshed_databases_after_random_nights_are_what_a_full_build_makes_value_and_type(tmp_path, domains):
    """Random nights of values of every type a bundle's JSON gives (true, 1, 1.0, '1', -0.0, NaN, null,
    '') in a sensitive column and a plain one, each refreshed; after each, both databases, compared by
    repr, are what a full build of the same store makes."""
    chooser = random.Random(14)
    employers = [True, False, 1, 0, 1.0, 0.0, -0.0, "1", "0", "", None, math.nan, "True", "某公司",
                 "某某科技有限公司"]
    bases = [1, 1.0, "1", 0.0, -0.0, 2.5, "2.5", None, 3000]
    nights = Nights(tmp_path, domains)
    nights.night({n: {"employer": chooser.choice(employers), "monthly_base": chooser.choice(bases)}
                  for n in range(8)})
    published = Published(*_databases())
    nights.published(published)
    for _night in range(6):
        tonight = {n: {column: chooser.choice(choices) for column, choices
                       in (("employer", employers), ("monthly_base", bases)) if chooser.random() < 0.7}
                   for n in chooser.sample(range(8), 4)}
        nights.night({n: cells for n, cells in tonight.items() if cells})
        nights.published(published)
        _same_as_built(nights.world, published)


# ---------------------------------------------------------------- a fill gives way to the pages of the site itself


def test_the_sites_refresh_rests_while_a_page_is_in_flight_and_not_otherwise(tmp_path, domains, monkeypatch):
    """The rests of a build or refresh (projection.Published._give_way) are asked of the site's own Gate:
    publish's Datasette, started as `syncdb publish` starts it, builds without a page in flight and rests
    in none of it; a refresh while a page is being served (inside the Gate, as asgi_wrapper holds it)
    rests after its batch; one after the page has left does not. The tests of the rest alone hand
    Published a serving() of their own, and stayed green with the site's Gate not wired to it."""
    import asyncio

    from syncdb import datasette_plugin, publish, staff

    nights = Nights(tmp_path, domains)
    nights.night({n: {"employer": f"某公司{n}"} for n in range(3)})
    staff.add_user(nights.world.store, "chenjing", "long-enough-1", roles=["view-pii"])
    rests = []
    monkeypatch.setattr(projection.time, "sleep", rests.append)

    async def site():
        ds = publish.make_datasette(nights.world.store, SECRET, domains, refresh_seconds=3600)
        await ds.invoke_startup()  # the start-up build: nobody reads yet
        built = list(rests)
        ctx = ds._syncdb
        await asyncio.to_thread(nights.night, {1: {"employer": "另一公司"}})
        async with ctx.gate.reading():  # a page in flight
            await datasette_plugin.reload(ds)
        during = list(rests)
        await asyncio.to_thread(nights.night, {2: {"employer": "第三公司"}})
        await datasette_plugin.reload(ds)
        for task in ctx.tasks:
            task.cancel()
        refreshed = ctx.published.plain.execute(
            f"SELECT count(*) FROM [{ENROLMENTS}] WHERE [单位名称] IN ('另一公司', '第三公司')").fetchone()[0]
        for conn in ctx.writers:
            conn.close()
        return built, during, list(rests), refreshed

    built, during, after, refreshed = asyncio.run(site())
    assert built == [] and refreshed == 2
    assert len(during) == 1 and during[0] >= 0
    assert after == during


# ---------------------------------------------------------------- a value SQLite cannot hold


def test_a_sensitive_whole_number_past_64_bits_is_published_not_a_publish_that_cannot_start(tmp_path, domains):
    """单位名称 is sensitive text, which the schema asks no type of: a bundle may carry 2**70 for it. The
    merge seals it (a seal's JSON keeps any integer), but SQLite holds integers of 64 bits at most, and
    the build raised OverflowError: `syncdb publish` could not start, nor refresh, from that night on.
    It is published as its digits, as text, in a build and in a refresh alike."""
    nights = Nights(tmp_path, domains)
    nights.night({1: {"employer": 2 ** 70}, 2: {"employer": "某公司"}})
    published = Published(*_databases())
    assert nights.published(published) == 2
    assert published.plain.execute(f"SELECT [单位名称] FROM [{ENROLMENTS}] WHERE [单位名称] LIKE '1%'").fetchall() \
        == [(str(2 ** 70),)]
    nights.night({1: {"employer": -(2 ** 64)}, 2: {"employer": 2 ** 63}})
    assert nights.published(published) == 2
    _same_as_built(nights.world, published)
    assert sorted(v for (v,) in published.plain.execute(f"SELECT [单位名称] FROM [{ENROLMENTS}]")) \
        == sorted([str(-(2 ** 64)), str(2 ** 63)])
