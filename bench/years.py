"""Years of nights: does a night cost the same after a year of history as in the first weeks?

    .venv/bin/python bench/years.py                  # 20 communities x 300 residents, 365 nights
    .venv/bin/python bench/years.py --quick          # 5 x 200, 60 nights: a few minutes
    .venv/bin/python bench/years.py --nights 730 --keep /var/tmp/years-street

What a store keeps for good grows every night: the audit ledger, the bundles
received, versions, check cases, the page-view log, files in the office's
folders. A night should cost what it changed, however old the office is.
This runs the nights a street office lives, over real HTTP, with the same
small street each time:

1. generates the communities (syncdb.sample, the domains huji, shebao and
   minzheng, as bench/city.py; ``--keep`` keeps them), enrols them, and
   merges each one's first bundle (untimed);
2. starts a real ``syncdb serve --no-merge`` on 127.0.0.1 and builds the
   published databases in memory, as ``syncdb publish`` does;
3. then, every night: changes 1% of each edited table's records in every
   community (bench/city.py's nights), and times
   - each community's ``push`` (its export and the HTTP send to serve),
   - the office's merge of its inbox after each push, as ``syncdb serve`` merges
     each bundle as it arrives, and of that the checks after it,
   - each community's ``pull`` of what the office sent back,
   - the publish refresh of the published databases (projection.Published),
   - ``syncdb status`` of the office store,
   - a member of staff's plaintext page views, logged to publish.db's chain
     (``--views`` a night);
   and notes the store's size, its ledger's rows and the files under the office folder.

Figures: for each duty, the median night of the last ``--window`` nights
against the median of the first (the first night of history excluded, whose
caches start cold); the goal is 1.2x at most (the issue's "nothing that
slows down as the years add up"). A table of the medians by window shows
the trend. Nothing is asserted: every figure is printed with PASS or MISS,
and the script exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from city import (SAMPLE_DOMAINS, SECRET, answering, bundles_of, copy_street, edit_night, free_port,  # noqa: E402
                  load_now, merge_and_checks_timed, prepare, sample_domains)
from syncdb import merge, projection, publishdb, status, transport  # noqa: E402
from syncdb.http_channel import HttpChannel  # noqa: E402
from syncdb.office import load_keyring  # noqa: E402
from syncdb.store import open_store  # noqa: E402

GOAL = 1.2  # a duty's median night at the end / at the start
DUTIES = ("push", "merge", "checks", "pull", "refresh", "status", "page view")


def serve_child(store: Path, port: int, env: dict, log: Path) -> subprocess.Popen:
    """A real ``syncdb serve --no-merge``: bundles pushed over HTTP wait in the inbox for the timed merge."""
    code = "import sys; from syncdb.cli import cli; sys.exit(cli.main(sys.argv[1:], prog_name='syncdb'))"
    return subprocess.Popen([sys.executable, "-c", code, "serve", str(store), "--host", "127.0.0.1",
                             "--port", str(port), "--no-merge"], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)


def child_env(work: Path) -> dict:
    from syncdb.schema import DEFAULT_SCHEMAS

    schemas = work / "schemas"
    schemas.mkdir(exist_ok=True)
    for domain in SAMPLE_DOMAINS:
        shutil.copy(Path(DEFAULT_SCHEMAS) / f"{domain}.toml", schemas)
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCDB_PASSPHRASE", "SYNCDB_KEY_FILE")}
    env.update(SYNCDB_SCHEMAS=str(schemas), SYNCDB_LANG="en", PYTHONPATH=str(BENCH.parent))
    return env


def timed_merge(store: Path, domains) -> tuple[float, float, int]:
    """(seconds, of them in the checks, changes) of one merge of the office's inbox."""
    took, summary, in_checks = merge_and_checks_timed(store, [], domains)
    # A bundle held (a gap, a schema the office lacks) leaves its community's night unmerged and the
    # night cheap: the figure would then measure less than the duty.
    if summary.rejected or summary.refused or summary.held or summary.blocked:
        raise SystemExit(f"a night's merge did not apply cleanly: {summary.lines()}")
    return took, in_checks, summary.changes


