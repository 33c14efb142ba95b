"""Second read of the faster merge and `syncdb merge --jobs` (issue 14, item 2): a killed worker
and a hostile bundle."""

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from stdnum.cn import ric

from conftest import CODES, SECRET, SYNCDB, person, snapshot
from syncdb import merge, office, prepare
from test_merge_jobs import pushed_into_a_fresh_store
from syncdb.errors import SyncdbError


def _kill_a_worker_once(state: dict):
    """A progress callback: at the first batch, a worker of the pool is killed (the kernel's OOM
    killer, an operator's kill -9) and the merge goes on once the pool has seen it die."""
    def progress(done, total, name):
        if state.get("killed"):
            return
        workers = [p for p in multiprocessing.active_children() if p.is_alive()]
        assert workers, "the merge started no worker process"
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].join(10)
        time.sleep(0.5)  # the pool's manager thread marks the pool broken
        state["killed"] = True
    return progress


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL")
def test_a_worker_killed_between_chunks_fails_the_merge_as_documented(world, domains, monkeypatch):
    """docs/merge.md: a worker that dies fails the merge, the bundle stays in the inbox and the
    message says to run the merge again (with --jobs 1 if it recurs). A worker killed while the
    merge applies what came back earlier is met when the next chunk is handed out; the merge
    must say the same then, not hold the community's bundle as if the bundle were at fault."""
    monkeypatch.setattr(merge._Pool, "SMALL", 0)
    monkeypatch.setattr(prepare, "CHUNK", 7)
    monkeypatch.setattr(merge._Merger, "BATCH", 10)
    w = world
    store, before = pushed_into_a_fresh_store(w, 90, "killed")
    state: dict = {}
    with pytest.raises(SyncdbError) as failed:
        merge.merge(store, w.bundles, SECRET, w.all_domains, progress=_kill_a_worker_once(state), jobs=2)
    assert state.get("killed")
    message = str(failed.value)
    assert "worker process" in message and "--jobs 1" in message, message
    assert snapshot(store, domains) == before
    conn = sqlite3.connect(office.store_file(store))
    assert conn.execute("SELECT count(*) FROM applied").fetchone() == (0,)
    conn.close()
    again = merge.merge(store, [], SECRET, w.all_domains, jobs=2)
    assert again.applied == 1 and again.changes == 90
    assert snapshot(store, domains) == snapshot(w.merge_in_order(w.bundles, "one"), domains)


def test_a_change_too_deep_to_hand_back_from_a_worker_merges_as_in_one_process(world, domains, monkeypatch):
    """A change line may carry a field the merge does not read; a stolen key can make it a list
    nested 600 deep, which JSON reads (orjson to 1,024 levels) but pickle cannot send back from a
    worker. A one-process merge applies the bundle; --jobs must give the same store, not hold it."""
    monkeypatch.setattr(merge._Pool, "SMALL", 0)
    monkeypatch.setattr(prepare, "CHUNK", 7)
    a = CODES[0]
    changes = []
    for n in range(30):
        row = person(n, a)
        changes.append({"table": "huji.persons", "op": "insert", "key": {"id_number": row.pop("id_number")},
                        "cells": row, "base": {}, "hlc": f"005000000000{n:03d}.000000.{a}"})
    deep: list = []
    for _ in range(600):
        deep = [deep]
    changes[12]["note"] = deep
    path = world.signed_bundle(a, changes)
    world.freeze_empty_store()
    one, pooled = world.fresh_store("one"), world.fresh_store("pooled")
    by_one = merge.merge(one, [path], SECRET, world.all_domains, jobs=1)
    assert by_one.applied == 1 and by_one.changes == 30 and not by_one.held
    by_pool = merge.merge(pooled, [path], SECRET, world.all_domains, jobs=2)
    assert (by_pool.applied, by_pool.changes, by_pool.held) == (1, 30, []), by_pool.held
    assert snapshot(pooled, domains) == snapshot(one, domains)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_the_workers_end_when_the_merging_process_is_killed(world, tmp_path):
    """`syncdb merge --jobs 2` killed with SIGKILL (the out-of-memory killer, a scheduler's hard
    time limit): its workers must not wait for work forever, each holding the office keyring."""
    a = CODES[0]
    conn = world.connect(a)
    conn.execute("BEGIN")
    for n in range(1200):  # over merge._Pool.SMALL: the workers start
        month, day = 1 + n // 280, 1 + n // 10 % 28
        body = f"1101051980{month:02d}{day:02d}{n % 10 + 100:03d}"[:17]
        row = person(0, a, id_number=body + ric.calc_check_digit(body + "0"),
                     birth_date=f"1980-{month:02d}-{day:02d}", sex="1" if int(body[16]) % 2 else "2")
        conn.execute(f"INSERT INTO persons ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))
    conn.execute("COMMIT")
    conn.close()
    world.push(a)
    key = tmp_path / "office-key"
    key.write_bytes(SECRET.key_file_bytes)
    env = dict(os.environ, SYNCDB_KEY_FILE=str(key))
    merging = subprocess.Popen([SYNCDB, "merge", str(world.store), str(world.bundles[0]), "--jobs", "2"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and merging.poll() is None and time.monotonic() < deadline:
            workers = _children(merging.pid)
            time.sleep(0.02)
        assert len(workers) >= 2, "the merge started no workers"
        merging.kill()
        merging.wait()
        deadline = time.monotonic() + 15
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _running(pid)], "workers outlived the merge they worked for"
    finally:
        if merging.poll() is None:
            merging.kill()
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
