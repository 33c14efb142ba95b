"""What a merge costs at the office, measured on this machine in this run, on the same changes.

    .venv/bin/python bench/merge.py                  # 2 communities x 5,000 residents
    .venv/bin/python bench/merge.py --residents 1000 # smaller, for a quick look

1. syncdb merge throughput (changes/s) over bundles already received into the inbox, in one
   process and with ``--jobs`` worker processes (default: every core) on a copy
2. raw executemany upsert (INSERT ... ON CONFLICT DO UPDATE) of the same decrypted rows
3. sqlite-utils Table.upsert_all of the same rows
4. APSW session extension: Changeset.apply of a changeset holding the same upserts
   and, for scale, the floor: the steps no merge with syncdb's duties can skip
   (read and decrypt the bundles, validate, seal each row's sensitive values, write
   the rows), each timed alone on the same changes
5. ratios syncdb / raw upsert and syncdb / sqlite-utils
6. store metadata bytes per data byte
7. peak memory (max RSS) of a merge of a small bundle set and of one 4x larger

Every SQLite file here runs journal_mode=WAL, synchronous=FULL, as office.connect
does. Decryption is inside the syncdb figure (a merge always decrypts) and outside
the baselines (they are given plain rows). Nothing is asserted: each figure is
printed with its goal and PASS or MISS.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syncdb import bundle, community, merge, migrations, office  # noqa: E402
from syncdb.crypto import Secret  # noqa: E402
from syncdb.plugins import extra_policies  # noqa: E402
from syncdb.sample import generate  # noqa: E402
from syncdb.schema import load_domains  # noqa: E402
from syncdb.store import clear_columns, create_sql, open_store, table_name  # noqa: E402
from syncdb.validate import check_record  # noqa: E402

SECRET = Secret(key_file_bytes=b"k" * 32)  # a key file, not a passphrase: no scrypt in the figures
CODES = ["441900003001", "441900003002", "441900003003", "441900003004"]
SAMPLE_DOMAINS = ("huji", "shebao", "minzheng")
PRAGMAS = ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL")  # as office.connect

GOAL_RAW = 0.45
GOAL_SQLITE_UTILS = 3.0
GOAL_META = 1.0
GOAL_RSS_GROWTH = 1.25  # "flat": 4x the bundles may cost at most 25% more peak memory


def sample_domains():
    domains = load_domains(extra_policies=extra_policies())
    return {d: domains[d] for d in SAMPLE_DOMAINS if d in domains}


def prepare(root: Path, communities: int, residents: int, domains) -> Path:
    """An office store whose inbox holds one full-export bundle per sample community, not yet merged."""
    store = root / "office"
    migrations.init(store, SECRET)
    for n, code in enumerate(CODES[:communities], start=1):
        folder = root / code
        generate(folder, code, residents, n, domains)
        community.init(folder, code, store / "office.pub.json", domains, SECRET)
        office.enroll(store, code, folder / f"{code}.pub.json")
        community.export(folder, domains, SECRET)
        office.receive_files(store, [community.outbox_dir(folder)])
    return store


def decrypted_rows(store: Path, domains) -> tuple[dict, int, dict]:
    """Each table's rows (natural key first, then the other columns) from the inbox bundles, in merge order."""
    keyring = office.load_keyring(store, SECRET)
    tables = {t.qualified: t for d in domains.values() for t in d.tables.values()}
    conn = office.connect(store)
    files = [name for (name,) in conn.execute("SELECT file FROM received ORDER BY origin, sequence")]
    conn.close()
    rows: dict[str, list[tuple]] = {}
    ops: dict[str, int] = {}
    total = 0
    for name in files:
        for change in bundle.iter_path(office.inbox_dir(store) / name, keyring):
            table = tables[change["table"]]
            ops[change["op"]] = ops.get(change["op"], 0) + 1
            total += 1
            cells = change.get("cells") or {}
            row = [change["key"].get(k) for k in table.key]
            row += [cells.get(c) for c in table.columns if c not in table.key]
            rows.setdefault(table.qualified, []).append(tuple(row))
    return rows, total, ops


def plain_columns(table) -> list[str]:
    return list(table.key) + [c for c in table.columns if c not in table.key]


