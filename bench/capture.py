"""What change capture and bundles cost, measured on this machine in this run.

    .venv/bin/python bench/capture.py          # full size, a few minutes at most
    .venv/bin/python bench/capture.py --quick  # smaller sizes, for a quick look

a. write throughput of a working database with capture triggers and without
b. time to export 100 changes from a big database and from a small one
c. bundle bytes per changed row against zlib-compressed JSON lines of the same rows

Nothing here asserts a time: the script prints each figure, its goal and
PASS or MISS. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
import zlib
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stdnum.cn import ric  # noqa: E402

from syncdb import capture, community, migrations, schema, workdir  # noqa: E402
from syncdb.crypto import Secret  # noqa: E402
from syncdb.sample_people import ETHNICITIES, ETHNICITY_WEIGHTS, Pools  # noqa: E402

CODE = "441900003001"
SEED = 20240601
REPEATS = 3
# An export of 100 changes takes some 20 ms, most of it fsync and checkpoint, which
# jitter by several ms from run to run: more rounds, and the median shown beside the best.
EXPORT_ROUNDS = 5
# The same on both sides of every comparison: what a community PC would sensibly run.
PRAGMAS = ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL")

DOMAINS = schema.load_domains()
HUJI = {"huji": DOMAINS["huji"]}
PERSONS = DOMAINS["huji"].tables["persons"]
COLUMNS = list(PERSONS.columns)
INSERT_PERSON = (f"INSERT INTO persons ({', '.join(COLUMNS)}) "
                 f"VALUES ({', '.join('?' for _ in COLUMNS)})")


class Residents:
    """Realistic residents as persons rows, quickly and for any count.

    Names, streets and phone prefixes come from the pools ``syncdb.sample``
    fills with Faker (zh_CN), ethnicities follow its census weights; ID numbers
    are valid (GB 11643 check character) and distinct by construction. This is
    not ``sample.generate``: that builds whole families and slows down far past
    the 50,000 residents a community has, while (b) wants 200,000 rows.
    """

    REGIONS = ["441900", "441302", "445202", "440306", "430524", "360731", "450881",
               "522121", "511623", "420106", "110105", "410526"]

    def __init__(self, seed: int = SEED):
        self.rng = random.Random(seed)
        self.pools = Pools.from_faker(seed)
        self.taken: set[str] = set()
        self.household = 0

    def id_number(self, born: date, sex: str) -> str:
        while True:
            order = self.rng.randrange(1, 498) * 2 + (sex == "1")  # odd for men, even for women
            body = f"{self.rng.choice(self.REGIONS)}{born:%Y%m%d}{order:03d}"
            number = body + ric.calc_check_digit(body + "0")  # stdnum wants the check place filled
            if number not in self.taken:
                self.taken.add(number)
                return number

    def rows(self, n: int) -> list[tuple]:
        rng, pools, out = self.rng, self.pools, []
        while len(out) < n:
            self.household += 1
            household_no = f"{CODE[6:]}{self.household:06d}"
            address = f"{pools.city}{rng.choice(pools.streets)}{rng.randint(1, 400)}号"
            if rng.random() < 0.65:
                address += f"{rng.randint(1, 30)}栋{rng.randint(1, 33)}{rng.randint(1, 6):02d}室"
            for member in range(min(rng.choice([1, 2, 2, 3, 3, 3, 4, 4, 5]), n - len(out))):
                sex = rng.choice("12")
                years_old = rng.randint(0, 95) if member >= 2 else rng.randint(20, 95)
                born = date(2025, 1, 1) - timedelta(days=round(years_old * 365.25) + rng.randint(0, 364))
                name = rng.choice(pools.surnames) + rng.choice(
                    pools.male_names if sex == "1" else pools.female_names)
                relationship = ["02", "10"][member] if member < 2 else rng.choice(["20", "22", "23", "30", "32"])
                marital = "10" if years_old < 20 else rng.choices(["20", "10", "30", "40"], [70, 15, 8, 7])[0]
                phone = (rng.choice(pools.phone_prefixes) + f"{rng.randrange(10**8):08d}"
                         if years_old >= 18 and rng.random() < 0.9 else None)
                status = rng.choices(["normal", "moved_out", "deceased"], [97, 2, 1])[0]
                out.append((self.id_number(born, sex), name, sex, rng.choices(ETHNICITIES, ETHNICITY_WEIGHTS)[0],
                            born.isoformat(), household_no, relationship, marital, phone, address, CODE, status))
        return out


def phone(rng: random.Random) -> str:
    return f"1{rng.choice('3578')}{rng.randint(0, 999_999_999):09d}"


# ---------------------------------------------------------------- a. write throughput

def write_run(folder: Path, rows: list[tuple], with_capture: bool, batch: int = 100) -> tuple[float, float]:
    """Seconds for len(rows) single-row inserts, then as many single-row updates, in batches."""
    path = folder / f"w-{with_capture}-{time.perf_counter_ns()}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    if with_capture:
        capture.install(conn, DOMAINS["huji"])  # the tables, the log and the triggers
    else:
        for table in DOMAINS["huji"].tables.values():
            conn.execute(table.create_sql())
    rng = random.Random(SEED)
    updates = [(phone(rng), row[9] + "之一", row[0]) for row in rows]  # a new phone and address

    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        conn.execute("BEGIN")
        for row in rows[i:i + batch]:
            conn.execute(INSERT_PERSON, row)
        conn.execute("COMMIT")
    inserted = time.perf_counter() - start

    start = time.perf_counter()
    for i in range(0, len(updates), batch):
        conn.execute("BEGIN")
        for values in updates[i:i + batch]:
            conn.execute("UPDATE persons SET phone = ?, address = ? WHERE id_number = ?", values)
        conn.execute("COMMIT")
    updated = time.perf_counter() - start
    if with_capture:
        logged = conn.execute(f"SELECT count(*) FROM {capture.LOG}").fetchone()[0]
        assert logged == 2 * len(rows), logged
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return inserted, updated


def bench_writes(tmp: Path, n: int) -> dict:
    rows = Residents().rows(n)
    times = {True: ([], []), False: ([], [])}
    for _ in range(REPEATS):
        for with_capture in (False, True):  # interleaved, so drift in the machine hits both alike
            ins, upd = write_run(tmp, rows, with_capture)
            times[with_capture][0].append(ins)
            times[with_capture][1].append(upd)
    return {
        "n": n,
        "insert": {w: n / min(times[w][0]) for w in (False, True)},
        "update": {w: n / min(times[w][1]) for w in (False, True)},
    }


# ---------------------------------------------------------------- b. export cost vs database size

class Office:
    def __init__(self, tmp: Path):
        self.secret = Secret(key_file_bytes=os.urandom(32))
        self.public_key = migrations.init(tmp / "office", self.secret)


def community_with(tmp: Path, name: str, residents: int, the_office: Office):
    """A community folder whose huji.db holds ``residents`` persons, set up for sync."""
    folder = tmp / name
    workdir.create(folder, HUJI)
    people = Residents()
    conn = sqlite3.connect(workdir.db_path(folder, "huji"), isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(INSERT_PERSON, people.rows(residents))
    conn.execute("COMMIT")
    conn.close()
    secret = Secret(key_file_bytes=os.urandom(32))
    community.init(folder, CODE, the_office.public_key, HUJI, secret)
    return folder, secret, people


def make_100_changes(folder: Path, people: Residents, rng: random.Random) -> None:
    """70 updates, 20 inserts and 10 deletes of residents, by another program (plain sqlite3)."""
    conn = sqlite3.connect(workdir.db_path(folder, "huji"), isolation_level=None)
    picked = [r[0] for r in conn.execute("SELECT id_number FROM persons ORDER BY random() LIMIT 80")]
    conn.execute("BEGIN")
    for number in picked[:70]:
        conn.execute("UPDATE persons SET phone = ? WHERE id_number = ?", (phone(rng), number))
    conn.executemany(INSERT_PERSON, people.rows(20))
    for number in picked[70:80]:
        conn.execute("DELETE FROM persons WHERE id_number = ?", (number,))
    conn.execute("COMMIT")
    conn.close()


def rows_in(folder: Path) -> int:
    conn = sqlite3.connect(workdir.db_path(folder, "huji"))
    try:
        return sum(conn.execute(f"SELECT count(*) FROM [{t}]").fetchone()[0] for t in DOMAINS["huji"].tables)
    finally:
        conn.close()


def bench_export(tmp: Path, the_office: Office, big: int, small: int) -> dict:
    out = {}
    for name, residents in (("small", small), ("big", big)):
        folder, secret, people = community_with(tmp, name, residents, the_office)
        start = time.perf_counter()
        first = community.export(folder, HUJI, secret)  # the first, full push: not timed in the figure
        first_push = time.perf_counter() - start
        rng = random.Random(SEED)

        def one_round():
            make_100_changes(folder, people, rng)
            start = time.perf_counter()
            result = community.export(folder, HUJI, secret)
            elapsed = time.perf_counter() - start
            assert result.changes == 100, result
            return elapsed

        rounds = sorted(one_round() for _ in range(EXPORT_ROUNDS))
        out[name] = {"residents": residents, "rows": rows_in(folder), "first_push": first_push,
                     "first_changes": first.changes, "seconds": rounds[0],
                     "median": rounds[len(rounds) // 2]}
    return out


# ---------------------------------------------------------------- c. bundle size

def bench_bytes(tmp: Path, the_office: Office, sizes: list[int]) -> dict:
    pool = Residents().rows(max(sizes))
    out = {}
    for n in sizes:
        folder = tmp / f"bytes-{n}"
        workdir.create(folder, HUJI)
        secret = Secret(key_file_bytes=os.urandom(32))
        community.init(folder, CODE, the_office.public_key, HUJI, secret)
        conn = sqlite3.connect(workdir.db_path(folder, "huji"), isolation_level=None)
        conn.execute("BEGIN")
        conn.executemany(INSERT_PERSON, pool[:n])
        conn.execute("COMMIT")
        conn.close()
        result = community.export(folder, HUJI, secret)
        assert result.changes == n, result
        lines = b"".join(json.dumps(dict(zip(COLUMNS, row)), ensure_ascii=False, separators=(",", ":")).encode()
                         + b"\n" for row in pool[:n])
        out[n] = {"bundle": result.path.stat().st_size, "zlib_json": len(zlib.compress(lines, 9))}
    return out


# ---------------------------------------------------------------- report

def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a quick look")
    args = parser.parse_args(argv)
    writes, big, small, sizes = (5_000, 50_000, 2_000, [100, 10_000]) if args.quick \
        else (20_000, 200_000, 2_000, [100, 10_000])

    print(f"syncdb capture benchmark{' (--quick)' if args.quick else ''}: Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"PRAGMAs on every working database: {'; '.join(p.removeprefix('PRAGMA ') for p in PRAGMAS)}. "
          f"a: best of {REPEATS} runs; b: best of {EXPORT_ROUNDS} rounds")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="syncdb-bench-") as tmp_name:
        tmp = Path(tmp_name)
        print(f"a. {writes:,} single-row inserts (100 a transaction), then {writes:,} single-row updates …",
              flush=True)
        w = bench_writes(tmp, writes)
        the_office = Office(tmp)
        print(f"b. exporting 100 changes from {small:,} and from {big:,} residents …", flush=True)
        e = bench_export(tmp, the_office, big, small)
        print(f"c. bundle size for {' and '.join(f'{n:,}' for n in sizes)} new rows "
              "(each change carries its whole row, as the baseline does) …", flush=True)
        b = bench_bytes(tmp, the_office, sizes)

    table = []
    for op in ("insert", "update"):
        plain, captured = w[op][False], w[op][True]
        ratio = plain / captured
        table.append((f"a. {op}s without capture", f"{plain:,.0f} rows/s", "", ""))
        table.append((f"a. {op}s with capture", f"{captured:,.0f} rows/s", "", ""))
        table.append((f"a. {op} slowdown with capture", f"{ratio:.2f}×", "≤ 1.50×", verdict(ratio <= 1.5)))
    s, g = e["small"], e["big"]
    for x in (s, g):
        table.append((f"b. export 100 changes, {x['rows']:,} rows", f"{x['seconds']:.3f} s", "", ""))
    ratio = g["seconds"] / s["seconds"]
    table.append(("b. big / small", f"{ratio:.2f}×", "≤ 1.50×", verdict(ratio <= 1.5)))
    for n, sizes_n in b.items():
        per_bundle, per_zlib = sizes_n["bundle"] / n, sizes_n["zlib_json"] / n
        ratio = per_bundle / per_zlib
        table.append((f"c. {n:,} new rows: bundle", f"{per_bundle:,.1f} B/row", "", ""))
        table.append((f"c. {n:,} new rows: zlib -9 JSON lines", f"{per_zlib:,.1f} B/row", "", ""))
        table.append((f"c. {n:,} new rows: bundle / zlib JSON", f"{ratio:.2f}×", "≤ 1.20×", verdict(ratio <= 1.2)))

    widths = [max(len(row[i]) for row in table) for i in range(4)]
    print()
    print(f"{'measure':<{widths[0]}}  {'figure':>{widths[1]}}  {'goal':<{widths[2]}}  result")
    for row in table:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}".rstrip())
    print()
    print("For comparison: cr-sqlite's triggers make writes about 2.5× slower.")
    print(f"b. best of {EXPORT_ROUNDS} rounds; medians {s['median']:.3f} s and {g['median']:.3f} s "
          f"(big / small {g['median'] / s['median']:.2f}×)")
    print(f"b. first full push (not in the figures): {s['first_changes']:,} changes in {s['first_push']:.1f} s; "
          f"{g['first_changes']:,} changes in {g['first_push']:.1f} s")
    print(f"Finished in {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
