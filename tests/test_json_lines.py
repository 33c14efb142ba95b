"""bundle.read_json_lines reads each line of a text as bundle.read_json reads it alone.

The audit ledger's entries are read this way (audit.lines): the whole entry is translated once
(bundle._DIGITS) and only the lines whose translation holds a run of 19 digits go to the standard decoder.
"""

import json
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


def test_only_the_lines_with_long_digits_go_to_the_standard_decoder():
    rnd = random.Random(19)
    pieces = ['"0123456789abcdef0123"', "123456789012345678901", '"x"', "12345678901234567", "-1e400",
              "-9223372036854775809",
              '"99999999999999999999"', '"中文1234567890123456789"', "18446744073709551616"]
    for _ in range(300):
        lines = [f"[{', '.join(rnd.choice(pieces) for _ in range(rnd.randrange(1, 4)))}]" for _ in range(6)]
        data = "\n".join(lines).encode()
        assert repr(read_json_lines(data)) == repr([read_json(line.encode()) for line in lines]), data


def test_read_json_reads_as_the_standard_decoder_does():
    """Whole numbers past 64 bits stay exact wherever they stand (orjson would read them as floats), and the
    run of 19 digits that says so is told in any text: after a multi-byte character, in a string, at either
    end."""
    rnd = random.Random(20)
    pieces = ["1" * 19, "9" * 25, "-" + "7" * 20, "12345678901234567", '"é' + "5" * 19 + '"', '"名"', "0.5",
              "NaN", '"\\ud800"', "true", "null", "18446744073709551615", "18446744073709551616"]
    for _ in range(2000):
        text = f"[{', '.join(rnd.choice(pieces) for _ in range(rnd.randrange(1, 6)))}]".encode()
        assert repr(read_json(text)) == repr(json.loads(text.decode())), text


def test_a_negative_19_digit_number_is_read_exactly():
    """-9223372036854775809 has 19 digits: past 64 bits signed, orjson reads it as a float."""
    for text in (b"-9223372036854775809", b"[-9999999999999999999]", b'{"a": -9223372036854775809}'):
        assert repr(read_json(text)) == repr(json.loads(text.decode())), text
        assert repr(read_json_lines(b"[1]\n" + text)) == repr([[1], json.loads(text.decode())]), text


def test_the_lines_without_long_digits_are_read_by_orjson(monkeypatch):
    """Which lines take the fast path (the values alone cannot say: both decoders agree on them)."""
    from syncdb import bundle

    seen = []
    read_short = bundle._read_short
    monkeypatch.setattr(bundle, "_read_short", lambda line: seen.append(line) or read_short(line))
    lines = [b"[1]", b"[" + b"9" * 19 + b"]", b'["x"]', b'["' + b"1" * 18 + b'", 2]', b'"' + b"5" * 25 + b'"',
             '"中'.encode() + b"1" * 18 + b'"']
    bundle.read_json_lines(b"\n".join(lines))
    assert seen == [lines[0], lines[2], lines[3], lines[5]]
