"""What the cross-domain checks cost at the office: a full run against a night with 1% of records changed.

    .venv/bin/python bench/checks.py            # 5 communities x 10,000 residents: the issue's 50,000
    .venv/bin/python bench/checks.py --quick    # 2 communities x 1,000 residents, for a quick look
    .venv/bin/python bench/checks.py --keep /var/tmp/checks-5x10000   # build the street once, reuse it after

1. A street of sample communities (syncdb.sample: every domain, the planted
   cases among them) is pushed and merged once; the checks count from the
   sample's day (``today`` in STORE/checks.toml).
2. ``checks.run(store, everything=True)`` (``syncdb checks run STORE --all``),
   timed ``--runs`` times: the median counts.
3. A realistic night: in every community's working databases, 1% of the
   residents, migrants, 社保 enrolments, 民政 benefits and assistance records
   are edited (a new phone number, a new amount or contribution base) with
   plain SQL as any program would, then exported (community.export) and
   merged (merge.merge, which runs the checks on what it changed).
4. The night's incremental run, as the merge ran it: each check's point put
   back to before the night, then ``checks.run(store)`` timed ``--runs``
   times (the cases are already what it finds, so every run does the same
   work: read what changed, find, reconcile).
5. The ratio incremental / full, with the goal (at most 5%) and PASS or MISS.
6. The incremental run again without the store indexes the checks look
   records up by (``Check.lookups``, checks.lookup_indexes: dropped, then
   made again), and the bytes those indexes take in store.db (dbstat): what
   they save a night against what they cost on disk.

Nothing is asserted: the figures are printed with their goal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syncdb import cases, checks, community, merge, migrations, office  # noqa: E402
from syncdb.crypto import Secret  # noqa: E402
from syncdb.sample import generate  # noqa: E402
from syncdb.sample_people import TODAY  # noqa: E402
from syncdb.schema import load_domains  # noqa: E402
from syncdb.store import open_store, table_name  # noqa: E402

from city import edit_night  # noqa: E402  (bench/ is the script's folder, first on sys.path)

SECRET = Secret(key_file_bytes=b"b" * 32)  # a key file, not a passphrase: no scrypt in the figures
STREET = "441900003"
GOAL = 0.05  # an incremental night with 1% of records changed costs at most 5% of a full run
SHARE = 0.01
# (domain, table, the edit a night makes): what the communities' staff change most, one column each.
EDITS = (
    ("huji", "persons", "phone = ?", lambda r: f"139{r.randrange(10**8):08d}"),
    ("liudong", "migrants", "phone = ?", lambda r: f"137{r.randrange(10**8):08d}"),
    ("shebao", "enrolments", "monthly_base = coalesce(monthly_base, 0) + ?", lambda r: r.choice((100, 200, 300))),
    ("minzheng", "benefits", "monthly_amount = coalesce(monthly_amount, 0) + ?", lambda r: r.choice((10, 20))),
    ("minzheng", "assistance", "monthly_amount = coalesce(monthly_amount, 0) + ?", lambda r: r.choice((10, 20))),
)


def build(root: Path, communities: int, residents: int, domains) -> tuple[Path, dict[str, Path], int]:
    """The street merged once; return the store, the community folders and how many records the store holds."""
    store = root / "office"
    migrations.init(store, SECRET, domains=domains)
    (store / checks.SETTINGS_FILE).write_text(f"today = {TODAY.isoformat()}\n", encoding="utf-8")
    folders = {}
    for n in range(1, communities + 1):
        code = f"{STREET}{n:03d}"
        folder = root / code
        generate(folder, code, residents, n, domains)
        community.init(folder, code, office.public_key_path(store), domains, SECRET)
        office.enroll(store, code, folder / f"{code}.pub.json")
        community.export(folder, domains, SECRET)
        folders[code] = folder
    merge.merge(store, [community.outbox_dir(f) for f in folders.values()], SECRET, domains)
    with open_store(store, SECRET, domains) as st:
        records = sum(st.conn.execute(f"SELECT count(*) FROM [{table_name(t)}] WHERE _exists = 1").fetchone()[0]
                      for t in st.tables.values())
    return store, folders, records


def kept(keep: Path, work: Path, communities: int, residents: int, domains) -> tuple[Path, dict[str, Path], int]:
    """The street built once in ``keep`` (merged, before any night), copied to ``work`` for this run."""
    marker = keep / "street.json"
    size = {"communities": communities, "residents": residents}
    if marker.exists() and {k: json.loads(marker.read_text())[k] for k in size} != size:
        raise SystemExit(f"{keep} holds a street of another size ({marker.read_text().strip()}): give another --keep")
    if not marker.exists():
        shutil.rmtree(keep, ignore_errors=True)
        __, __, records = build(keep, communities, residents, domains)
        marker.write_text(json.dumps(dict(size, records=records)))
    shutil.copytree(keep, work, dirs_exist_ok=True)
    folders = {f"{STREET}{n:03d}": work / f"{STREET}{n:03d}" for n in range(1, communities + 1)}
    return work / "office", folders, json.loads(marker.read_text())["records"]


def night(folders: dict[str, Path], domains, seed: int) -> int:
    """Edit 1% of each edited table's records in every community; return how many records were changed."""
    return edit_night(list(folders.values()), domains, seed, edits=EDITS)


