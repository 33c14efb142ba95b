"""What settling a conflict costs at the office as the queue grows, measured in this run.

    .venv/bin/python bench/review.py                  # queues of 100 and 1,000 conflicts
    .venv/bin/python bench/review.py --sizes 50 200   # other sizes

`syncdb conflicts review` opens the store once and settles one conflict after
another in process (resolve.settle): each is a signed office bundle written to
the inbox and merged by the same engine in one transaction. For each size the
script builds an office where two communities register the same N residents
(N duplicate registrations, each an open conflict), then settles every one by
keeping the first community's record, exactly as review does, and prints the
time per conflict. Goal: flat, the per-conflict time at the largest size at
most 1.25x the one at the smallest (the work is O(conflicts), not
O(conflicts x store opens) nor O(conflicts^2)). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stdnum.cn import ric  # noqa: E402  (valid check digits, as the test suite makes them)

from syncdb import community, conflicts, merge, migrations, office, workdir  # noqa: E402
from syncdb.crypto import Secret  # noqa: E402
from syncdb.resolve import settle  # noqa: E402
from syncdb.schema import load_domains  # noqa: E402
from syncdb.store import open_store  # noqa: E402

SECRET = Secret(key_file_bytes=b"k" * 32)
CODES = ["441900003001", "441900003002"]
GOAL_FLAT = 1.25


def resident(n: int) -> tuple[str, str]:
    """Resident ``n``'s valid ID number and the birth date it carries (born in 1980, 北京市西城区)."""
    month, day, serial = 1 + n // 28 % 12, 1 + n % 28, n // 336 % 1000
    body = f"1101051980{month:02d}{day:02d}{serial:03d}"
    return body + ric.calc_check_digit(body + "0"), f"1980-{month:02d}-{day:02d}"


def office_with_conflicts(root: Path, n: int, domains) -> Path:
    """An office where both communities registered the same ``n`` residents: n open conflicts."""
    store = root / "office"
    migrations.init(store, SECRET, domains=domains)
    bundles = []
    for code in CODES:
        folder = root / code
        workdir.create(folder, {"huji": domains["huji"]})
        community.init(folder, code, store / "office.pub.json", {"huji": domains["huji"]}, SECRET)
        office.enroll(store, code, folder / f"{code}.pub.json")
        with sqlite3.connect(folder / "huji.db") as conn:
            conn.executemany(
                "INSERT INTO persons (id_number, birth_date, name, sex, ethnicity, community_code, status) "
                "VALUES (?, ?, ?, ?, '01', ?, 'normal')",
                [(*resident(i), f"居民{i}", "1" if resident(i)[0][16] in "13579" else "2", code)
                 for i in range(n)])
        conn.close()
        bundles.append(community.export(folder, {"huji": domains["huji"]}, SECRET).path)
    merge.merge(store, bundles, SECRET, domains)
    return store


def settle_all(store: Path, domains) -> tuple[int, float]:
    """Settle every open conflict as `conflicts review` does; return (settled, seconds)."""
    with open_store(store, SECRET, domains, write=True) as st:
        queue = [item["id"] for item in conflicts.items(st)]
        started = time.perf_counter()
        settled = 0
        for conflict_id in queue:
            item = conflicts.show(st, conflict_id)
            if item["status"] != "open":
                continue  # settled with an earlier one: keeping a community keeps its whole record
            settle(st, conflict_id, keep=CODES[0])
            settled += 1
        took = time.perf_counter() - started
        assert not conflicts.items(st), "conflicts left open"
    return settled, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    domains = load_domains()
    figures = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            store = office_with_conflicts(Path(tmp), n, domains)
            with open_store(store, SECRET, domains) as st:
                queued = len(conflicts.items(st))
            settled, took = settle_all(store, domains)
        figures.append((n, queued, settled, took))
        print(f"{n:>6} residents registered twice: {queued:>5} open conflicts, {settled:>5} settled "
              f"in {took:7.2f} s = {1000 * took / settled:6.1f} ms per conflict", flush=True)
    first, last = figures[0], figures[-1]
    ratio = (last[3] / last[2]) / (first[3] / first[2])
    verdict = "PASS" if ratio <= GOAL_FLAT else "MISS"
    print(f"per-conflict time at {last[1]} conflicts / at {first[1]}: {ratio:.2f}x "
          f"(goal: at most {GOAL_FLAT}x, flat)  {verdict}")


if __name__ == "__main__":
    main()
