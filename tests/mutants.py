"""Hostile bundles for the attack suite (tests/attacks.py): each mutant is a real bundle file's bytes.

The bundles are built here from docs/bundle-format.md, not with
``syncdb.bundle.write``: an attacker holding a community's key writes
whatever header and payload it likes and signs them. Four families:

- ``byte:*``      a valid bundle with its bytes flipped, cut, inserted, shuffled or re-framed;
- ``header:*``    an unsigned (badly signed) header of garbage: wrong types, 1,000 levels deep…;
- ``signed:*``    a header forged and signed with the community's own key: poison fields;
- ``payload:*``   a well-formed signed header over hostile changes: other communities' records,
                  stamps of another node, type confusion, oversized values, bombs.

Each mutant says what may come of it (``expect``): ``refuse`` (nothing of it may
reach the store), ``records`` (only the ``benign`` records may change) or
``either`` (applying it is as correct as refusing it; only crashes and damage count).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from datetime import date, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from stdnum.cn import ric

from syncdb.bundle import MAGIC, ZDICT
from syncdb.crypto import Keyring, PublicKey, suite

CHUNK_SIZE = 64 * 1024
PERSONS, HOUSEHOLDS = "huji.persons", "huji.households"


@dataclass
class Mutant:
    kind: str  # the class: "byte:flip", "signed:sequence=str", "payload:delete-foreign" …
    data: bytes
    expect: str  # "refuse", "records" or "either" (module docstring)
    origin: str  # the community whose queue it would enter
    benign: set = field(default_factory=set)  # (table, key tuple) that may change
    changes: list = field(default_factory=list)  # the change dicts it carries (for the read-back check)
    heavy: bool = False  # a bomb: run only in a memory-capped `syncdb merge` subprocess
    detail: str = ""


# --- residents -------------------------------------------------------------------------------

def id_number(n: int) -> str:
    """A valid, distinct ID number for each ``n`` (birth date and order from n)."""
    birth = date(1930, 1, 1) + timedelta(days=n // 900)
    body = f"441900{birth:%Y%m%d}{100 + n % 900:03d}"
    return body + ric.calc_check_digit(body + "0")


def resident(n: int, code: str, **extra) -> dict:
    number = id_number(n)
    birth = date(1930, 1, 1) + timedelta(days=n // 900)
    row = {"id_number": number, "name": f"居民{n}", "sex": "1" if int(number[16]) % 2 else "2",
           "ethnicity": "01", "birth_date": birth.isoformat(), "relationship": "02", "marital_status": "20",
           "phone": f"138{n % 10**8:08d}",
           "address": f"东莞市某街道{n}号", "community_code": code, "status": "normal"}
    row.update(extra)
    return row


def household(n: int, code: str, head: str) -> dict:
    return {"household_no": f"H{code[-3:]}{n:05d}", "household_type": "family", "head_id_number": head,
            "address": f"东莞市某街道{n}号", "community_code": code}


def insert_change(table: str, key_cols: list, row: dict, hlc: str, base=None) -> dict:
    cells = {c: v for c, v in row.items() if c not in key_cols and v is not None}
    return {"table": table, "op": "insert", "key": {c: row[c] for c in key_cols}, "cells": cells,
            "base": base or {}, "hlc": hlc}


# --- writing bundles by the documented layout --------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def lines_of(changes) -> bytes:
    """JSON lines as a community writes them; bytes items are taken as they are (hostile lines)."""
    out = []
    for change in changes:
        out.append(change if isinstance(change, bytes) else
                   json.dumps(change, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    return b"".join(out)


def compress(plaintext: bytes) -> bytes:
    c = zlib.compressobj(9, zdict=ZDICT)
    return c.compress(plaintext) + c.flush()


_BOMBS: dict = {}


def bomb_stream(block: bytes, megabytes: int) -> bytes:
    """A zlib stream (with the preset dictionary) of ``block`` repeated ``megabytes`` times, built fast.

    A full flush resets the compressor, so every block after the first compresses
    to the same bytes: repeat them, then fix the Adler-32 at the end.
    """
    cached = _BOMBS.get((block, megabytes))
    if cached:
        return cached
    c = zlib.compressobj(9, zdict=ZDICT)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    middle = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    last = c.compress(block) + c.flush()
    adler = 1
    for _ in range(megabytes):
        adler = zlib.adler32(block, adler)
    stream = first + middle * (megabytes - 2) + last[:-4] + struct.pack(">I", adler)
    _BOMBS[block, megabytes] = stream
    return stream


def seal(stream: bytes, recipient: PublicKey, chunk_size: int = CHUNK_SIZE) -> tuple[bytes, dict]:
    """The payload frames of a zlib stream, sealed chunk by chunk (STREAM), and the header's encryption."""
    s = suite(recipient.suite)
    eph = X25519PrivateKey.generate()
    ephemeral = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient.x25519))
    key = s.derive(shared, ephemeral + recipient.x25519, b"syncdb bundle v1")
    pieces = [stream[i:i + chunk_size] for i in range(0, len(stream), chunk_size)] or [b""]
    frames = []
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        aad = b"syncdb chunk" + ephemeral + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")
        sealed = s.seal(key, index.to_bytes(12, "big"), piece, aad)
        frames.append(struct.pack(">I", len(sealed)) + sealed)
    return b"".join(frames), {"suite": s.name, "kem": "x25519-hkdf", "ephemeral": _b64(ephemeral),
                              "chunk_size": chunk_size}


