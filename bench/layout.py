"""Does a community's first load cost more as the store fills? Measured in this run.

    .venv/bin/python bench/layout.py                      # communities 1, 10, 50 and 100, 10,000 residents each
    .venv/bin/python bench/layout.py --at 1,5 --residents 2000   # a quick look
    .venv/bin/python bench/layout.py --keep /tmp/layout   # keep (or reuse) the generated communities

Three real sample communities (3 domains, the same as bench/merge.py) are
generated and exported once. The first is merged into an empty store; the
store is then filled up to k - 1 communities' worth of records and the next
real community is merged into it, for each k of ``--at``. The filler is the
first community's stored rows copied with fresh random blind keys (and blind
ID indexes), written in the store's own layout in random key order, as
merges write them: the store's tables have the size and shape k - 1 loaded
communities give them, without generating and exporting each one (about
half a minute a community here). A filler row does not open (its sealed
values are bound to another key), which no merge of another community
notices; the checks after a merge are left out of the figures for the same
reason (``--checks`` times them after the first load, on real records).

For each load it prints the time of the bundle's apply (apply_inbox: read,
validate, seal, version, write, ledger, commit), per change, and what the
process read and wrote through the kernel (/proc/self/io rchar and wchar:
SQLite's page reads and writes, WAL and checkpoints) per change. The goal is
the issue's: the 50th community's first load ≤ 1.2x the first's.

``--sizes STORE`` prints instead where a store's bytes go (SQLite's dbstat:
each table and index, its payload and unused bytes) and, over the record
tables, what the sealing's nonces and tags, the versions and the blind keys
take: what a smaller store format would have to save (issue 14, item 5;
bench/city.py compares store.db with the same rows in plain SQLite).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syncdb import checks, community, merge, migrations, office, store as store_module  # noqa: E402
from syncdb.crypto import Secret  # noqa: E402
from syncdb.plugins import extra_policies  # noqa: E402
from syncdb.sample import generate  # noqa: E402
from syncdb.schema import load_domains  # noqa: E402
from syncdb.store import table_name  # noqa: E402

SECRET = Secret(key_file_bytes=b"k" * 32)  # a key file: no scrypt in the figures
SAMPLE_DOMAINS = ("huji", "shebao", "minzheng")
GOAL = 1.2  # the 50th community's first load / the first's


def sample_domains():
    domains = load_domains(extra_policies=extra_policies())
    return {d: domains[d] for d in SAMPLE_DOMAINS if d in domains}


def code_of(n: int) -> str:
    return f"441900003{n:03d}"


def prepare(root: Path, loads: int, residents: int, domains) -> None:
    """An office with ``loads`` enrolled communities, each with one full-export bundle in its outbox
    (those ``root`` holds already, from a run at the same size, are kept)."""
    ready = root / "ready"
    if not ready.exists() or ready.read_text().strip() != str(residents):
        shutil.rmtree(root, ignore_errors=True)
        migrations.init(root / "office", SECRET)
        ready.write_text(f"{residents}\n")
    for n in range(1, loads + 1):
        code, folder = code_of(n), root / code_of(n)
        if (folder / "exported").exists():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        generate(folder, code, residents, n, domains)
        community.init(folder, code, root / "office" / "office.pub.json", domains, SECRET)
        office.enroll(root / "office", code, folder / f"{code}.pub.json")
        community.export(folder, domains, SECRET)
        (folder / "exported").touch()


def io_counters() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def load(store: Path, folder: Path, domains, with_checks: bool) -> tuple[float, float, float, int, dict]:
    """Merge one community's bundle; (apply seconds, its CPU seconds, checks seconds, changes, I/O bytes)."""
    timed = {"apply": 0.0, "checks": 0.0, "cpu": 0.0}
    io = dict.fromkeys(("rchar", "wchar", "read_bytes", "write_bytes"), 0)

    def clock(name, fn):
        def run(*args, **kwargs):
            started, cpu, before = time.perf_counter(), time.process_time(), io_counters()
            try:
                return fn(*args, **kwargs)
            finally:
                timed[name] += time.perf_counter() - started
                if name == "apply":  # the bundle's transaction alone: the checks read on their own
                    timed["cpu"] += time.process_time() - cpu
                    after = io_counters()
                    for k in io:
                        io[k] += after[k] - before[k]
        return run
    apply_inbox, after_merge = merge.apply_inbox, checks.after_merge
    merge.apply_inbox = clock("apply", apply_inbox)
    # The checks read the filler's copies as records (their names, birth dates and 户号 repeat
    # in every copy), which no real street has: timed only when asked, on the real communities.
    merge.checks.after_merge = clock("checks", after_merge) if with_checks else (lambda store: [])
    try:
        summary = merge.merge(store, [community.outbox_dir(folder)], SECRET, domains)
    finally:
        merge.apply_inbox, merge.checks.after_merge = apply_inbox, after_merge
    if summary.applied != 1 or summary.rejected:
        raise SystemExit(f"the load of {folder.name} did not apply cleanly: {summary.lines()}")
    return timed["apply"], timed["cpu"], timed["checks"], summary.changes, io


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--residents", type=int, default=10_000, help="residents per community (default 10,000)")
    parser.add_argument("--at", default="10,50,100", help="store sizes, in communities, of the later loads")
    parser.add_argument("--cache-mib", type=int, help="the page cache while a bundle is applied "
                        "(store.BUNDLE_CACHE_MIB), to compare sizes")
    parser.add_argument("--checks", action="store_true", help="time the checks after the first load too")
    parser.add_argument("--keep", help="folder for the generated communities, reused when it holds them")
    parser.add_argument("--sizes", metavar="STORE", help="print where the bytes of this store go, and stop")
    args = parser.parse_args()
    if args.sizes:
        return where_bytes_go(Path(args.sizes))
    sizes = [int(k) for k in args.at.split(",")]
    if args.cache_mib is not None:
        store_module.BUNDLE_CACHE_MIB = args.cache_mib
    cache = getattr(store_module, "BUNDLE_CACHE_MIB", None)  # None: a release before it
    print(f"page cache while a bundle is applied: {f'{cache} MiB' if cache else 'SQLite default (2 MiB)'}")
    if sizes != sorted(sizes) or sizes[0] < 2:
        parser.error("--at takes increasing sizes of 2 or more")
    domains = sample_domains()
    work = Path(tempfile.mkdtemp(prefix="syncdb-layout-"))
    generated = Path(args.keep) if args.keep else work / "generated"
    try:
        started = time.perf_counter()
        prepare(generated, 1 + len(sizes), args.residents, domains)
        print(f"generated {1 + len(sizes)} communities x {args.residents:,} residents in "
              f"{time.perf_counter() - started:.0f}s")
        store = work / "office"
        shutil.copytree(generated / "office", store)
        migrations.open_upgraded(store, SECRET, domains).close()  # the layout of this release, untimed
        rows = [report(1, *load(store, generated / code_of(1), domains, args.checks))]
        conn = sqlite3.connect(str(store / "store.db"))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        _first_keys(store, domains)
        held = 1
        for n, k in enumerate(sizes, start=2):
            spent = _fill(store, domains, k - 1 - held)
            held = k - 1
            print(f"  filled to {held} communities in {spent:.0f}s; store.db "
                  f"{(store / 'store.db').stat().st_size / 2**20:,.0f} MiB")
            rows.append(report(k, *load(store, generated / code_of(n), domains, False)))
            held = k
        print_table(rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


SEAL_OVERHEAD = 30  # a value sealed alone: format and key id bytes, nonce and tag (store.Seals.seal)
ROW_SEAL_OVERHEAD = 31  # a row's values sealed together: format, key id, how many (a byte below 128), nonce, tag (Seals.seal_row)


def where_bytes_go(store: Path) -> None:
    """Where the bytes of store.db go: each table and index (dbstat), then the record tables' parts."""
    path = store / "store.db" if store.is_dir() else store
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    total = conn.execute("SELECT sum(pgsize) FROM dbstat").fetchone()[0]
    print(f"{path}: {total / 2**20:,.1f} MiB (page size {conn.execute('PRAGMA page_size').fetchone()[0]}, "
          f"{conn.execute('PRAGMA freelist_count').fetchone()[0]} free pages)")
    print(f"{'table or index':<40}{'MiB':>8}{'share':>7}{'payload MiB':>13}{'unused MiB':>12}{'leaf cells':>11}")
    for name, size, payload, unused, cells in conn.execute(
            "SELECT name, sum(pgsize), sum(payload), sum(unused), sum(CASE WHEN pagetype = 'leaf' THEN ncell END) "
            "FROM dbstat GROUP BY name ORDER BY 2 DESC"):
        if size >= total / 1000:
            print(f"{name:<40}{size / 2**20:>8.2f}{size / total:>7.1%}{payload / 2**20:>13.2f}{unused / 2**20:>12.2f}"
                  f"{cells or 0:>11,}")
    sealed = sealed_rows = versions = blind = rows = row_seals = 0
    for (qualified,) in conn.execute("SELECT tbl FROM store_columns").fetchall():
        name = qualified.replace(".", "__")
        columns = conn.execute(f"PRAGMA table_info([{name}])").fetchall()
        values = [c[1] for c in columns if c[2] == "BLOB" and c[1] != "_key" and not c[1].endswith("__bi")]
        ids = [c[1] for c in columns if c[1].endswith("__bi")]
        any_sealed = " OR ".join(f"[{c}] IS NOT NULL" for c in values) or "0"
        id_bytes = " + ".join(f"coalesce(sum(length([{c}])), 0)" for c in ids) or "0"
        count, per_value, with_sealed, text, keys = conn.execute(
            f"SELECT count(*), {' + '.join(f'count([{c}])' for c in values) or '0'}, sum({any_sealed}), "
            f"sum(length(_versions)), sum(length(_key)) + {id_bytes} FROM [{name}]").fetchone()
        if "_sealed" in values:  # store version 4: one seal a row
            row_seals += per_value
        else:
            sealed, sealed_rows = sealed + per_value, sealed_rows + (with_sealed or 0)
        rows = rows + count
        versions, blind = versions + (text or 0), blind + (keys or 0)
    mib = 2**20
    if sealed:
        print(f"record tables: {rows:,} rows; {sealed:,} values sealed alone, {SEAL_OVERHEAD} bytes each of format, "
              f"key id, nonce and tag: {sealed * SEAL_OVERHEAD / mib:.1f} MiB ({sealed * SEAL_OVERHEAD / total:.1%}); "
              f"one seal a row would take {sealed_rows * ROW_SEAL_OVERHEAD / mib:.1f} MiB of it")
    else:
        print(f"record tables: {rows:,} rows; {row_seals:,} row seals, {ROW_SEAL_OVERHEAD} bytes each of format, "
              f"key id, count, nonce and tag: {row_seals * ROW_SEAL_OVERHEAD / mib:.1f} MiB "
              f"({row_seals * ROW_SEAL_OVERHEAD / total:.1%})")
    print(f"versions (_versions): {versions / mib:.1f} MiB ({versions / total:.1%}), "
          f"{versions / max(rows, 1):.0f} bytes a row; blind keys and blind IDs in the rows: {blind / mib:.1f} MiB "
          f"({blind / total:.1%}), their indexes above")
    conn.close()


def _first_keys(store: Path, domains) -> None:
    conn = sqlite3.connect(str(store / "store.db"), isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS bench_first (tbl TEXT NOT NULL, key BLOB NOT NULL)")
    for domain in domains.values():
        for table in domain.tables.values():
            name = table_name(table)
            conn.execute(f"INSERT INTO bench_first SELECT ?, _key FROM [{name}]", (name,))
    conn.close()


def _fill(store: Path, domains, copies: int) -> float:
    """Add ``copies`` copies of the first community's rows, under fresh random blind keys."""
    started = time.perf_counter()
    if copies <= 0:
        return 0.0
    conn = sqlite3.connect(str(store / "store.db"), isolation_level=None)
    conn.execute("PRAGMA cache_size = -262144")  # the filler's own speed, not measured
    conn.execute("BEGIN IMMEDIATE")
    for domain in domains.values():
        for table in domain.tables.values():
            name = table_name(table)
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info([{name}])")]
            fresh = ["randomblob(16)" if c == "_key" else
                     f"CASE WHEN [{c}] IS NULL THEN NULL ELSE randomblob(16) END" if c.endswith("__bi")
                     else f"[{c}]" for c in cols]
            source = (f"SELECT * FROM [{name}] WHERE _key IN "
                      f"(SELECT key FROM bench_first WHERE tbl = '{name}')")
            for _ in range(copies):
                # In random key order, as merges of other communities would have written them.
                conn.execute(f"INSERT INTO [{name}] ({', '.join(f'[{c}]' for c in cols)}) "
                             f"SELECT {', '.join(fresh)} FROM ({source}) ORDER BY random()")
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def report(k: int, apply_s: float, cpu_s: float, checks_s: float, changes: int, io: dict) -> dict:
    row = {"k": k, "apply": apply_s, "cpu": cpu_s, "checks": checks_s, "changes": changes, **io}
    print(f"  community {k}: {changes:,} changes, apply {apply_s:.2f}s (CPU {cpu_s:.2f}s), checks {checks_s:.2f}s, "
          f"written {io['wchar'] / changes / 1024:.1f} KiB/change")
    return row


def print_table(rows: list[dict]) -> None:
    first = rows[0]
    print(f"\nload: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
          f"(1, 5, 15 min); SQLite {sqlite3.sqlite_version}")
    print(f"{'store holds':<16}{'apply s':>8}{'µs/change':>10}{'CPU µs/ch':>10}{'read KiB/ch':>12}"
          f"{'written KiB/ch':>15}{'× first':>8}{'CPU × first':>12}  goal (wall time)")
    for r in rows:
        ratio = r["apply"] / r["changes"] / (first["apply"] / first["changes"])
        cpu_ratio = r["cpu"] / r["changes"] / (first["cpu"] / first["changes"])
        goal = ""
        if r["k"] >= 50:
            goal = f"<= {GOAL}x  {'PASS' if ratio <= GOAL else 'MISS'}"
        print(f"{r['k'] - 1:>3} communities  {r['apply']:>8.2f}{r['apply'] / r['changes'] * 1e6:>10.1f}"
              f"{r['cpu'] / r['changes'] * 1e6:>10.1f}{r['rchar'] / r['changes'] / 1024:>12.1f}"
              f"{r['wchar'] / r['changes'] / 1024:>15.1f}{ratio:>8.2f}{cpu_ratio:>12.2f}  {goal}")
    if any(r["checks"] for r in rows):
        print(f"checks after the first load: {first['checks']:.2f}s")


if __name__ == "__main__":
    main()
