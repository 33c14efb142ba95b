"""bundle.read_json_lines reads each line of a text as bundle.read_json reads it alone.

The audit ledger's entries are read this way (audit.lines): the run of 19 digits that sends a line to
the standard decoder is looked for once in the whole entry, not in each of its lines.
"""

import math
import random

from syncdb.bundle import read_json, read_json_lines


def test_a_long_whole_number_in_one_line_is_read_exactly_in_every_line():
    big = 10 ** 20 + 1  # past 64 bits: orjson does not keep it
    data = f'["a", 1]\n\n[{big}, "x"]\n[1.5, NaN]\n{{"k": "\\ud800"}}\n'.encode()
    got = read_json_lines(data)
    assert got[0] == ["a", 1] and got[1] == [big, "x"] and type(got[1][0]) is int
    assert got[2][0] == 1.5 and math.isnan(got[2][1])
    assert got[3] == {"k": "\ud800"}
    assert len(got) == 4  # the empty line is no text


def test_without_long_digits_each_line_as_read_json_reads_it():
    rnd = random.Random(14)
    pieces = ['"名字"', "1234567890123456", "-0.5", "NaN", "true", "null", '"\\ud83d"', '{"cells": ["a", "b"]}']
    for _ in range(300):
        lines = [f"[{', '.join(rnd.choice(pieces) for _ in range(rnd.randrange(1, 5)))}]" for _ in range(5)]
        data = "\n".join(lines).encode()
        want = [read_json(line.encode()) for line in lines]
        got = read_json_lines(data)
        assert repr(got) == repr(want), (data, got, want)  # repr: NaN is not equal to itself
