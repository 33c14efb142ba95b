"""Pages while publish refreshes: more of them than bench/city.py's one browsed night gives.

city.py fetches pages during the first night's refresh only, so its "page during a refresh"
figure rests on the two or three pages that land in that window. This benchmark takes a
street city.py kept (``--keep``, its communities already generated; without it, a small
street generated for the run), loads it into a new store, starts publish, measures the
masked persons table and facet pages outside any refresh, then runs ``--nights`` nights,
fetching the pages back to back during each night's refresh. With ``--idle``, between each two
browsed nights comes one refreshed with nobody reading, the refresh's own time beside it. It
prints each refresh's time and every page's time against its median outside, and the figures'
goals from issue 14.

Loading the street comes first, each time (about four minutes at 50 x 5,000); ``--loaded DIR``
keeps the loaded street in DIR and runs on it again the next time (its nights go on changing
it), so a change to the refresh is measured without loading again:

    .venv/bin/python bench/refresh_pages.py --keep /var/tmp/city-10x5000 --communities 10
    .venv/bin/python bench/refresh_pages.py --keep /var/tmp/city-storesize/street --communities 50 \
        --nights 5 --idle --loaded /var/tmp/refresh-50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import city  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="a folder bench/city.py --keep generated (default: a street made now)")
    parser.add_argument("--communities", type=int, default=3, help="communities of it to load (default 3)")
    parser.add_argument("--residents", type=int, default=2000,
                        help="residents per community, for a street made now (default 2,000)")
    parser.add_argument("--nights", type=int, default=5, help="browsed nights (default 5)")
    parser.add_argument("--samples", type=int, default=10, help="pages of each kind outside a refresh")
    parser.add_argument("--idle", action="store_true", help="between each two browsed nights, one with nobody reading")
    parser.add_argument("--loaded", help="a folder for the loaded street, kept and run on again the next time")
    args = parser.parse_args()
    domains = city.sample_domains()
    with tempfile.TemporaryDirectory(prefix="refresh-pages-") as tmp:
        work = Path(tmp)
        keep = Path(args.keep) if args.keep else work / "street"
        store, folders = loaded(Path(args.loaded) if args.loaded else work / "run", keep, args, domains)
        publisher = city.Publisher(store, city.child_env(work), work / "publish.log")
        try:
            made, filled = publisher.next("make"), publisher.next("reload")
            city.answering(f"{publisher.url}/-/login", publisher.process)
            startup = (made[1] - made[0]) + (filled[1] - filled[0])
            session, kinds = city.sign_in(publisher.url), city.pages(domains)
            outside = {kind: [] for kind in kinds}
            for _ in range(args.samples):
                for kind, path in kinds.items():
                    outside[kind].append(city.fetch(session, f"{publisher.url}/{city.projection.MASKED_DB}{path}")[1])
            medians = {kind: statistics.median(times) for kind, times in outside.items()}
            print(f"publish start-up {startup:.2f} s; pages outside a refresh (median): "
                  + ", ".join(f"{kind} {took * 1e3:,.0f} ms" for kind, took in medians.items()), flush=True)
            ratios, spans, idle = [], [], []
            # Each night's edits are drawn from its seed: on a --loaded street the nights go on from the
            # last run's (the inbox keeps every bundle) rather than make the same edits again.
            seed = 100 + sum(1 for _ in city.office.inbox_dir(store).iterdir())
            for n in range(args.nights):
                if args.idle and n:
                    took = idle_night(publisher, store, folders, domains, seed + 2 * n - 1)
                    idle.append(took)
                    print(f"  night {n} with nobody reading: refreshed in {took:.2f} s ({took / startup:.1%} "
                          f"of start-up)", flush=True)
                merged = paused_night(publisher, store, folders, domains, seed + 2 * n)
                session.close()
                seen, (start, end) = city.pages_until(publisher, session, kinds)
                during = [(kind, took / medians[kind]) for kind, at, took in seen if at < end and at + took > start]
                ratios += [r for _, r in during]
                spans.append(end - start)
                print(f"  night {n + 1}: {merged[1]:,} changes; refreshed in {end - start:.2f} s "
                      f"({(end - start) / startup:.1%} of start-up); pages in it: "
                      + (", ".join(f"{kind} {r:.2f}x" for kind, r in during) or "none"), flush=True)
        finally:
            publisher.stop()
    worst = max(ratios) if ratios else float("nan")
    print(f"browsed refresh / start-up: median {statistics.median(spans) / startup:.1%}, "
          f"worst {max(spans) / startup:.1%} (goal <= {city.GOAL_REFRESH:.0%})")
    if idle:
        print(f"refresh with nobody reading / start-up: median {statistics.median(idle) / startup:.1%}; "
              f"browsed / idle, medians: {statistics.median(spans) / statistics.median(idle):.1f}x")
    print(f"page during a refresh / outside: worst {worst:.2f}x, median "
          f"{statistics.median(ratios) if ratios else float('nan'):.2f}x of {len(ratios)} pages "
          f"(goal <= {city.GOAL_DURING}x)")


def loaded(folder: Path, keep: Path, args, domains) -> tuple[Path, list[Path]]:
    """The street loaded into a store in ``folder``: loaded now, or as an earlier run with ``--loaded`` left it."""
    if (folder / "loaded").exists():
        communities, *street = (folder / "loaded").read_text().splitlines()
        if int(communities) != args.communities:
            raise SystemExit(f"{folder} holds {communities} communities loaded, not {args.communities}: "
                             f"give another --loaded folder")
        # --keep names the street measured: another street's must not be measured under its name unawares.
        if args.keep and street and street[0] != str(Path(args.keep).resolve()):
            raise SystemExit(f"{folder} holds {street[0] or 'a street generated for its first run'} loaded, "
                             f"not --keep {args.keep}: give another --loaded folder, or no --keep")
        communities = int(communities)
        print(f"  the street loaded in {folder} (its nights go on from the last run)", flush=True)
        store, folders = folder / "office", [folder / city.code_of(n) for n in range(1, communities + 1)]
        # A run stopped in a night (Ctrl-C, a kill) may have left bundles exported and never received, or
        # received and not applied: every later night's bundles would wait for them. This merge takes them
        # in, and upgrades a store made by older code.
        inbox = city.office.inbox_dir(store)
        behind = [path for each in folders for path in city.bundles_of(each) if not (inbox / path.name).exists()]
        summary = city.merge_and_checks_timed(store, behind, domains)[1]
        if summary.rejected or summary.refused or summary.held:
            raise SystemExit(f"the street in {folder} does not merge cleanly: {summary.lines()}")
        return store, folders
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty and holds no loaded street: give an empty or new folder")
    if not args.keep:
        city.prepare(keep, args.communities, args.residents, domains)
    store, folders = city.copy_street(keep, folder, args.communities)
    for n, path in enumerate(folders, start=1):
        city.merge_timed(store, city.bundles_of(path), domains, None)
        print(f"  community {n} loaded", flush=True)
    # Last, and whole or not at all: a folder without it is a street half loaded, which is refused above.
    (folder / "loaded.tmp").write_text(f"{args.communities}\n{Path(args.keep).resolve() if args.keep else ''}\n")
    (folder / "loaded.tmp").replace(folder / "loaded")
    return store, folders


def paused_night(publisher, store: Path, folders: list[Path], domains, seed: int) -> tuple[float, int, float]:
    """A night merged while publish is paused, so that its refresh starts once the whole night is in; as
    city.night."""
    publisher.pause()
    try:
        return city.night(store, folders, domains, seed, None)
    finally:
        publisher.resume()


def idle_night(publisher, store: Path, folders: list[Path], domains, seed: int) -> float:
    """A night merged while publish is paused, then refreshed with no page asked for: the refresh's seconds."""
    paused_night(publisher, store, folders, domains, seed)
    started, ended = publisher.next("reload")
    return ended - started


if __name__ == "__main__":
    main()
