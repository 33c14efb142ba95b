"""bench/checks.py runs end to end on a small street and prints its figures with the goal (issue 13)."""

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "checks.py"


def test_the_checks_bench_prints_full_incremental_and_the_ratio_with_its_verdict():
    ran = subprocess.run([sys.executable, str(BENCH), "--communities", "1", "--residents", "300", "--runs", "1"],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    out = ran.stdout
    assert re.search(r"^street: 1 communities x 300 residents, [\d,]+ records in the store", out, re.M), out
    changed = int(re.search(r"^night: ([\d,]+) records changed", out, re.M).group(1).replace(",", ""))
    assert changed > 0
    assert re.search(r"^full run \(--all\), \d+ checks: median [\d.]+ s", out, re.M)
    assert re.search(r"^incremental run: median [\d.]+ s of [\d.]+; [\d,]+ subjects looked at", out, re.M)
    assert re.search(r"^ratio incremental / full: [\d.]+% \(goal <= 5%\) (PASS|MISS)$", out, re.M)
