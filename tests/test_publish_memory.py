"""What publish's memory does when a build over the last gives its pages back: a real process, its own
peak resident size (VmHWM) read from /proc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")

# A published database's build over the last, done the way Published.build and _swap do it: the new table
# beside the old, swapped in, the old one's pages given back by projection.give_back_memory.
BUILD_OVER_THE_LAST = r"""
import sqlite3, sys
from syncdb import projection

def hwm():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))

conn = sqlite3.connect(projection.memory_uri("peak"), uri=True, isolation_level=None)
projection.prepare_database(conn)
rows = [(f"东莞市南城街道莞太路{i}号", "x" * 60, i % 97) for i in range(150_000)]
for name in ("t", "_new_t"):
    conn.execute(f"CREATE TABLE [{name}] (a TEXT, b TEXT, c INTEGER)")
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO [{name}] VALUES (?, ?, ?)", rows)
    conn.execute("COMMIT")
del rows
conn.execute("BEGIN IMMEDIATE")
conn.execute("DROP TABLE t")
conn.execute("ALTER TABLE _new_t RENAME TO t")
conn.execute("COMMIT")
size = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0] // 1024
with open("/proc/self/clear_refs", "w") as reset:
    reset.write("5")  # the peak so far (the rows in Python, both tables) starts again from here
before = hwm()
projection.give_back_memory(conn)
assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
print(size, before, hwm())
"""


def test_giving_a_builds_pages_back_does_not_raise_the_peak():
    """The pages a build over the last freed are given back without a moment of holding a third copy."""
    out = subprocess.run([sys.executable, "-c", BUILD_OVER_THE_LAST], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    size, before, after = map(int, out.stdout.split())
    # Both tables are in memory (size KiB); giving the old one's half back may cost a little, never a half more.
    assert after - before < size / 10, (size, before, after)