def plain_create(table) -> str:
    cols = ", ".join(f"[{c}]" for c in plain_columns(table))
    pk = ", ".join(f"[{c}]" for c in table.key)
    return f"CREATE TABLE [{table_name(table)}] ({cols}, PRIMARY KEY ({pk}))"


def upsert_sql(table) -> str:
    cols = plain_columns(table)
    non_key = [c for c in cols if c not in table.key]
    sets = ", ".join(f"[{c}] = excluded.[{c}]" for c in non_key)
    action = f"DO UPDATE SET {sets}" if non_key else "DO NOTHING"
    return (f"INSERT INTO [{table_name(table)}] ({', '.join(f'[{c}]' for c in cols)}) "
            f"VALUES ({', '.join('?' for _ in cols)}) "
            f"ON CONFLICT ({', '.join(f'[{c}]' for c in table.key)}) {action}")


def fresh_plain_db(path: Path, tables) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None)
    for p in PRAGMAS:
        conn.execute(p)
    for table in tables:
        conn.execute(plain_create(table))
    return conn


def bench_syncdb(store: Path, domains, jobs: int = 1) -> tuple[float, merge.Summary]:
    started = time.perf_counter()
    summary = merge.merge(store, [], SECRET, domains, jobs=jobs)
    return time.perf_counter() - started, summary


