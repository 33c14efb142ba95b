"""bench/refresh_pages.py on a street kept with --loaded, run on again after a run that stopped.

A guard against the script's rot, not a measurement: the figures of so small a street mean nothing.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def refresh_pages(loaded: Path, temp: Path, *more: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(BENCH / "refresh_pages.py"), "--communities", "2", "--residents", "150",
            "--nights", "1", "--samples", "1", "--loaded", str(loaded), *more]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=dict(os.environ, TMPDIR=str(temp)))


@pytest.mark.slow
def test_a_loaded_street_runs_on_after_a_run_stopped_between_a_nights_export_and_its_merge(tmp_path):
    temp, loaded = tmp_path / "tmp", tmp_path / "loaded"
    temp.mkdir()
    first = refresh_pages(loaded, temp)
    assert first.returncode == 0, first.stdout + first.stderr
    # What a run stopped (Ctrl-C, SIGKILL) in a night's export or merge leaves: each community's
    # working databases edited and a bundle exported to its outbox, which the office never received.
    sys.path.insert(0, str(BENCH))
    try:
        import city
        from syncdb import community
        domains = city.sample_domains()
        folders = [loaded / city.code_of(n) for n in (1, 2)]
        city.edit_night(folders, domains, 1)
        assert all(community.export(folder, domains, city.SECRET).bundles for folder in folders)
    finally:
        sys.path.remove(str(BENCH))
    again = refresh_pages(loaded, temp)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "  night 1: " in again.stdout, again.stdout


@pytest.mark.slow
def test_a_loaded_street_refuses_the_keep_of_another_street(tmp_path):
    temp, loaded, other = tmp_path / "tmp", tmp_path / "loaded", tmp_path / "other"
    temp.mkdir()
    first = refresh_pages(loaded, temp)  # the street generated for this first run, 150 residents each
    assert first.returncode == 0, first.stdout + first.stderr
    sys.path.insert(0, str(BENCH))
    try:
        import city
        city.prepare(other, 2, 200, city.sample_domains())  # another street, as city.py --keep leaves one
    finally:
        sys.path.remove(str(BENCH))
    again = refresh_pages(loaded, temp, "--keep", str(other))
    assert again.returncode != 0, "a run measured the loaded street under --keep of another: " + again.stdout
    assert "--keep" in again.stderr and "night 1" not in again.stdout, again.stdout + again.stderr