def header_json(fields) -> bytes:
    if isinstance(fields, bytes):
        return fields
    return json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "surrogatepass")


def assemble(header, payload: bytes, signer: Keyring | None) -> bytes:
    """magic ‖ header_len ‖ header ‖ payload_len ‖ payload ‖ signature; no signer: 64 random bytes."""
    raw = header_json(header)
    before = MAGIC + struct.pack(">I", len(raw)) + raw + struct.pack(">Q", len(payload))
    signature = signer.sign(before + hashlib.sha512(payload).digest()) if signer else os.urandom(64)
    return before + payload + signature


def honest_header(origin: str, sequence, changes, signer: Keyring, recipient: PublicKey, encryption: dict,
                  schemas: dict) -> dict:
    """The header syncdb itself would write for these changes (counts and HLC range as best they can be read)."""
    counts: dict = {}
    stamps = []
    for change in changes:
        # Every line is counted, a hostile one under the nearest true name, so that the
        # header adds up and the office has to read the payload to find the lie.
        change = change if isinstance(change, dict) else {}
        table = change.get("table") if isinstance(change.get("table"), str) else PERSONS
        op = change.get("op") if change.get("op") in ("insert", "update", "delete") else "update"
        counts.setdefault(table, {"insert": 0, "update": 0, "delete": 0})[op] += 1
        if isinstance(change.get("hlc"), str):
            stamps.append(change["hlc"])
    return {"format": 1, "kind": "changes", "origin": origin, "relay": [], "sequence": sequence,
            "created": "2026-01-01T00:00:00+0800", "schemas": schemas, "counts": counts,
            "changes": len(changes), "hlc": {"min": min(stamps, default=None), "max": max(stamps, default=None)},
            "recipient": recipient.id, "signer": signer.public.id, "compression": "zlib-d1",
            "encryption": encryption}


def signed_bundle(origin: str, sequence, changes, signer: Keyring, recipient: PublicKey, schemas: dict,
                  poison=None, stream: bytes | None = None, encrypt_to: PublicKey | None = None) -> bytes:
    """A bundle of ``changes`` (dicts or raw lines), its header passed through ``poison(header)``, signed."""
    payload, encryption = seal(stream if stream is not None else compress(lines_of(changes)),
                               encrypt_to or recipient)
    header = honest_header(origin, sequence, changes, signer, recipient, encryption, schemas)
    if poison:
        header = poison(header)
    return assemble(header, payload, signer)


def layout(data: bytes) -> dict:
    """Where the parts of a well-formed bundle are (for byte mutants of valid bundles)."""
    (hlen,) = struct.unpack(">I", data[8:12])
    end = 12 + hlen
    (plen,) = struct.unpack(">Q", data[end:end + 8])
    start = end + 8
    frames, at = [], start
    while at < start + plen:
        (n,) = struct.unpack(">I", data[at:at + 4])
        frames.append(data[at:at + 4 + n])
        at += 4 + n
    return {"header": data[12:end], "payload_start": start, "signature_start": at, "frames": frames}


# --- the mutant classes ----------------------------------------------------------------------
# Each generator takes the arena (tests/attacks.py: keys, sequences, residents, the store's
# versions) and a random.Random, and returns one Mutant. A is 441900003001, B …002, C …003:
# C attacks, A and B are the victims.

GENERATORS: list = []  # (kind, weight, generator); a weight under HEAVY is a bomb or a huge value
HEAVY = 0.05


def _flat(kind: str, weight: float, fn) -> None:
    GENERATORS.append((kind, weight, fn))


# byte-level: every one of them must be refused, whatever it hits.

