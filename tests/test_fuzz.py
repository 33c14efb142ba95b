"""The standing attack suite (issue 8): at least 2,000 hostile bundles a run, the seed printed.

Byte-mangled honest bundles, garbage headers, headers and payloads forged
with community C's own key (other communities' records, poison fields,
bombs, type confusion, oversized values) are merged into an office holding
communities A, B and C; none may crash the office, be accepted, or change
anything it should not (tests/attacks.py says exactly what each verdict
means). Run it again with the printed seed: SYNCDB_FUZZ_SEED=N. A bigger run:
SYNCDB_FUZZ_COUNT, or bench/fuzz.py.
"""

import os
import random

import pytest

from attacks import campaign


@pytest.mark.slow
def test_no_hostile_bundle_crashes_the_office_gets_in_or_is_partly_applied(tmp_path, capsys):
    seed = int(os.environ.get("SYNCDB_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    count = max(2000, int(os.environ.get("SYNCDB_FUZZ_COUNT", "2000")))
    with capsys.disabled():
        print(f"\nattack suite: SYNCDB_FUZZ_SEED={seed}, {count:,} mutants", flush=True)
    tally = campaign(tmp_path, count, seed, cli_share=0.003, http_count=60, batch=100)
    with capsys.disabled():
        print(tally.report(), flush=True)
    assert tally.tried >= count
    assert tally.clean(), f"SYNCDB_FUZZ_SEED={seed}\n{tally.report()}"