def bench_raw(path: Path, tables, rows) -> float:
    conn = fresh_plain_db(path, tables.values())
    started = time.perf_counter()
    conn.execute("BEGIN")
    for qualified, table_rows in rows.items():
        conn.executemany(upsert_sql(tables[qualified]), table_rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def bench_sqlite_utils(path: Path, tables, rows) -> float | str:
    try:
        import sqlite_utils
    except ImportError:
        return "sqlite-utils is not installed"
    fresh_plain_db(path, tables.values()).close()
    db = sqlite_utils.Database(str(path))
    for p in PRAGMAS:
        db.execute(p)
    dict_rows = {q: [dict(zip(plain_columns(tables[q]), r)) for r in rs] for q, rs in rows.items()}
    started = time.perf_counter()
    for qualified, table_rows in dict_rows.items():
        table = tables[qualified]
        db[table_name(table)].upsert_all(table_rows, pk=tuple(table.key))
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def bench_apsw(folder: Path, tables, rows) -> float | str:
    try:
        import apsw
    except ImportError:
        return "apsw is not installed"
    if not hasattr(apsw, "Session") or not hasattr(apsw, "Changeset"):
        return "this apsw build has no session extension (apsw.Session / apsw.Changeset missing)"

    def connect(path):
        conn = apsw.Connection(str(path))
        for p in PRAGMAS:
            conn.execute(p)
        for table in tables.values():
            conn.execute(plain_create(table))
        return conn

    source = connect(folder / "apsw-source.db")
    session = apsw.Session(source, "main")
    session.attach()
    with source:
        for qualified, table_rows in rows.items():
            source.executemany(upsert_sql(tables[qualified]), table_rows)
    changeset = session.changeset()
    session.close()
    source.close()
    target = connect(folder / "apsw-target.db")
    started = time.perf_counter()
    apsw.Changeset.apply(changeset, target)
    elapsed = time.perf_counter() - started
    target.close()
    return elapsed


def bench_floor(store: Path, folder: Path, domains) -> dict:
    """The work no merge with syncdb's duties can skip, each step timed alone on the same changes.

    read: decrypt, decompress and parse the inbox bundles; validate: check_record
    on each record; seal: blind-index the key and ID columns and seal the
    row's sensitive values (AES-256-GCM, one call per row); write: executemany the
    resulting rows into a fresh table of the store's layout. No versions,
    conflicts, ledger or rules: a lower bound on the time, so an upper bound
    on the throughput.
    """
    st = open_store(store, SECRET, domains)
    files = [office.inbox_dir(store) / name for (name,) in
             st.conn.execute("SELECT file FROM received ORDER BY origin, sequence")]
    st.conn.close()
    return floor_times(st, files, folder / "floor.db")


def floor_times(st, files: list[Path], path: Path) -> dict:
    """``bench_floor``'s steps on the changes of ``files`` (bundles readable with ``st``'s keyring), the
    rows written into a fresh file at ``path``: seconds per step (bench/city.py times one community's)."""
    times = {}
    gc.disable()  # the steps hold every change at once; collecting them is not merge work
    started = time.perf_counter()
    changes = [c for path in files for c in bundle.iter_path(path, st.keyring)]
    times["read"] = time.perf_counter() - started

    started = time.perf_counter()
    for change in changes:
        table = st.tables[change["table"]]
        check_record(table, dict(change["key"], **change["cells"]), st.domains[table.domain])
    times["validate"] = time.perf_counter() - started

    started = time.perf_counter()
    rows: dict[str, list] = {}
    for change in changes:
        table = st.tables[change["table"]]
        key_values = [change["key"].get(k) for k in table.key]
        key = st.blind_key(table, key_values)
        record = dict(change["key"], **change["cells"])
        row = [key] + [record.get(c) for c in clear_columns(table)] + [st.seals.seal_row(table, record, key)]
        row += [st.blind_id(record.get(c)) for c in table.id_columns]
        rows.setdefault(table.qualified, []).append(row)
    times["seal"] = time.perf_counter() - started

    conn = fresh_plain_db(path, [])
    for qualified in rows:
        for statement in create_sql(st.tables[qualified]):
            conn.execute(statement)
    started = time.perf_counter()
    conn.execute("BEGIN")
    for qualified, table_rows in rows.items():
        table = st.tables[qualified]
        cols = ["_key"] + clear_columns(table) + ["_sealed"] + [f"{c}__bi" for c in table.id_columns]
        conn.executemany(f"INSERT OR REPLACE INTO [{table_name(table)}] ({', '.join(f'[{c}]' for c in cols)}, "
                         f"_versions, _exists) VALUES ({', '.join('?' * len(cols))}, '{{}}', 1)", table_rows)
    conn.execute("COMMIT")
    times["write"] = time.perf_counter() - started
    gc.enable()
    conn.close()
    return times


def metadata_bytes(store: Path, domains) -> dict:
    """Payload bytes (dbstat) of store.db, split into the domain values and everything else."""
    conn = sqlite3.connect(str(store / "store.db"))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    payload = dict(conn.execute("SELECT name, sum(payload) FROM dbstat GROUP BY name"))
    domain_tables = {table_name(t): t for d in domains.values() for t in d.tables.values()}
    data = 0
    domain_payload = 0
    for name, table in domain_tables.items():
        # The values: the plain columns and the row's seal (store version 4 seals a row's sensitive values together).
        cols = " + ".join(f"coalesce(length(CAST([{c}] AS BLOB)), 0)" for c in clear_columns(table) + ["_sealed"])
        data += conn.execute(f"SELECT coalesce(sum({cols}), 0) FROM [{name}]").fetchone()[0]
        domain_payload += payload.get(name, 0)
    in_rows = domain_payload - data  # _key, __bi, _versions, _exists and record headers
    others = {n: b for n, b in payload.items() if n not in domain_tables and not n.startswith("sqlite_")}
    others.update({n: b for n, b in payload.items() if n.startswith("sqlite_autoindex")})
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    file_bytes = conn.execute("PRAGMA page_count").fetchone()[0] * page_size
    conn.close()
    meta = in_rows + sum(others.values())
    return {"data": data, "in_rows": in_rows, "others": others, "meta": meta, "file": file_bytes}


def child_merge(store: str) -> None:
    domains = sample_domains()
    summary = merge.merge(Path(store), [], SECRET, domains)
    print(summary.changes, vm_hwm_kib())


def vm_hwm_kib() -> int:
    """This process's peak RSS since its exec (ru_maxrss would carry the forking parent's size over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# A small launcher: ru_maxrss survives fork+exec, so RUSAGE_CHILDREN read here, in a
# process that never held the benchmark's rows, is the merge's own peak.
PROBE = ("import resource, subprocess, sys; "
         "out = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True).stdout; "
         "print(out.strip(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def rss_of_merge(store: Path) -> tuple[int, int, int]:
    """Merge ``store`` in a child; (changes, its VmHWM KiB, its RUSAGE_CHILDREN ru_maxrss KiB)."""
    out = subprocess.run([sys.executable, "-c", PROBE, sys.executable, __file__, "--child-merge", str(store)],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1]), int(out[2])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--residents", type=int, default=5000, help="residents per community (default 5000)")
    parser.add_argument("--communities", type=int, default=2, choices=range(1, len(CODES) + 1))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes for the figure of merge --jobs (default: every core)")
    parser.add_argument("--child-merge", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_merge:
        return child_merge(args.child_merge)

    domains = sample_domains()
    tables = {t.qualified: t for d in domains.values() for t in d.tables.values()}
    with tempfile.TemporaryDirectory(prefix="syncdb-bench-merge-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        store = prepare(root / "main", args.communities, args.residents, domains)
        big_copy = root / "rss-large"
        shutil.copytree(store, big_copy)
        jobs_copy = root / "jobs"
        shutil.copytree(store, jobs_copy)
        rows, total, ops = decrypted_rows(store, domains)
        prep = time.perf_counter() - t0

        t_syncdb, summary = bench_syncdb(store, domains)
        t_jobs, summary_jobs = bench_syncdb(jobs_copy, domains, args.jobs)
        if summary_jobs.changes != summary.changes:
            raise SystemExit(f"merge --jobs {args.jobs} applied {summary_jobs.changes} changes, one process "
                             f"{summary.changes}")
        t_raw = bench_raw(root / "raw.db", tables, rows)
        t_su = bench_sqlite_utils(root / "sqlite-utils.db", tables, rows)
        t_apsw = bench_apsw(root, tables, rows)
        floor = bench_floor(store, root, domains)
        meta = metadata_bytes(store, domains)

        small_residents = max(1, args.residents // 4)
        small = prepare(root / "rss-small", args.communities, small_residents, domains)
        baseline_child = subprocess.run(
            [sys.executable, "-c", PROBE, sys.executable, "-c", "import syncdb.merge, syncdb.cli"],
            check=True, capture_output=True, text=True, cwd=str(Path(__file__).resolve().parent.parent))
        import_rss = int(baseline_child.stdout.split()[0])
        n_small, hwm_small, self_small = rss_of_merge(small)
        n_large, hwm_large, self_large = rss_of_merge(big_copy)

    print(f"syncdb merge benchmark — {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} CPU(s), {platform.machine()}")
    print(f"workload: {args.communities} sample communities x {args.residents:,} residents, one full-export "
          f"bundle each; {total:,} changes ({', '.join(f'{k} {v:,}' for k, v in sorted(ops.items()))}) "
          f"in {len(rows)} tables; setup {prep:.0f}s")
    print(f"syncdb merge: {summary.changes:,} applied, {len(summary.rejected)} rejected, "
          f"{summary.opened} conflicts opened, {summary.applied} bundles")
    print("all SQLite files: journal_mode=WAL, synchronous=FULL; syncdb time includes decrypting bundles "
          "and sealing sensitive values, baselines get decrypted plain rows\n")

    def rate(t):
        return total / t if isinstance(t, float) else None

    r_syncdb, r_raw, r_su, r_apsw = rate(t_syncdb), rate(t_raw), rate(t_su), rate(t_apsw)
    lines = [("figure", "value", "goal", "")]
    lines.append(("1 syncdb merge", f"{r_syncdb:,.0f} changes/s ({t_syncdb:.2f}s)", "", ""))
    lines.append((f"  syncdb merge --jobs {args.jobs}", f"{rate(t_jobs):,.0f} changes/s ({t_jobs:.2f}s)", "", ""))
    lines.append(("2 raw executemany upsert", f"{r_raw:,.0f} rows/s ({t_raw:.2f}s)", "", ""))
    lines.append(("3 sqlite-utils upsert_all",
                  f"{r_su:,.0f} rows/s ({t_su:.2f}s)" if r_su else f"skipped: {t_su}", "", ""))
    lines.append(("4 apsw Changeset.apply",
                  f"{r_apsw:,.0f} rows/s ({t_apsw:.3f}s)" if r_apsw else f"skipped: {t_apsw}", "", ""))
    ratio_raw = r_syncdb / r_raw
    lines.append(("5a syncdb / raw upsert", f"{ratio_raw:.3f}x", f">= {GOAL_RAW}x", verdict(ratio_raw >= GOAL_RAW)))
    ratio_jobs = rate(t_jobs) / r_raw
    lines.append((f"   syncdb --jobs {args.jobs} / raw upsert", f"{ratio_jobs:.3f}x", f">= {GOAL_RAW}x",
                  verdict(ratio_jobs >= GOAL_RAW)))
    if r_su:
        ratio_su = r_syncdb / r_su
        lines.append(("5b syncdb / sqlite-utils", f"{ratio_su:.2f}x", f">= {GOAL_SQLITE_UTILS}x",
                      verdict(ratio_su >= GOAL_SQLITE_UTILS)))
    if r_apsw:
        lines.append(("   (syncdb / apsw changeset)", f"{r_syncdb / r_apsw:.3f}x", "(reference)", ""))
    t_floor = sum(floor.values())
    lines.append(("   floor: unskippable work alone", f"{total / t_floor:,.0f} changes/s ({t_floor:.2f}s)",
                  "(bound)", ""))
    lines.append(("   floor / raw upsert", f"{total / t_floor / r_raw:.3f}x", "(best reachable)", ""))
    meta_ratio = meta["meta"] / meta["data"]
    lines.append(("6 store metadata / data bytes", f"{meta_ratio:.2f}", f"<= {GOAL_META}",
                  verdict(meta_ratio <= GOAL_META)))
    growth = self_large / self_small
    lines.append(("7 peak RSS, small merge", f"{self_small / 1024:.1f} MiB ({n_small:,} changes)", "", ""))
    lines.append(("  peak RSS, 4x larger merge", f"{self_large / 1024:.1f} MiB ({n_large:,} changes)",
                  f"<= {GOAL_RSS_GROWTH}x small", verdict(growth <= GOAL_RSS_GROWTH)))
    widths = [max(len(row[i]) for row in lines) for i in range(4)]
    for row in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())

    print("\nfloor: what a merge with syncdb's duties cannot skip, each step timed alone on the same "
          "changes, in microseconds per change: " + ", ".join(
              f"{k} {v / total * 1e6:.1f}" for k, v in floor.items())
          + ". read = decrypt, decompress, parse the bundles; validate = check_record (ID check digit, "
          "code tables, dates); seal = blind index of the key and ID columns and one AES-GCM call per "
          "row for its sensitive values; write = executemany of those rows into the store's table layout. Versions, "
          "conflicts, rules and the audit ledger come on top.")
    print("\n6 defined: payload bytes from SQLite's dbstat (record bytes in b-tree cells; page slack, free "
          "pages and b-tree interior structure left out, as they would be in any SQLite file).")
    print("  data     = bytes of every schema column's value in the domain tables, length(CAST(v AS BLOB)); "
          "a row's seal of its sensitive values counts whole (header, nonce and tag included)")
    print("  metadata = domain-table payload minus data (_key, <col>__bi, _versions, _exists, record headers)"
          " + the payload of every other table and index (ledger, applied, received, frontier, dominated,"
          " conflicts, rejected, communities, the __bi indexes, autoindexes)")
    print(f"  data {meta['data']:,} B; metadata {meta['meta']:,} B = {meta['in_rows']:,} in the domain rows + "
          + ", ".join(f"{n} {b:,}" for n, b in sorted(meta["others"].items(), key=lambda kv: -kv[1]) if b))
    print(f"  for scale: store.db is {meta['file']:,} B on disk, {meta['file'] / meta['data']:.2f} B per data byte")
    print(f"\n7 detail: ru_maxrss of RUSAGE_CHILDREN, read in a small launcher process that runs only the merge "
          f"(the benchmark process itself holds the rows; ru_maxrss carries over fork+exec). VmHWM of the merge "
          f"process: small {hwm_small / 1024:.1f} MiB, large {hwm_large / 1024:.1f} MiB; "
          f"a process that only imports syncdb peaks at {import_rss / 1024:.1f} MiB. "
          f"Small set: {args.communities} x {small_residents:,} residents; large: {args.communities} x "
          f"{args.residents:,} (growth {growth:.2f}x for {n_large / max(n_small, 1):.1f}x the changes).")


if __name__ == "__main__":
    main()
