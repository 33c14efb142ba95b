"""Issue #8, the bundle side: hostile headers, bombs, a full quarantine, the wrong office, a wrong key.

Bundles here are forged as a thief holding a community's signing key could
forge them: any header, any payload, validly signed. Each fault of the issue
has a test named for it.
"""

import hashlib
import io
import json
import os
import sqlite3
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from syncdb import bundle, community, limits, merge, migrations, office, transport, workdir
from syncdb.crypto import Keyring, PublicKey, b64, suite

SYNCDB = str(Path(sys.executable).with_name("syncdb"))
A, C = "441900003001", "441900003002"
OCTETS = {"Content-Type": "application/octet-stream"}


# ------------------------------------------------------------------ forging bundles

def ring_of(c) -> Keyring:
    return Keyring.load(community.state_dir(c.path) / "keyring.json", c.secret)


def office_key(store) -> PublicKey:
    return PublicKey.read(office.public_key_path(store))


def stamp(i: int, node: str = C) -> str:
    return f"{1_800_000_000_000 + i:015d}.000000.{node}"


def person_change(i: int, node: str = C, **cells) -> dict:
    return {"table": "huji.persons", "op": "insert", "key": {"id_number": f"44190019800101{i:04d}"},
            "cells": {"name": f"居民{i}", "community_code": node, **cells}, "base": {}, "hlc": stamp(i, node)}


def seal(blocks, recipient: PublicKey) -> tuple[bytes, bytes]:
    """The ephemeral key and the payload frames of ``blocks`` of plaintext, compressed as they come.

    Blocks are fed one at a time, so a test can seal a gigabyte of plaintext without holding it.
    """
    eph = X25519PrivateKey.generate()
    ephemeral = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient.x25519))
    key = bundle._chunk_key(shared, ephemeral, recipient.x25519, recipient.suite)
    s = suite(recipient.suite)
    compressor = zlib.compressobj(6, zdict=bundle.ZDICT)
    stream = bytearray()
    for block in blocks:
        stream += compressor.compress(block)
    stream += compressor.flush()
    pieces = [bytes(stream[i:i + bundle.CHUNK_SIZE]) for i in range(0, len(stream), bundle.CHUNK_SIZE)]
    frames = bytearray()
    for index, piece in enumerate(pieces):
        sealed = s.seal(key, bundle._chunk_nonce(index), piece,
                        bundle._chunk_aad(ephemeral, index, index == len(pieces) - 1))
        frames += struct.pack(">I", len(sealed)) + sealed
    return ephemeral, bytes(frames)


def signed(ring: Keyring, raw_header: bytes, frames: bytes) -> bytes:
    """A bundle of these exact header bytes and frames, validly signed by ``ring``."""
    signature = ring.sign(bundle._signed_message(raw_header, len(frames), hashlib.sha512(frames).digest()))
    return (bundle.MAGIC + struct.pack(">I", len(raw_header)) + raw_header
            + struct.pack(">Q", len(frames)) + frames + signature)