def _valid(arena, rng) -> tuple[str, bytes]:
    return rng.choice(arena.valid)


def _byte(kind: str, weight: float, mutate) -> None:
    def make(arena, rng):
        for _ in range(20):
            origin, data = _valid(arena, rng)
            out = mutate(bytearray(data), rng, arena)
            if bytes(out) != data:
                return Mutant(kind, bytes(out), "refuse", origin)
        raise AssertionError(f"{kind} could not change the bundle")
    _flat(kind, weight, make)


def _flip(data, rng, arena):
    for _ in range(rng.choice([1, 1, 1, 2, 8])):
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
    return data


def _flip_in(part: str):
    def mutate(data, rng, arena):
        parts = layout(bytes(data))
        lo, hi = {"header": (12, 12 + len(parts["header"])),
                  "lengths": (8, 12),
                  "payload": (parts["payload_start"], parts["signature_start"]),
                  "signature": (parts["signature_start"], len(data))}[part]
        at = rng.randrange(lo, hi)
        data[at] ^= 1 << rng.randrange(8)
        return data
    return mutate


def _truncate(data, rng, arena):
    return data[:rng.randrange(len(data))]


def _insert(data, rng, arena):
    at = rng.randrange(len(data) + 1)
    return data[:at] + os.urandom(rng.choice([1, 4, 64, 4096])) + data[at:]


def _slice(data, rng):
    a = rng.randrange(len(data))
    return a, min(len(data), a + rng.choice([1, 8, 64, 1024, 70000]))


def _duplicate_slice(data, rng, arena):
    a, b = _slice(data, rng)
    return data[:b] + data[a:b] + data[b:]


def _remove_slice(data, rng, arena):
    a, b = _slice(data, rng)
    return data[:a] + data[b:]


def _reframe(op: str):
    """Whole payload frames duplicated, dropped or swapped, lengths fixed up, the signature kept."""
    def mutate(data, rng, arena):
        parts = layout(bytes(data))
        frames = list(parts["frames"])
        i = rng.randrange(len(frames))
        if op == "duplicate":
            frames.insert(i, frames[i])
        elif op == "remove":
            del frames[i]
        elif len(frames) > 1:
            j = rng.randrange(len(frames))
            frames[i], frames[j] = frames[j], frames[i]
        else:
            frames = frames * 2
        payload = b"".join(frames)
        header = parts["header"]
        return (MAGIC + struct.pack(">I", len(header)) + header + struct.pack(">Q", len(payload)) + payload
                + data[parts["signature_start"]:])
    return mutate


def _swap_signature(data, rng, arena):
    others = [d for _, d in arena.valid if d[-64:] != bytes(data[-64:])]
    return data[:-64] + rng.choice(others)[-64:]


def _extra(data, rng, arena):
    return data + os.urandom(rng.choice([1, 64, 100000]))


def _set_length(which: str):
    def mutate(data, rng, arena):
        parts = layout(bytes(data))
        value = rng.choice([0, 1, 2**31, 2**32 - 1, len(data), rng.randrange(1 << 20)])
        if which == "header":
            data[8:12] = struct.pack(">I", value % 2**32)
        elif which == "payload":
            at = 12 + len(parts["header"])
            data[at:at + 8] = struct.pack(">Q", rng.choice([value, 2**63, 2**64 - 1]))
        else:
            at = parts["payload_start"]
            data[at:at + 4] = struct.pack(">I", value % 2**32)
        return data
    return mutate


def _splice(data, rng, arena):
    """One bundle's header over another's payload and signature."""
    other = layout(rng.choice([d for _, d in arena.valid]))
    parts = layout(bytes(data))
    return (MAGIC + struct.pack(">I", len(other["header"])) + other["header"]
            + data[12 + len(parts["header"]):])


def _reformat_header(data, rng, arena):
    """The same header meaning, written with spaces: the signature covers bytes, not meaning."""
    parts = layout(bytes(data))
    raw = json.dumps(json.loads(parts["header"]), ensure_ascii=False, indent=1).encode()
    return MAGIC + struct.pack(">I", len(raw)) + raw + data[12 + len(parts["header"]):]


