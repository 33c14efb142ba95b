"""The attack suite at scale: hostile bundles against an office with three communities (issue 8).

Makes ``--count`` mutants (byte-mangled honest bundles, garbage headers,
headers and payloads forged with community C's own key: other communities'
records, poison fields, bombs, type confusion, oversized values) and merges
each as the office would, then prints

    tried / crashes / accepted / partial applies: 100,000 / 0 / 0 / 0

and, for anything that got through, its mutant class and what happened.
``tests/attacks.py`` defines the arena, the classes and the verdicts; the
slow test ``tests/test_fuzz.py`` runs the same campaign at 2,000.

    .venv/bin/python bench/fuzz.py                       # 100,000 mutants, a random seed (20-30 min)
    .venv/bin/python bench/fuzz.py --count 2000 --seed 7 # a quick check, reproducible by its seed

The exit status is 0 when nothing got through, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import attacks  # noqa: E402  (tests/ is put on the path just above)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="mutants merged in this process")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default: random, printed)")
    parser.add_argument("--cli-share", type=float, default=0.002,
                        help="share of mutants merged by a `syncdb merge` child instead (bombs always are)")
    parser.add_argument("--http", type=int, default=None,
                        help="mutants POSTed to a `syncdb serve` at the end (default: 1%% of --count, 20 to 1,000)")
    parser.add_argument("--no-heavy", action="store_true", help="leave out the bombs and huge values")
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="where the arena's store and folders go (default: /dev/shm where there is one: "
                             "the disk's fsyncs are not what this measures)")
    parser.add_argument("--classes", action="store_true",
                        help="also print, per mutant class, where its mutants were stopped")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    http = args.http if args.http is not None else max(20, min(1000, args.count // 100))
    print(f"seed {seed}: {args.count:,} mutants merged, {http:,} over HTTP "
          f"(again: bench/fuzz.py --count {args.count} --seed {seed})", flush=True)
    started = time.monotonic()
    last = [started]

    def progress(tally):
        now = time.monotonic()
        if now - last[0] >= 10 or tally.tried == args.count:
            last[0] = now
            rate = tally.tried / (now - started)
            left = (args.count - tally.tried) / rate if rate else 0
            print(f"  {tally.line()}  ({rate:.0f}/s, about {left / 60:.0f} min left)", flush=True)

    with tempfile.TemporaryDirectory(prefix="syncdb-fuzz-", dir=args.dir) as folder:
        tally = attacks.campaign(Path(folder), args.count, seed, cli_share=args.cli_share, http_count=http,
                                 heavy=not args.no_heavy, progress=progress)
    if args.classes:
        print(tally.classes())
    print(tally.report())
    print(f"{tally.line()}  ({time.monotonic() - started:.0f} s, seed {seed})")
    return 0 if tally.clean() else 1


if __name__ == "__main__":
    sys.exit(main())
