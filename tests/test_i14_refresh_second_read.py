"""Second read of the publish refresh that writes only the cells that differ (issue 14, item 3), and of
the parallel `make test` (pytest-xdist)."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CODES, SECRET, World, id_number
from syncdb import bundle, merge, projection
from syncdb import community as community_lib
from syncdb.crypto import Keyring, PublicKey
from syncdb.hlc import Stamp, now_ms
from syncdb.projection import Published
from syncdb.store import open_store

BENEFITS = "民政_民政待遇"


def _signed(world: World, code: str, sequence: int, changes: list[dict], domain: str = "minzheng") -> Path:
    """A bundle of ``changes`` to ``domain`` signed with the community's own key: what a stolen key, or a
    program of the community's other than syncdb, can send past syncdb's capture."""
    ring = Keyring.load(community_lib.state_dir(world.folders[code]) / "keyring.json", world.secret)
    schemas = world.all_domains[domain]
    path = world.root / bundle.file_name(code, sequence)
    bundle.write(path, {"origin": code, "sequence": sequence, "schemas": {
        domain: {"version": schemas.version, "fingerprint": schemas.fingerprint}}},
        changes, ring, PublicKey.read(world.store / "office.pub.json"))
    return path


def _every_value(conn) -> dict[str, list[str]]:
    """Every published table's rows as text that tells each value apart (repr: -0.0 is not 0.0 here,
    while == and so a comparison of rows calls them equal), rowids left out, in a stable order."""
    tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {name: sorted(repr(tuple(row)) for row in conn.execute(f"SELECT * FROM [{name}]")) for name in tables}


def _databases() -> list[sqlite3.Connection]:
    return [sqlite3.connect(":memory:", isolation_level=None) for _ in range(2)]


def _built_whole(world: World) -> tuple[dict, dict]:
    masked, plain = _databases()
    with open_store(world.store, world.secret, world.all_domains) as store:
        projection.fill(store, masked, plain)
    return _every_value(masked), _every_value(plain)


@pytest.mark.parametrize("before, after", [(0.0, -0.0), (-0.0, 0.0)])
def test_a_refresh_writes_a_zero_of_the_other_sign_as_a_full_build_shows_it(tmp_path, domains, before, after):
    """0.0 and -0.0 are equal to Python and to SQLite's =, yet a column without affinity keeps each as
    it came, and the site shows '-0.0' or '0.0'. A bundle's JSON carries either (月发放金额 -0.0 from a
    community's other program, or a stolen key). The refresh compared the published cell with == and
    its type, found nothing to write, and left the other zero on the site until the next restart."""
    world = World(tmp_path, domains, community_domains=("huji", "minzheng"))
    code = CODES[0]
    first = str(Stamp(now_ms() - 60_000, 0, code))
    key = {"id_number": id_number(7), "benefit_type": "elderly"}
    cells = {"status": "active", "monthly_amount": before, "start_date": "2024-01-01", "community_code": code}
    inserted = merge.merge(world.store, [_signed(world, code, 1, [
        {"table": "minzheng.benefits", "op": "insert", "key": key, "cells": cells, "base": {}, "hlc": first}])],
        SECRET, world.all_domains)
    assert inserted.applied == 1 and not inserted.rejected, inserted.lines()
    published = Published(*_databases())
    with open_store(world.store, world.secret, world.all_domains) as store:
        published.update(store)
    assert repr(published.plain.execute(f"SELECT [月发放金额] FROM [{BENEFITS}]").fetchone()[0]) == repr(before)

    changed = merge.merge(world.store, [_signed(world, code, 2, [
        {"table": "minzheng.benefits", "op": "update", "key": key, "cells": {"monthly_amount": after},
         "base": {"monthly_amount": first}, "hlc": str(Stamp(now_ms() - 30_000, 0, code))}])],
        SECRET, world.all_domains)
    assert changed.applied == 1 and changed.changes == 1 and not changed.opened, changed.lines()
    with open_store(world.store, world.secret, world.all_domains) as store:
        assert published.update(store) == 1
    assert repr(published.plain.execute(f"SELECT [月发放金额] FROM [{BENEFITS}]").fetchone()[0]) == repr(after)
    assert (_every_value(published.masked), _every_value(published.plain)) == _built_whole(world)


# ---------------------------------------------------------------- `make test` in one process per core


def test_the_modules_sharing_the_chromium_fixtures_import_where_there_is_no_fcntl():
    """`make test`'s install lock took fcntl at the top of test_publish_browser, which test_lookup and
    test_publish_i18n import for the Chromium fixtures. Windows has no fcntl: all three files stopped at
    collection, with them the tests that need no browser (test_lookup's look-ups over HTTP, the chrome
    translator's test), where only the Chromium install cannot run there. Here a Python without fcntl
    imports the three."""
    tests = Path(__file__).resolve().parent
    code = ("import sys; sys.modules['fcntl'] = None; sys.path.insert(0, sys.argv[1]); "
            "import test_publish_browser, test_lookup, test_publish_i18n")
    done = subprocess.run([sys.executable, "-c", code, str(tests)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="a second core to leave out")
def test_make_tests_workers_keep_within_the_cpu_quota_as_merge_jobs_does(pytestconfig, monkeypatch):
    pytest.importorskip("xdist")
    from syncdb import prepare

    monkeypatch.setattr(prepare, "quota_cores", lambda *args, **kwargs: 1.0)  # a container given one CPU
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    assert prepare.default_jobs() == 1
    assert pytestconfig.hook.pytest_xdist_auto_num_workers(config=pytestconfig) == 1
    monkeypatch.setattr(prepare, "quota_cores", lambda *args, **kwargs: None)  # no quota: every core it may use
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))  # and not fewer for a busy moment
    assert pytestconfig.hook.pytest_xdist_auto_num_workers(config=pytestconfig) == len(os.sched_getaffinity(0))