for _name, _weight, _fn in [
        ("flip", 12, _flip), ("flip-header", 4, _flip_in("header")), ("flip-lengths", 2, _flip_in("lengths")),
        ("flip-payload", 4, _flip_in("payload")), ("flip-signature", 2, _flip_in("signature")),
        ("truncate", 6, _truncate), ("insert", 4, _insert), ("duplicate-slice", 3, _duplicate_slice),
        ("remove-slice", 3, _remove_slice), ("duplicate-frame", 2, _reframe("duplicate")),
        ("remove-frame", 2, _reframe("remove")), ("swap-frames", 2, _reframe("swap")),
        ("swap-signature", 2, _swap_signature), ("extra-bytes", 2, _extra),
        ("header-length", 2, _set_length("header")), ("payload-length", 2, _set_length("payload")),
        ("frame-length", 2, _set_length("frame")), ("splice", 2, _splice), ("reformat-header", 1, _reformat_header),
]:
    _byte(f"byte:{_name}", _weight, _fn)
_flat("byte:empty", 0.2, lambda arena, rng: Mutant("byte:empty", b"", "refuse", "?"))
_flat("byte:random", 0.5, lambda arena, rng: Mutant("byte:random", MAGIC + os.urandom(rng.choice([4, 100, 5000])),
                                                    "refuse", "?"))


# header garbage, not signed (64 random bytes): refused, never a crash.

def _garbage(kind: str, weight: float, make_header) -> None:
    def make(arena, rng):
        origin, data = arena.valid[0]
        parts = layout(data)
        header = make_header(json.loads(parts["header"]), rng)
        payload = data[parts["payload_start"]:parts["signature_start"]]
        return Mutant(kind, assemble(header, payload, None), "refuse", origin)
    _flat(kind, weight, make)


def _with(name, value):
    return lambda h, rng: {**h, name: value}


def _without(name):
    return lambda h, rng: {k: v for k, v in h.items() if k != name}


_DEEP = b"[" * 1000 + b"]" * 1000
for _label, _make in [
        ("origin-list", _with("origin", ["441900003001"])), ("origin-object", _with("origin", {"a": 1})),
        ("origin-huge", _with("origin", "4" * 900_000)), ("origin-int", _with("origin", 441900003001)),
        ("origin-null", _with("origin", None)), ("origin-empty", _with("origin", "")),
        ("origin-path", _with("origin", "../../etc/passwd")), ("origin-nul", _with("origin", "441900003001\x00")),
        ("sequence-list", _with("sequence", [1])), ("kind-object", _with("kind", {"k": 1})),
        ("format-string", _with("format", "1")), ("encryption-list", _with("encryption", [])),
        ("missing-origin", _without("origin")), ("missing-sequence", _without("sequence")),
        ("missing-kind", _without("kind")), ("missing-encryption", _without("encryption")),
        ("missing-format", _without("format")), ("missing-recipient", _without("recipient")),
        ("empty-object", lambda h, rng: {}),
        ("deep-nesting", lambda h, rng: b'{"format":1,"origin":' + _DEEP + b',"sequence":1,"kind":"changes",'
                                        b'"encryption":{}}'),
        ("deep-header", lambda h, rng: _DEEP), ("deep-object", lambda h, rng: b'{"a":' * 1000 + b"1" + b"}" * 1000),
        ("not-object", lambda h, rng: rng.choice([b"[]", b"5", b'"x"', b"null", b"true"])),
        ("not-json", lambda h, rng: rng.choice([b"", b"{", b"{'a': 1}", b"\x00" * 10])),
        ("bad-utf8", lambda h, rng: header_json(h).replace(b'"kind"', b'"k\xffnd"')),
        ("lone-surrogate", _with("origin", "\ud800")), ("nan", lambda h, rng: header_json(h).replace(
            b'"format":1', b'"format":NaN')),
        ("duplicate-keys", lambda h, rng: header_json(h)[:-1] + b',"origin":"441900003001"}'),
        ("big-number", lambda h, rng: header_json(h).replace(b'"format":1', b'"format":1' + b"0" * 5000)),
]:
    _garbage(f"header:{_label}", 0.6, _make)


# signed poison headers: forged and signed with C's own key, over a valid payload of one new resident.

def _benign(arena) -> tuple[dict, tuple]:
    row = arena.fresh_resident(arena.C)
    change = insert_change(PERSONS, ["id_number"], row, arena.stamp(arena.C))
    return change, (PERSONS, (row["id_number"],))


def _poisoned(kind: str, expect: str, poison, encrypt_to=None, weight: float = 0.4) -> None:
    """``poison(arena, sequence)`` gives the function that rewrites the header (or None)."""
    def make(arena, rng):
        change, key = _benign(arena)
        sequence = arena.next_sequence(arena.C)
        data = signed_bundle(arena.C, sequence, [change], arena.keys[arena.C], arena.office_key, arena.schemas,
                             poison=poison(arena, sequence) if poison else None,
                             encrypt_to=encrypt_to(arena) if encrypt_to else None)
        return Mutant(kind, data, expect, arena.C, {key} if expect != "refuse" else set(), [change])
    _flat(kind, weight, make)