def forge(ring: Keyring, recipient: PublicKey, items=(), plaintext=None, domains=None, fields=None) -> bytes:
    """A signed bundle whose header is computed from the changes ``items`` and then overridden field by field.

    ``plaintext`` (an iterable of byte blocks) replaces the payload the changes would make.
    """
    changes = list(items)
    lines = [json.dumps(c, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for c in changes]
    ephemeral, frames = seal(plaintext if plaintext is not None else lines, recipient)
    counts = {}
    for c in changes:
        ops = counts.setdefault(c["table"], {"insert": 0, "update": 0, "delete": 0})
        ops[c["op"]] = ops.get(c["op"], 0) + 1
    stamps = [c["hlc"] for c in changes]
    override = fields or {}
    fields = {
        "format": 1, "kind": "changes", "origin": ring.public.code, "relay": [], "sequence": 1,
        "created": "", "counts": counts, "changes": len(changes),
        "schemas": {d.name: {"version": d.version, "fingerprint": d.fingerprint} for d in (domains or {}).values()},
        "hlc": {"min": min(stamps, default=None), "max": max(stamps, default=None)},
        "recipient": recipient.id, "signer": ring.public.id, "compression": bundle.COMPRESSION,
        "encryption": {"suite": recipient.suite, "kem": "x25519-hkdf", "ephemeral": b64(ephemeral),
                       "chunk_size": bundle.CHUNK_SIZE},
    }
    fields.update(override)
    raw = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    return signed(ring, raw, frames)


def with_header(data: bytes, ring: Keyring, raw_header: bytes) -> bytes:
    """The bundle ``data`` with other header bytes, signed again."""
    (hlen,) = struct.unpack(">I", data[8:12])
    (plen,) = struct.unpack(">Q", data[12 + hlen:20 + hlen])
    frames = data[20 + hlen:20 + hlen + plen]
    return signed(ring, raw_header, frames)


# ------------------------------------------------------------------ looking at the office

def office_rows(store, sql):
    conn = sqlite3.connect(store / "store.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def snapshot(store):
    """What a refusal must leave alone: the received table and the inbox."""
    return (office_rows(store, "SELECT * FROM received ORDER BY origin, sequence"),
            sorted(p.name for p in office.inbox_dir(store).iterdir()))


def run(args, env):
    return subprocess.run([SYNCDB, *args], env=env, capture_output=True, text=True, timeout=300)


def post(server, data):
    return requests.post(f"{server.url}/v1/bundles", data=data, headers=OCTETS, timeout=60)


@pytest.fixture
def two(make_community):
    """Community A with three residents exported (one good bundle), and community C."""
    a = make_community(A)
    a.add_persons(3)
    a.export()
    return a, make_community(C)


# ------------------------------------------------------------------ item 2: poison headers

POISON = {"changes-is-a-list": {"changes": []}, "schemas-is-a-list": {"schemas": []}, "counts-is-a-number": {"counts": 5}}


@pytest.mark.parametrize("poison", POISON.values(), ids=POISON.keys())
def test_item2_poison_header_does_not_stop_other_communities(two, office_store, domains, syncdb_env, tmp_path, poison):
    a, c = two
    stick = tmp_path / "stick"
    stick.mkdir()
    for path in community.pending(a.path):
        (stick / path.name).write_bytes(path.read_bytes())
    bad = forge(ring_of(c), office_key(office_store), [person_change(1)], domains=domains, fields=poison)
    (stick / bundle.file_name(C, 1)).write_bytes(bad)

    done = run(["merge", str(office_store), str(stick)], syncdb_env)
    assert "Traceback" not in done.stderr + done.stdout
    assert done.returncode == 1, done.stderr  # the documented status: something was refused
    assert f"refused {C}-00000001.bundle: the bundle header is garbled" in done.stdout
    assert office_rows(office_store, "SELECT origin, sequence FROM applied") == [(A, 1)]
    assert office_rows(office_store, "SELECT count(*) FROM huji__persons") == [(3,)]
    assert not (office.inbox_dir(office_store) / bundle.file_name(C, 1)).exists()

    # Nothing of it stays to stop a later merge.
    a.add_persons(1)
    again = run(["merge", str(office_store), str(a.export().path)], syncdb_env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert office_rows(office_store, "SELECT count(*) FROM huji__persons") == [(4,)]


# ------------------------------------------------------------------ item 3: decompression bombs

def endless_line(total: int):
    """One 'change' line that never ends: ``total`` bytes of JSON string, no newline."""
    yield b'{"table":"huji.persons","op":"insert","key":{"id_number":"1"},"cells":{"name":"'
    block = b"a" * (1 << 20)
    for _ in range(total // len(block)):
        yield block


def long_lines(count: int, size: int):
    """``count`` well-formed changes, each carrying one value of ``size`` bytes (under the line cap)."""
    value = "b" * size
    for i in range(count):
        yield json.dumps(person_change(i, address=value), separators=(",", ":")).encode() + b"\n"


BOMBS = {
    # 768 MiB in one line, from a bundle of under a megabyte.
    "one-endless-line": lambda: dict(plaintext=endless_line(768 << 20), items=[person_change(0)]),
    # 2,000 changes of 200 KB: each within the line cap, 400 MB in all, over the payload cap.
    "many-long-lines": lambda: dict(plaintext=long_lines(2000, 200_000),
                                    items=[person_change(i) for i in range(2000)]),
}


@pytest.mark.parametrize("bomb", BOMBS.values(), ids=BOMBS.keys())
def test_item3_decompression_bomb_is_refused_within_memory(two, office_store, domains, syncdb_env, tmp_path, bomb):
    a, c = two
    made = bomb()
    data = forge(ring_of(c), office_key(office_store), made["items"], plaintext=made["plaintext"],
                 domains=domains)
    assert len(data) < 2 << 20, len(data)
    office.receive(office_store, data)  # the header is honest about the count: only the payload tells
    office.receive(office_store, community.pending(a.path)[0].read_bytes())

    # Peak memory of `syncdb merge`, measured by a parent of its own so nothing else counts.
    measure = ("import resource, subprocess, sys; "
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
               "print(p.returncode); print(p.stdout + p.stderr)")
    out = subprocess.run([sys.executable, "-c", measure, SYNCDB, "merge", str(office_store)],
                         env=syncdb_env, capture_output=True, text=True, timeout=600)
    peak_kib, status, output = out.stdout.split("\n", 2)
    assert "Traceback" not in output, output
    assert int(status) == 1, output
    assert "limit" in output and f"{C}-00000001.bundle" in output, output
    assert int(peak_kib) < 300 * 1024, f"peak RSS {int(peak_kib) // 1024} MB"
    # The bomb applied nothing; the other community's bundle went in.
    assert office_rows(office_store, "SELECT origin FROM applied") == [(A,)]
    assert office_rows(office_store, "SELECT count(*) FROM huji__persons") == [(3,)]


def test_a_line_over_the_cap_is_refused_before_it_is_whole(office_store, make_community):
    """bundle.changes refuses the line once it passes max_line, without reading on to its end."""
    c = make_community(C)
    keyring = Keyring.generate("office", "office", "std")
    data = forge(ring_of(c), keyring.public, [person_change(0)], plaintext=endless_line(64 << 20))
    caps = limits.Limits(max_line=64 * 1024, max_value=1024)
    tracemalloc.start()
    try:
        with pytest.raises(bundle.BundleError) as refused:
            list(bundle.changes(io.BytesIO(data), keyring, caps))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.reason == "too-large"
    assert "change 1 is over 65,536 bytes" in str(refused.value)
    assert peak < 2 << 20, peak  # a 64 MiB line, never held


# ------------------------------------------------------------------ the payload must agree with its header

def lying(items, **override):
    return items, override


LIES = {
    "more-changes-than-counted": lying([person_change(1), person_change(2)], changes=1,
                                       counts={"huji.persons": {"insert": 1, "update": 0, "delete": 0}}),
    "fewer-changes-than-counted": lying([person_change(1)], changes=2,
                                        counts={"huji.persons": {"insert": 2, "update": 0, "delete": 0}}),
    "another-op-than-counted": lying([person_change(1)],
                                     counts={"huji.persons": {"insert": 0, "update": 1, "delete": 0}}),
    "another-table-than-counted": lying([person_change(1)],
                                        counts={"huji.households": {"insert": 1, "update": 0, "delete": 0}}),
    "hlc-outside-the-range": lying([person_change(1)], hlc={"min": stamp(5), "max": stamp(9)}),
    "a-stamp-that-is-no-stamp": lying([dict(person_change(1), hlc="x")], hlc={"min": "x", "max": "x"}),
    "key-is-a-list": lying([dict(person_change(1), key=["1"])]),
    "cells-is-a-string": lying([dict(person_change(1), cells="x")]),
    "a-cell-is-an-object": lying([dict(person_change(1), cells={"name": {"a": 1}})]),
    "op-is-unknown": lying([dict(person_change(1), op="upsert")],
                           counts={"huji.persons": {"insert": 1, "update": 0, "delete": 0}}),
    "base-is-a-list-from-a-community": lying([dict(person_change(1), base={"name": [stamp(0)]})]),
}


@pytest.mark.parametrize("lie", LIES.values(), ids=LIES.keys())
def test_a_payload_that_disagrees_with_its_header_is_refused_and_applies_nothing(
        two, office_store, domains, syncdb_secret, lie):
    a, c = two
    changes, override = lie
    data = forge(ring_of(c), office_key(office_store), changes, domains=domains, fields=override)
    office.receive(office_store, data)
    office.receive(office_store, community.pending(a.path)[0].read_bytes())
    summary = merge.merge(office_store, [], syncdb_secret, domains)
    # Signed as its community made it, so held (its community's later bundles wait), for a person.
    assert summary.blocked == [f"{C}-00000001.bundle"], summary.lines()
    ((_, why),) = summary.held
    assert "not written by syncdb" in why or "damaged" in why
    assert office_rows(office_store, "SELECT origin FROM applied") == [(A,)]
    assert office_rows(office_store, f"SELECT count(*) FROM huji__persons WHERE community_code = '{C}'") == [(0,)]


# ------------------------------------------------------------------ item 5: header types

BAD_HEADERS = {
    "origin-list": {"origin": [C]}, "origin-object": {"origin": {"code": C}}, "origin-number": {"origin": 441900003002},
    "origin-null": {"origin": None}, "origin-long": {"origin": "4" * 200}, "origin-with-slash": {"origin": "../x"},
    "sequence-string": {"sequence": "2"}, "sequence-float": {"sequence": 2.5}, "sequence-null": {"sequence": None},
    "sequence-list": {"sequence": [2]}, "sequence-2**70": {"sequence": 2**70}, "sequence-true": {"sequence": True},
    "sequence-zero": {"sequence": 0}, "sequence-negative": {"sequence": -1},
    "kind-list": {"kind": ["changes"]}, "relay-string": {"relay": "x"}, "recipient-number": {"recipient": 5},
    "hlc-list": {"hlc": []}, "encryption-string": {"encryption": "x"}, "acknowledged-string": {"acknowledged": "1"},
    "changes-negative": {"changes": -1}, "format-string": {"format": "1"},
    "format-true": {"format": True}, "format-float": {"format": 1.0},
}
NESTED = {
    "nested-1000-deep": b'{"origin":' + b"[" * 1000 + b"]" * 1000 + b"}",
    "nested-30000-deep": b"[" * 30000 + b"]" * 30000,
    "header-not-utf8": b'{"origin":"\xff"}',
}


def bad_bundles(ring, recipient, domains):
    good = forge(ring, recipient, [person_change(1)], domains=domains)
    for name, override in BAD_HEADERS.items():
        yield name, forge(ring, recipient, [person_change(1)], domains=domains, fields=override)
    for name, raw in NESTED.items():
        yield name, with_header(good, ring, raw)


@pytest.mark.parametrize("name", [*BAD_HEADERS, *NESTED])
def test_item5_header_types(office_store, make_community, domains, name):
    c = make_community(C)
    data = dict(bad_bundles(ring_of(c), office_key(office_store), domains))[name]
    before = snapshot(office_store)
    with pytest.raises(office.Refused) as refused:
        office.receive(office_store, data)
    assert refused.value.reason in ("garbled", "unsupported"), refused.value
    assert "garbled" in str(refused.value) or "not supported" in str(refused.value)
    assert snapshot(office_store) == before
    with pytest.raises(bundle.BundleError):
        bundle.read_header(io.BytesIO(data))


def test_item5_header_types_over_http_and_from_a_folder(office_server, office_store, make_community, domains,
                                                         syncdb_env, tmp_path):
    a, c = make_community(A), make_community(C)
    a.add_persons(2)
    good = a.export().path
    bad = dict(bad_bundles(ring_of(c), office_key(office_store), domains))
    server = office_server()
    before = snapshot(office_store)
    for name, data in bad.items():
        response = post(server, data)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        assert response.json()["error"] in ("garbled", "unsupported"), name
    assert snapshot(office_store) == before
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200  # still serving

    # `syncdb merge FOLDER` refuses each of them and still takes the good bundle beside them.
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, data in enumerate(bad.values()):
        (folder / f"{C}-{i:08d}.bundle").write_bytes(data)
    (folder / good.name).write_bytes(good.read_bytes())
    server.kill()
    done = run(["merge", str(office_store), str(folder)], syncdb_env)
    assert "Traceback" not in done.stdout + done.stderr
    assert done.returncode == 1
    assert f"{len(bad)} refused, 1 applied" in done.stdout, done.stdout
    assert office_rows(office_store, "SELECT origin, sequence FROM applied") == [(A, 1)]


# ------------------------------------------------------------------ item 6: the quarantine is bounded

def quarantine_bytes(store) -> int:
    return sum(p.stat().st_size for p in office.quarantine_dir(store).iterdir())


def test_item6_quarantine_is_bounded(office_server, office_store, make_community):
    server = office_server()
    # 20 MB posted and refused: kept is a record of it, not the bytes.
    junk = bundle.MAGIC + struct.pack(">I", 2) + b"{}" + os.urandom(20 << 20)
    response = post(server, junk)
    assert response.status_code == 400
    (record,) = office.quarantine_dir(office_store).iterdir()
    kept = json.loads(record.read_text())
    assert kept["sha256"] == hashlib.sha256(junk).hexdigest() and kept["size"] == len(junk)
    assert kept["reason"] == "garbled" and kept["origin"] == "unknown" and kept["header"] == "{}"
    assert quarantine_bytes(office_store) < 4096

    # A flood of refusals: at most QUARANTINE_PER_SENDER records are kept, the latest.
    flood = 130
    for i in range(flood):
        with pytest.raises(office.Refused):
            office.receive(office_store, b"not a bundle %d" % i)
    records = sorted(office.quarantine_dir(office_store).glob("*.reason.json"))
    assert len(records) == office.QUARANTINE_PER_SENDER
    sizes = {json.loads(p.read_text())["size"] for p in records}
    assert len(b"not a bundle %d" % (flood - 1)) in sizes  # the latest is kept
    assert len(junk) not in sizes  # the oldest went
    assert quarantine_bytes(office_store) < office.QUARANTINE_PER_SENDER * 4096

    # A verified sender has records of its own, with its header, and cannot push others out.
    c = make_community(C)
    c.make_bundles(1)
    (path,) = c.pending()
    office.receive(office_store, path.read_bytes())
    twin = forge(ring_of(c), office_key(office_store), [person_change(1)])  # another bundle numbered 1
    with pytest.raises(office.Refused) as refused:
        office.receive(office_store, twin)
    assert refused.value.reason == "replay"
    mine = [json.loads(p.read_text()) for p in office.quarantine_dir(office_store).glob(f"*-{C}-1-*.reason.json")]
    assert [(r["origin"], r["sequence"], json.loads(r["header"])["origin"]) for r in mine] == [(C, 1, C)]
    assert len(list(office.quarantine_dir(office_store).glob("*.reason.json"))) == office.QUARANTINE_PER_SENDER + 1
    assert not list(office.quarantine_dir(office_store).glob("*.bundle"))


def test_sync_status_still_counts_refusals_per_community(office_store, make_community, domains, syncdb_secret):
    from syncdb import pages

    c = make_community(C)
    c.make_bundles(1)
    office.receive(office_store, c.pending()[0].read_bytes())
    with pytest.raises(office.Refused):
        office.receive(office_store, forge(ring_of(c), office_key(office_store), [person_change(1)]))
    store = migrations.open_upgraded(office_store, syncdb_secret, domains)
    try:
        (row,) = pages.sync_status(store, office_store)
    finally:
        store.conn.close()
    assert (row["code"], row["refused"]) == (C, 1)


# ------------------------------------------------------------------ item 9: the wrong recipient

def test_item9_wrong_recipient(office_server, office_store, tmp_path, domains, syncdb_secret):
    other = tmp_path / "other-office"
    migrations.init(other, syncdb_secret)
    folder = tmp_path / "community"
    workdir.create(folder, domains)
    pub = community.init(folder, C, other / "office.pub.json", domains, syncdb_secret)
    office.enroll(office_store, C, pub)  # enrolled here, but set up with the other office's key
    from conftest import Community

    c = Community(folder, C, office_store, domains, syncdb_secret)
    c.make_bundles(2)
    outbox = {p.name: p.read_bytes() for p in c.pending()}
    server = office_server()
    before = snapshot(office_store)

    response = post(server, c.pending()[0].read_bytes())
    assert response.status_code == 403 and response.json()["error"] == "wrong-recipient"
    report = transport.push_to_url(c.path, server.url, echo=lambda line: None)
    assert not report.ok and report.sent == []
    assert "wrong-recipient, HTTP 403" in report.error
    assert "this community was set up with another office's key" in report.error
    # The community keeps every bundle; the office stored and acknowledged nothing.
    assert {p.name: p.read_bytes() for p in c.pending()} == outbox
    assert snapshot(office_store) == before
    assert requests.get(f"{server.url}/v1/communities/{C}/acknowledged", timeout=5).json()["acknowledged"] == 0
    with pytest.raises(office.Refused) as refused:
        office.receive(office_store, c.pending()[0].read_bytes())
    assert refused.value.reason == "wrong-recipient"
    assert office_key(office_store).id in str(refused.value)


# ------------------------------------------------------------------ item 10: a wrong passphrase

def test_item10_wrong_passphrase_receives_nothing(office_store, make_community, syncdb_env, tmp_path):
    c = make_community(C)
    c.make_bundles(2)
    wrong = tmp_path / "wrong-key"
    wrong.write_bytes(os.urandom(32))
    before = snapshot(office_store)
    done = run(["merge", str(office_store), str(community.outbox_dir(c.path))],
               dict(syncdb_env, SYNCDB_KEY_FILE=str(wrong)))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "key" in done.stderr.lower()
    assert snapshot(office_store) == before == ([], [])
    # With the right key the same command takes both.
    done = run(["merge", str(office_store), str(community.outbox_dir(c.path))], syncdb_env)
    assert done.returncode == 0, done.stderr
    assert office_rows(office_store, "SELECT origin, sequence FROM applied ORDER BY sequence") == [(C, 1), (C, 2)]


# ------------------------------------------------------------------ caps: per office, and push splits to fit

def test_caps_are_the_offices_own_and_served(office_server, office_store):
    assert limits.load(office_store) == limits.DEFAULT  # office init wrote the defaults
    assert json.loads(limits.path(office_store).read_text()) == limits.DEFAULT.as_dict()
    limits.path(office_store).write_text(json.dumps({"max_changes": 500, "max_value": 1000}))
    server = office_server(max_bundle_mb=8)
    answer = requests.get(f"{server.url}/v1/limits", timeout=5).json()
    assert answer == dict(limits.DEFAULT.as_dict(), max_changes=500, max_value=1000, max_bundle=8 << 20)
    limits.path(office_store).unlink()
    assert requests.get(f"{server.url}/v1/limits", timeout=5).json()["max_changes"] == limits.DEFAULT.max_changes


@pytest.mark.parametrize("bad", [{"max_changes": "5"}, {"max_changes": 1}, {"max_value": 10**9}, [], "x"])
def test_a_wrong_limits_file_says_what_is_wrong(office_store, bad):
    limits.path(office_store).write_text(json.dumps(bad))
    with pytest.raises(limits.SyncdbError) as e:
        limits.load(office_store)
    assert "limits.json" in str(e.value)


def test_push_splits_an_export_over_the_change_cap(office_server, office_store, make_community, domains,
                                                    syncdb_secret):
    limits.save(office_store, limits.Limits(max_changes=100))
    c = make_community(C)
    c.add_persons(250)
    server = office_server()
    caps = transport.learn_limits(c.path, server.url)
    assert caps.max_changes == 100
    assert community.office_limits(c.path).max_changes == 100  # remembered for a later USB push

    result = c.export()
    assert [(s, n) for s, _, n in result.bundles] == [(1, 100), (2, 100), (3, 50)]
    assert (result.sequence, result.changes) == (1, 250)
    assert result.counts == {"huji.persons": {"insert": 250, "update": 0, "delete": 0}}
    report = transport.push_to_url(c.path, server.url, echo=lambda line: None)
    assert report.ok and report.sent == [1, 2, 3] and report.pending == []
    server.kill()  # it merged what it could meanwhile; merge the rest
    summary = merge.merge(office_store, [], syncdb_secret, domains)
    assert not summary.refused and not summary.held, summary.lines()
    assert office_rows(office_store, "SELECT sequence FROM applied ORDER BY sequence") == [(1,), (2,), (3,)]
    assert office_rows(office_store, "SELECT count(*) FROM huji__persons") == [(250,)]
    c.add_persons(1)
    assert c.export().sequence == 4  # the sequence goes on from the last bundle made


def test_push_splits_by_payload_size_too(office_store, make_community, domains, syncdb_secret):
    c = make_community(C)
    c.add_persons(40)
    conn = sqlite3.connect(c.path / "huji.db")
    with conn:  # about 30 KB a record: 40 of them do not fit one payload of 1 MiB
        conn.execute("UPDATE persons SET address = address || ?", ("路" * 10_000,))
    conn.close()
    result = community.export(c.path, domains, syncdb_secret, caps=limits.Limits(max_payload=limits.MiB))
    assert len(result.bundles) == 2 and result.changes == 40
    for _, path, _ in result.bundles:
        ring = office.load_keyring(office_store, syncdb_secret)
        size = sum(len(limits.line_bytes(change)) for change in bundle.iter_path(path, ring))
        assert size <= limits.MiB
    summary = merge.merge(office_store, [community.outbox_dir(c.path)], syncdb_secret, domains)
    assert summary.applied == 2 and summary.changes == 40, summary.lines()


def test_cli_push_learns_the_offices_caps_and_splits(office_server, office_store, make_community, syncdb_env):
    limits.save(office_store, limits.Limits(max_changes=100))
    c = make_community(C)
    c.add_persons(150)
    server = office_server()
    done = run(["push", str(c.path), "--to", server.url], syncdb_env)
    assert done.returncode == 0, done.stderr
    assert "Bundle 1: 100 change(s)" in done.stdout and "Bundle 2: 50 change(s)" in done.stdout
    assert "Bundles 1-2: 150 change(s)" in done.stdout
    assert office_rows(office_store, "SELECT sequence FROM received ORDER BY sequence") == [(1,), (2,)]


def test_a_record_with_a_value_over_the_cap_is_held_at_the_community(office_store, make_community, domains,
                                                                      syncdb_secret):
    c = make_community(C)
    c.add_persons(3)
    conn = sqlite3.connect(c.path / "huji.db")
    with conn:
        (first,) = conn.execute("SELECT id_number FROM persons ORDER BY id_number LIMIT 1").fetchone()
        conn.execute("UPDATE persons SET address = ? WHERE id_number = ?", ("长" * 30_000, first))
    conn.close()
    notes = []
    result = community.export(c.path, domains, syncdb_secret, notify=notes.append)
    assert result.changes == 2
    assert any("not sent until fixed" in n and "address" in n and "90,000 bytes" in n for n in notes), notes
    # Shortened, it goes with the next push.
    conn = sqlite3.connect(c.path / "huji.db")
    with conn:
        conn.execute("UPDATE persons SET address = '东莞市' WHERE id_number = ?", (first,))
    conn.close()
    assert community.export(c.path, domains, syncdb_secret).changes == 1


def test_oversized_names_each_value_over_the_cap():
    change = {"table": "huji.persons", "op": "insert", "key": {"id_number": "1" * 70_000},
              "cells": {"name": "王" * 30_000, "address": "短", "n": 12}, "base": {},
              "hlc": stamp(1)}
    found = limits.oversized(change, 64 * 1024)
    assert [name for name, _ in found] == ["id_number", "name"]
    assert all("over the office's limit of 65,536 bytes" in why for _, why in found)
    assert "王" not in " ".join(why for _, why in found)  # a message never quotes the value
    assert limits.oversized(change, 100_000) == []