def office_status(store: Path, domains, keyring) -> status.Report:
    """``syncdb status`` of the office as its nightly scheduled task runs it: with SYNCDB_KEY_FILE set,
    so with the keyring, and with the record rules checked over every record (without the keyring
    they are skipped, and the figure would leave out its largest part)."""
    return status.status(store, domains, keyring)


def folder_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def ledger_rows(store: Path) -> int:
    conn = sqlite3.connect(f"file:{store / 'store.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
    finally:
        conn.close()


class Publishing:
    """The published databases in memory, built and refreshed as ``syncdb publish`` does."""

    def __init__(self, store: Path, domains):
        self.store, self.domains = store, domains
        tag = os.urandom(4).hex()
        self.writers = [sqlite3.connect(projection.memory_uri(f"{name}-{tag}"), uri=True, isolation_level=None,
                                        check_same_thread=False)
                        for name in (projection.MASKED_DB, projection.PLAIN_DB)]
        for conn in self.writers:
            projection.prepare_database(conn)
        self.published = projection.Published(*self.writers)
        self.update()

    def update(self) -> int:
        with open_store(self.store, SECRET, self.domains) as store:
            return self.published.update(store)

    def pages(self) -> int:
        """Pages of the three in-memory databases: what they weigh, a refresh's freed pages given back."""
        return sum(conn.execute("PRAGMA page_count").fetchone()[0]
                   for conn in (*self.writers, self.published.rowids))


def one_night(n: int, store: Path, folders: list[Path], url: str, domains, publishing: Publishing,
              keyring, views: int) -> dict:
    edited = edit_night(folders, domains, 10_000 + n)
    took: dict = {"edited": edited}
    silent = lambda *args, **kwargs: None  # noqa: E731
    # As `syncdb serve` does: each bundle pushed is merged as it arrives, one merge of the inbox each.
    took.update(push=0.0, merge=0.0, checks=0.0, changes=0)
    for folder in folders:
        started = time.perf_counter()
        result = transport.push(folder, HttpChannel(url), domains, SECRET, echo=silent)
        took["push"] += time.perf_counter() - started
        if not result.ok:
            raise SystemExit(f"night {n}: the push of {folder.name} failed")
        merged, in_checks, changes = timed_merge(store, domains)
        took["merge"] += merged
        took["checks"] += in_checks
        took["changes"] += changes
    started = time.perf_counter()
    for folder in folders:
        pulled = transport.pull(folder, HttpChannel(url), domains, SECRET)
        if pulled.unusable:
            raise SystemExit(f"night {n}: the pull of {folder.name} could not use what the office sent: "
                             f"{pulled.unusable}")
    took["pull"] = time.perf_counter() - started
    started = time.perf_counter()
    took["refreshed"] = publishing.update()
    took["refresh"] = time.perf_counter() - started
    if took["changes"] and not took["refreshed"]:
        raise SystemExit(f"night {n}: the publish refresh decrypted nothing of the {took['changes']} changes merged")
    started = time.perf_counter()
    office_status(store, domains, keyring)
    took["status"] = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(views):
        publishdb.log_view(store, keyring, "bench", f"/plain/户籍_人员/{n * views + i}")
    took["page view"] = (time.perf_counter() - started) / max(views, 1)
    took["store MiB"] = (store / "store.db").stat().st_size / 2**20
    took["ledger"] = ledger_rows(store)
    took["files"] = folder_files(store)
    took["published pages"] = publishing.pages()
    return took


def report(nights: list[dict], window: int) -> None:
    first, last = nights[1:1 + window], nights[-window:]
    print(f"\nsyncdb years benchmark: {len(nights)} nights; SQLite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} CPU(s); {load_now()} (1, 5, 15 min)")
    print("\nmedian night by window (seconds; a page view in ms):")
    header = ["nights", *DUTIES, "store MiB", "ledger rows", "office files"]
    rows = []
    for start in range(0, len(nights), window):
        part = nights[start:start + window]
        rows.append([f"{start + 1}-{start + len(part)}",
                     *(f"{statistics.median(x[d] for x in part) * (1000 if d == 'page view' else 1):.3f}"
                       for d in DUTIES),
                     f"{part[-1]['store MiB']:.1f}", f"{part[-1]['ledger']:,}", f"{part[-1]['files']:,}"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
    print(f"\nfigure (median of nights {len(nights) - len(last) + 1}-{len(nights)} / of nights 2-{1 + len(first)})"
          f"  goal  result")
    for duty in DUTIES:
        ratio = statistics.median(x[duty] for x in last) / statistics.median(x[duty] for x in first)
        print(f"  {duty:<10s} {ratio:5.2f}x  <= {GOAL}x  {'PASS' if ratio <= GOAL else 'MISS'}")
    grown = nights[-1]["published pages"] / nights[0]["published pages"]
    print(f"  published in-memory pages, last night / first: {grown:.2f}x (records changed, none added)")
    changes = statistics.median(x["changes"] for x in nights)
    print(f"  a night: {changes:,.0f} changes merged (median); the store grows "
          f"{(nights[-1]['store MiB'] - nights[0]['store MiB']) / max(len(nights) - 1, 1) * 1024:.0f} KiB a night")


def run(args, keep: Path, work: Path) -> None:
    domains = sample_domains()
    prepare(keep, args.communities, args.residents, domains)
    store, folders = copy_street(keep, work, args.communities)
    env = child_env(work)
    started = time.perf_counter()
    merge.merge(store, [p for folder in folders for p in bundles_of(folder)], SECRET, domains)
    print(f"street of {args.communities} x {args.residents:,} residents loaded in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    port = free_port()
    server = serve_child(store, port, env, work / "serve.log")
    try:
        url = f"http://127.0.0.1:{port}"
        answering(f"{url}/", server)
        publishing = Publishing(store, domains)
        keyring = load_keyring(store, SECRET)
        nights = []
        for n in range(1, args.nights + 1):
            nights.append(one_night(n, store, folders, url, domains, publishing, keyring, args.views))
            if n % args.window == 0 or n == args.nights:
                last = nights[-1]
                print(f"  night {n}: push {last['push']:.2f} s, merge {last['merge']:.2f} s (checks "
                      f"{last['checks']:.2f}), pull {last['pull']:.2f} s, refresh {last['refresh']:.2f} s, "
                      f"status {last['status']:.2f} s; {load_now()}", flush=True)
    finally:
        server.terminate()
        server.wait(20)
    report(nights, min(args.window, max(1, (len(nights) - 1) // 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--communities", type=int, default=20, help="communities (default 20)")
    parser.add_argument("--residents", type=int, default=300, help="residents per community (default 300)")
    parser.add_argument("--nights", type=int, default=365, help="nights (default 365)")
    parser.add_argument("--window", type=int, default=30, help="nights a window of the figures holds (default 30)")
    parser.add_argument("--views", type=int, default=50, help="plaintext page views logged a night (default 50)")
    parser.add_argument("--quick", action="store_true", help="5 communities x 200 residents, 60 nights")
    parser.add_argument("--keep", help="folder for the generated communities, reused across runs")
    args = parser.parse_args()
    if args.quick:
        args.communities, args.residents, args.nights, args.window = 5, 200, 60, 10
    if not 1 <= args.communities <= 999 or args.residents < 1 or args.nights < 3 or args.window < 1:
        parser.error("--communities takes 1 to 999, --residents and --window at least 1, --nights at least 3")
    work = Path(tempfile.mkdtemp(prefix="syncdb-years-"))
    try:
        run(args, Path(args.keep) if args.keep else work / "generated", work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