def _field(name, value):
    return lambda h: {**h, name: value}


def _static(rewrite):
    return lambda arena, sequence: rewrite


def _drop(name):
    return _static(lambda h: {k: v for k, v in h.items() if k != name})


def _enc(**fields):
    return _static(lambda h: {**h, "encryption": {**h["encryption"], **fields}})


_POISON_REFUSE = {
    "changes": [[], "1", -1, None, 2**70, 1.5, True, {}],
    "counts": [5, [], "x", None, {"huji.persons": 5}, {"huji.persons": {"insert": "1"}},
               {"huji.persons": {"insert": -1}}, {"huji.persons": []}, {"nope.table": {"insert": 1}},
               {"huji": {"insert": 1}}, {"": {}}],
    "schemas": [[], 5, "x", None, {"huji": 5}, {"huji": []}, {"huji": {"fingerprint": 5, "version": "1"}}],
    "kind": ["resolutions", "x", 5, None, [], ""],
    "format": ["1", 1.0, True, 2, None, 0],
    "relay": ["x", 5, {}, [5], None, [[]], [{"a": 1}]],
    "compression": [5, None, "zlib", "", ["zlib-d1"]],
    "encryption": [[], "x", 5, None, {}],
    "recipient": [5, None, [], "", "0" * 16],
}
for _name, _values in _POISON_REFUSE.items():
    for _value in _values:
        _poisoned(f"signed:{_name}={json.dumps(_value)[:20]}", "refuse", _static(_field(_name, _value)))
for _name in ("origin", "sequence", "kind", "encryption", "format", "recipient", "compression"):
    _poisoned(f"signed:missing-{_name}", "refuse", _drop(_name))
for _name in ("relay", "schemas", "counts", "changes", "created", "hlc", "signer"):
    _poisoned(f"signed:missing-{_name}", "either", _drop(_name))
for _label, _value in [("str", "NEXT"), ("float", 2.5), ("null", None), ("list", "[NEXT]"), ("2**70", 2**70),
                       ("zero", 0), ("negative", -1), ("true", True), ("float-next", "NEXT.0"), ("huge", 2**63)]:
    def _sequence_poison(arena, sequence, value=_value):
        real = {"NEXT": str(sequence), "[NEXT]": [sequence], "NEXT.0": float(sequence)}.get(value, value) \
            if isinstance(value, str) else value
        return _field("sequence", real)
    _poisoned(f"signed:sequence={_label}", "refuse", _sequence_poison)
for _label, _fields in [("suite", {"suite": 5}), ("suite-unknown", {"suite": "rot13"}), ("kem", {"kem": None}),
                        ("ephemeral-b64", {"ephemeral": "!!!"}), ("ephemeral-int", {"ephemeral": 5}),
                        ("ephemeral-short", {"ephemeral": "AAAA"}), ("ephemeral-zero", {"ephemeral": _b64(bytes(32))}),
                        ("chunk-negative", {"chunk_size": -1}), ("chunk-zero", {"chunk_size": 0}),
                        ("chunk-huge", {"chunk_size": 2**70}), ("chunk-string", {"chunk_size": "65536"}),
                        ("chunk-null", {"chunk_size": None}), ("chunk-float", {"chunk_size": 1.5})]:
    _poisoned(f"signed:encryption.{_label}", "refuse", _enc(**_fields))
for _name, _values in {"hlc": [5, [], {"min": 5}, {"min": "x", "max": []}, None],
                       "created": [5, [], None, "x" * 10000], "signer": [5, None, "0" * 16],
                       "acknowledged": ["x", -1, [1]], "zzz-unknown": [{"a": [1] * 100}]}.items():
    for _value in _values:
        _poisoned(f"signed:{_name}={json.dumps(_value)[:20]}", "either", _static(_field(_name, _value)))
_poisoned("signed:origin=A", "refuse", lambda arena, sequence: _field("origin", arena.A))
_poisoned("signed:origin=office", "refuse", lambda arena, sequence: _field("origin", arena.office_code))
_poisoned("signed:replay", "refuse", lambda arena, sequence: _field("sequence", max(1, sequence - 1)))
_poisoned("signed:recipient=other-office", "refuse",
          lambda arena, sequence: _field("recipient", arena.other_office.id))
_poisoned("signed:encrypted-to-other-office", "refuse", None, encrypt_to=lambda arena: arena.other_office)
_poisoned("signed:to-other-office", "refuse",
          lambda arena, sequence: _field("recipient", arena.other_office.id),
          encrypt_to=lambda arena: arena.other_office)
