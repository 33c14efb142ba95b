"""SIGKILL `syncdb merge` at random moments: a rerun always finishes the same store."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from syncdb import community, office
from syncdb.sample import generate

from test_merge import CODES, SECRET, snapshot

SYNCDB = str(Path(sys.executable).parent / "syncdb")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, domains):
    """An office store whose inbox holds bundles of three sample communities, not yet merged."""
    root = tmp_path_factory.mktemp("crash")
    store = root / "office"
    office.init(store, SECRET)
    sample_domains = {d: domains[d] for d in ("huji", "shebao", "minzheng")}
    for n, code in enumerate(CODES, start=1):
        folder = root / code
        generate(folder, code, 400, n, domains)
        community.init(folder, code, store / "office.pub.json", sample_domains, SECRET)
        office.enroll(store, code, folder / f"{code}.pub.json")
        community.export(folder, sample_domains, SECRET)
        office.receive_files(store, [community.outbox_dir(folder)])
    key_file = root / "key"
    key_file.write_bytes(SECRET.key_file_bytes)
    env = dict(os.environ, SYNCDB_KEY_FILE=str(key_file))
    reference = root / "reference"
    shutil.copytree(store, reference)
    subprocess.run([SYNCDB, "merge", str(reference)], env=env, check=True, capture_output=True)
    started = time.monotonic()
    timing = root / "timing"
    shutil.copytree(store, timing)
    subprocess.run([SYNCDB, "merge", str(timing)], env=env, check=True, capture_output=True)
    return store, env, snapshot(reference, domains), time.monotonic() - started


def _kill_and_rerun(prepared, domains, tmp_path, rng):
    store, env, expected, duration = prepared
    target = tmp_path / f"store-{rng.random()}"
    shutil.copytree(store, target)
    process = subprocess.Popen([SYNCDB, "merge", str(target)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0, duration))
    process.send_signal(signal.SIGKILL)
    process.wait()
    rerun = subprocess.run([SYNCDB, "merge", str(target)], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert snapshot(target, domains) == expected
    check = subprocess.run([SYNCDB, "audit", "verify", str(target)], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    shutil.rmtree(target)


def test_a_killed_merge_reruns_to_the_same_store(prepared, domains, tmp_path):
    rng = random.Random(1)
    for _ in range(4):
        _kill_and_rerun(prepared, domains, tmp_path, rng)


@pytest.mark.slow
def test_fifty_kills_at_random_moments(prepared, domains, tmp_path):
    rng = random.Random(50)
    for _ in range(50):
        _kill_and_rerun(prepared, domains, tmp_path, rng)
