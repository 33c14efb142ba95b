"""bench/city.py runs end to end on the smallest street and prints every figure of issue 14 with its goal.

A guard against the script's rot (it drives merge, export, publish and Datasette, whose
interfaces move), not a measurement: the figures of so small a street mean nothing.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "city.py"
FIGURES = (
    "merge --jobs", "merge, one process / raw upsert", "first load of community 2 / of 1",
    "1% night merge / first load", "refresh after a night, idle / start-up",
    "refresh after a night, browsed / start-up", "publish RSS after 3 refreshes / start-up",
    "publish start-up RSS per record", "  the same at 1,840,000 records", "masked table page p95 / plain Datasette",
    "masked facet page p95 / plain Datasette", "table page during a refresh / outside",
    "facet page during a refresh / outside", "store.db / the same rows in plain SQLite",
)


@pytest.mark.slow
def test_the_city_bench_prints_each_figure_with_its_goal_and_leaves_nothing_behind(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    keep = tmp_path / "keep"
    env = dict(os.environ, TMPDIR=str(temp))
    args = [sys.executable, str(BENCH), "--communities", "2", "--residents", "150", "--samples", "2",
            "--keep", str(keep)]
    ran = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    table = ran.stdout.split("\nfigure ", 1)[1]
    for figure in FIGURES:
        row = next((line for line in table.splitlines() if line.startswith(figure)), None)
        assert row is not None, f"{figure} missing from\n{table}"
        assert re.search(r"(<=|>=) [\d.]+.*  (PASS|MISS|n/a)", row), row
    assert re.search(r"^publish start-up \(make_datasette \+ fill\) +[\d.]+ s \(\d[\d,]* records\)", table, re.M)
    # The floor (bench/merge.py's steps) on the last community's bundles, and what the checks add to it.
    assert re.search(r"^floor of community 2's first load +[\d,]+ µs/change \(read \d+, validate \d+, seal \d+, "
                     r"write \d+\) +\(bound\)$", table, re.M), table
    assert re.search(r"^  of it, the published databases' pages alone +[\d,]+ B/record +\(bound: the goal leaves "
                     r"\d+ B\)$", table, re.M), table
    assert re.search(r"^  floor \+ these checks / raw upsert +\d+\.\d{3}x +\(best reachable\)$", table, re.M)
    # The working copy, its store and the publish child's files are gone; the generated street is kept.
    assert list(temp.iterdir()) == []
    assert {p.name for p in keep.iterdir()} == {"office", "street.json", "441900003001", "441900003002"}