_poisoned("signed:relay=[C]", "either", lambda arena, sequence: _field("relay", [arena.C]))
_poisoned("signed:relay=[A]", "either", lambda arena, sequence: _field("relay", [arena.A]))
_poisoned("signed:relay=[office]", "either", lambda arena, sequence: _field("relay", [arena.office_code]))


# signed payloads: a well-formed header signed by C over hostile changes.

def _payload(arena, kind: str, changes: list, expect: str = "records", benign=(), *, origin=None,
             poison=None, stream=None, heavy=False, detail="") -> Mutant:
    origin = origin or arena.C
    data = signed_bundle(origin, arena.next_sequence(origin), changes, arena.keys[arena.C], arena.office_key,
                         arena.schemas, poison=poison, stream=stream)
    return Mutant(kind, data, expect, origin, set(benign), [c for c in changes if isinstance(c, dict)], heavy,
                  detail)


HOSTILE: dict = {}  # kind -> fn(arena, rng) -> hostile changes (for the property test)


def _hostile(kind: str, weight: float = 1.0):
    """A generator of hostile changes; the bundle also carries one new resident of C's, which may apply."""
    def register(fn):
        HOSTILE[kind] = fn
        def make(arena, rng):
            change, key = _benign(arena)
            hostile = fn(arena, rng)
            return _payload(arena, kind, [change] + hostile, "records", {key})
        _flat(kind, weight, make)
        return fn
    return register


def _victim(arena, rng) -> tuple[str, int]:
    code = rng.choice([arena.A, arena.B])
    return code, rng.choice(arena.persons[code])


def _fake_cells(arena, rng, n: int) -> dict:
    return rng.choice([{"name": f"冒名{n}"}, {"phone": f"139{n % 10**8:08d}"}, {"address": f"伪造地址{n}号"},
                       {"status": "moved_out"}, {"status": "deceased"},
                       {"name": f"冒名{n}", "phone": f"139{n % 10**8:08d}", "address": f"伪造地址{n}号"}])


def _update(arena, code, n, cells, node=None, base=True) -> dict:
    key = (id_number(n),)
    versions = arena.versions(PERSONS, key) if base else {}
    return {"table": PERSONS, "op": "update", "key": {"id_number": key[0]}, "cells": cells,
            "base": {c: versions[c] for c in cells if c in versions}, "hlc": arena.stamp(node or arena.C)}


def _delete(arena, n, node=None, base=True) -> dict:
    key = (id_number(n),)
    return {"table": PERSONS, "op": "delete", "key": {"id_number": key[0]}, "cells": {},
            "base": arena.versions(PERSONS, key) if base else {}, "hlc": arena.stamp(node or arena.C)}


@_hostile("payload:update-foreign", 3)
def _update_foreign(arena, rng):
    code, n = _victim(arena, rng)
    return [_update(arena, code, n, _fake_cells(arena, rng, n))]


@_hostile("payload:update-foreign-nobase", 2)
def _update_foreign_nobase(arena, rng):
    code, n = _victim(arena, rng)
    return [_update(arena, code, n, _fake_cells(arena, rng, n), base=False)]


@_hostile("payload:update-foreign-stamped-as-owner", 2)
def _update_as_owner(arena, rng):
    code, n = _victim(arena, rng)
    return [_update(arena, code, n, _fake_cells(arena, rng, n), node=code)]


@_hostile("payload:update-foreign-list-base", 1)
def _update_list_base(arena, rng):
    """An office-style base (a list of versions) retiring the owner's version."""
    code, n = _victim(arena, rng)
    change = _update(arena, code, n, _fake_cells(arena, rng, n))
    change["base"] = {c: [v] for c, v in change["base"].items()}
    return [change]


@_hostile("payload:delete-foreign", 3)
def _delete_foreign(arena, rng):
    code, n = _victim(arena, rng)
    return [_delete(arena, n)]


@_hostile("payload:delete-foreign-nobase", 2)
def _delete_foreign_nobase(arena, rng):
    code, n = _victim(arena, rng)
    return [_delete(arena, n, base=False)]


@_hostile("payload:delete-foreign-stamped-as-owner", 2)
def _delete_as_owner(arena, rng):
    code, n = _victim(arena, rng)
    return [_delete(arena, n, node=code)]