def timed(runs: int, work) -> list[float]:
    took = []
    for _run in range(runs):
        started = time.perf_counter()
        work()
        took.append(time.perf_counter() - started)
    return took


def without_lookups(st, runs: int, incremental) -> tuple[list[float], int, int]:
    """The incremental run timed without the checks' look-up indexes (made again after); and the bytes they
    take, of the whole store's."""
    wanted = checks.lookup_indexes(st)
    sizes = dict(st.conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
    index_bytes, store_bytes = sum(sizes.get(name, 0) for name in wanted), sum(sizes.values())
    make = checks.lookup_indexes
    with st.transaction():
        for name in wanted:
            st.conn.execute(f"DROP INDEX [{name}]")
    checks.lookup_indexes = lambda store, names=None: {}  # the run would make them again
    try:
        took = timed(runs, incremental)
    finally:
        checks.lookup_indexes = make
        with st.transaction():
            checks.make_lookup_indexes(st)
    return took, index_bytes, store_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 communities x 1,000 residents")
    parser.add_argument("--communities", type=int, default=5)
    parser.add_argument("--residents", type=int, default=10_000, help="residents per community (default 10,000)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each kind; the median counts")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="build the street in DIR once and work on a copy of it at each run")
    args = parser.parse_args()
    communities, residents = (2, 1_000) if args.quick else (args.communities, args.residents)
    domains = load_domains()
    with tempfile.TemporaryDirectory(prefix="syncdb-bench-checks-") as tmp:
        started = time.perf_counter()
        if args.keep:
            store, folders, records = kept(args.keep, Path(tmp), communities, residents, domains)
        else:
            store, folders, records = build(Path(tmp), communities, residents, domains)
        how = f"copied from {args.keep}" if args.keep else "built and merged"
        print(f"street: {communities} communities x {residents:,} residents, {records:,} records in the store "
              f"({how} in {time.perf_counter() - started:.0f} s)")
        with open_store(store, SECRET, domains, write=True) as st:
            full = timed(args.runs, lambda: checks.run(st, everything=True))
            held = sum(n for per in checks.case_counts(st).values() for states in per.values()
                       for s, n in states.items() if s in cases.ACTIVE)
            before = st.change_point()
        changed = night(folders, domains, seed=1)
        started = time.perf_counter()
        bundles = [community.export(f, domains, SECRET).path for f in folders.values()]
        summary = merge.merge(store, bundles, SECRET, domains)
        merged = time.perf_counter() - started
        with open_store(store, SECRET, domains, write=True) as st:
            names = [c.name for c in checks.registered()]

            def incremental():
                with st.transaction():
                    for name in names:
                        cases.set_point(st, name, before)
                return checks.run(st)
            report = incremental()
            small = timed(args.runs, incremental)
            unindexed, index_bytes, store_bytes = without_lookups(st, args.runs, incremental)
    looked = sum(n for n in report.looked.values() if n)
    ratio = statistics.median(small) / statistics.median(full)
    print(f"full run (--all), {len(names)} checks: median {statistics.median(full):.2f} s of "
          f"{', '.join(f'{t:.2f}' for t in full)}; {held} open and confirmed cases")
    print(f"night: {changed:,} records changed ({changed / records:.1%} of the store), exported and merged in "
          f"{merged:.1f} s; {'; '.join(summary.checked) or 'no case opened or closed'}")
    print(f"incremental run: median {statistics.median(small):.3f} s of {', '.join(f'{t:.3f}' for t in small)}; "
          f"{looked:,} subjects looked at over the checks")
    print(f"ratio incremental / full: {ratio:.1%} (goal <= {GOAL:.0%}) {'PASS' if ratio <= GOAL else 'MISS'}")
    print(f"incremental run without the checks' look-up indexes: median {statistics.median(unindexed):.3f} s of "
          f"{', '.join(f'{t:.3f}' for t in unindexed)} ({statistics.median(unindexed) / statistics.median(small):.2f}x "
          f"the run with them); the indexes take {index_bytes / 2**20:.1f} MiB of store.db's "
          f"{store_bytes / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