@_hostile("payload:insert-under-foreign-code", 2)
def _insert_foreign_code(arena, rng):
    code = rng.choice([arena.A, arena.B])
    row = arena.fresh_resident(code)
    return [insert_change(PERSONS, ["id_number"], row, arena.stamp(rng.choice([arena.C, code])))]


@_hostile("payload:move-foreign", 2)
def _move_foreign(arena, rng):
    """A's resident moved into C with a new address, based on A's versions."""
    code, n = _victim(arena, rng)
    return [_update(arena, code, n, {"community_code": arena.C, "address": f"C社区新址{n}号"})]


@_hostile("payload:reregister-foreign", 2)
def _reregister(arena, rng):
    """A's resident's ID number registered in C with another name, phone and address."""
    code, n = _victim(arena, rng)
    row = resident(n, arena.C, name=f"改名{n}", phone=f"137{n % 10**8:08d}", address=f"C社区{n}号")
    return [insert_change(PERSONS, ["id_number"], row, arena.stamp(arena.C))]


@_hostile("payload:reregister-foreign-with-base", 2)
def _reregister_based(arena, rng):
    code, n = _victim(arena, rng)
    row = resident(n, arena.C, name=f"改名{n}", phone=f"137{n % 10**8:08d}", address=f"C社区{n}号")
    return [insert_change(PERSONS, ["id_number"], row, arena.stamp(arena.C),
                          base=arena.versions(PERSONS, (row["id_number"],)))]


@_hostile("payload:household-foreign", 1)
def _household_foreign(arena, rng):
    code = rng.choice([arena.A, arena.B])
    number = rng.choice(arena.households[code])
    key = (number,)
    versions = arena.versions(HOUSEHOLDS, key)
    return [rng.choice([
        {"table": HOUSEHOLDS, "op": "update", "key": {"household_no": number}, "cells": {"address": "伪造户址"},
         "base": {"address": versions.get("address")}, "hlc": arena.stamp(arena.C)},
        {"table": HOUSEHOLDS, "op": "delete", "key": {"household_no": number}, "cells": {}, "base": versions,
         "hlc": arena.stamp(arena.C)}])]


@_hostile("payload:give-own-record-away", 1)
def _give_away(arena, rng):
    n = rng.choice(arena.persons[arena.C])
    return [_update(arena, arena.C, n, {"community_code": rng.choice([arena.A, arena.B])})]


@_hostile("payload:own-record-stamped-as-other", 2)
def _stamped_as_other(arena, rng):
    n = rng.choice(arena.persons[arena.C])
    node = rng.choice([arena.A, arena.B, arena.office_code])
    return [_update(arena, arena.C, n, {"phone": f"136{n % 10**8:08d}"}, node=node)]


@_hostile("payload:bad-stamp", 2)
def _bad_stamp(arena, rng):
    n = rng.choice(arena.persons[arena.C])
    change = _update(arena, arena.C, n, {"phone": f"135{n % 10**8:08d}"})
    good = change["hlc"]
    change["hlc"] = rng.choice([good.rsplit(".", 1)[0] + ".", "x", "", good[1:], "9" * 40 + "." + arena.C,
                                good.replace(".", ":"), good + ".extra", good[:15] + ".9999999." + arena.C,
                                "-00000000000001.000000." + arena.C])
    return [change]


# type confusion: one field of a change given the wrong type or an unknown value.

def _confused(kind: str, field_name: str, values, target="own"):
    def make(arena, rng):
        change, key = _benign(arena)
        if target == "own" or rng.random() < 0.5:
            n = rng.choice(arena.persons[arena.C])
            code = arena.C
        else:
            code, n = _victim(arena, rng)
        hostile = _update(arena, code, n, {"phone": f"134{n % 10**8:08d}"})
        value = rng.choice(values)
        value = value(hostile) if callable(value) else value
        if value is _MISSING:
            del hostile[field_name]
        else:
            hostile[field_name] = value
        return _payload(arena, kind, [change, hostile], "records", {key})
    _flat(kind, 0.6, make)


_MISSING = object()
_confused("payload:type-key", "key", [lambda c: list(c["key"].values()), lambda c: c["key"]["id_number"], 5, None,
                                      {}, lambda c: {"id_number": [c["key"]["id_number"]]},
                                      lambda c: {"id_number": {"v": c["key"]["id_number"]}}, {"id_number": 12345},
                                      lambda c: {"nope": c["key"]["id_number"]}, _MISSING], target="any")
_confused("payload:type-cells", "cells", [["phone"], "13800000000", None, 5, {"phone": {"x": 1}}, {"phone": [1]},
                                          {"phone": 1.5e300}, {"_key": "x"}, {"_versions": "x"}, {"_exists": 0},
                                          {"community_code": None}, {"community_code": 441900003003},
                                          {"name": None, "status": None}, _MISSING], target="any")
_confused("payload:type-base", "base", [["x"], "x", 5, {"phone": 5}, {"phone": ["a", "b"]}, {"phone": {"x": 1}},
                                        {"phone": [5]}], target="any")
_confused("payload:type-hlc", "hlc", [5, None, [], 1.5, {"ms": 1}, _MISSING], target="any")
_confused("payload:type-op", "op", ["upsert", "", None, 5, ["update"], "DELETE", "insert ", _MISSING], target="any")
_confused("payload:type-table", "table", ["huji.nope", "nope.persons", "huji", 5, None, ["huji.persons"],
                                          "huji.persons; DROP TABLE x", "huji.persons\x00", "huji..persons",
                                          "huji.households", _MISSING], target="any")


def _bad_lines(arena, rng) -> list:
    n = rng.choice(arena.persons[arena.C])
    good = lines_of([_update(arena, arena.C, n, {"phone": f"133{n % 10**8:08d}"})])
    return rng.choice([
        [b"not json\n"], [b"[1,2]\n"], [b"5\n"], [b'"s"\n'], [b"null\n"], [b"\n"], [b"\xff\xfe\n"], [b"{}\n"],
        [good[:-1]],  # no line end
        [good.replace(b'"133', b'"\\ud800')],  # a lone surrogate in a value
        [good.replace(b'"133', b'"\\u0000')], [good.replace(b'"phone":"', b'"phone":NaN,"x":"')],
        [good.replace(b'"phone":"', b'"phone":Infinity,"x":"')], [good.replace(b'"phone":"', b'"phone":1e999,"x":"')],
        [b"[" * 100_000 + b"]" * 100_000 + b"\n"], [good.replace(b'"op":"update"', b'"op":"update","op":"delete"')],
        [b" " * 1_000_000 + b"\n"], [good + b"\x00\n"],
    ])


def _lines_mutant(arena, rng):
    change, key = _benign(arena)
    return _payload(arena, "payload:bad-line", [change] + _bad_lines(arena, rng), "records", {key})


_flat("payload:bad-line", 2, _lines_mutant)


# oversized values and many changes.

def _huge_value(kind: str, column: str, megabytes: int):
    def make(arena, rng):
        change, key = _benign(arena)
        n = rng.choice(arena.persons[arena.C])
        hostile = _update(arena, arena.C, n, {column: "张" * (megabytes * 2**20 // 3)})
        return _payload(arena, kind, [change, hostile], "records", {key})
    _flat(kind, 0.02, make)


_huge_value("payload:5-MB-name", "name", 5)
_huge_value("payload:20-MB-line", "address", 20)


def _many_updates(kind: str, based: bool):
    """n updates of one cell of C's own, in one small bundle, with no base or all on the same base:
    n concurrent versions of one cell. A merge must not be quadratic in n."""
    def make(arena, rng):
        n = rng.choice(arena.persons[arena.C])
        base = {"phone": arena.versions(PERSONS, (id_number(n),))["phone"]} if based else {}
        count = rng.randint(1000, 4000)
        changes = [{"table": PERSONS, "op": "update", "key": {"id_number": id_number(n)},
                    "cells": {"phone": f"132{i:08d}"}, "base": base, "hlc": arena.stamp(arena.C)}
                   for i in range(count)]
        return _payload(arena, kind, changes, "either", detail=f"{count} updates")
    _flat(kind, 0.05, make)


_many_updates("payload:many-updates-of-one-cell", based=False)
_many_updates("payload:many-updates-of-one-cell-same-base", based=True)


def _bomb(kind: str, block: bytes):
    def make(arena, rng):
        stream = bomb_stream(block, 512)
        return _payload(arena, kind, [], "refuse", stream=stream, heavy=True,
                        detail=f"{len(stream):,} bytes of zlib, 512 MiB inflated")
    _flat(kind, 0.01, make)


_bomb("payload:bomb-one-line", b"0" * 2**20)
_bomb("payload:bomb-empty-objects", b"{}\n" * (2**20 // 3))

# Relay games: C claims to forward A's changes.

def _relay_foreign(arena, rng):
    code, n = _victim(arena, rng)
    change = _update(arena, code, n, _fake_cells(arena, rng, n), node=code)
    return _payload(arena, "payload:relay-foreign-changes", [change], "records",
                    poison=lambda h: {**h, "relay": [code]})


_flat("payload:relay-foreign-changes", 1, _relay_foreign)
