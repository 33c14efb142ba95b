"""The bundle format (docs/bundle-format.md): round trips, privacy, refusals.

Capture through export to the bundle the office reads is in test_capture.py; stamps in test_hlc.py.
"""

import base64
import hashlib
import io
import json
import os
import random
import re
import struct
import tempfile
import zlib
from datetime import date, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stdnum.cn import ric

from syncdb import bundle, validate
from syncdb.bundle import BundleError
from syncdb.crypto import Keyring
from syncdb.hlc import Stamp

ROOT = Path(__file__).resolve().parent.parent
CODE = "441900003001"
SUITES = ["std", "gm"]
KEYS = {s: (Keyring.generate("office", "office", s), Keyring.generate("community", CODE, s)) for s in SUITES}
# Every reason verify or changes may give; a refusal outside this list is a bug in the reader.
REASONS = {"garbled", "truncated", "unsupported", "unenrolled", "bad-signature", "tampered",
           "wrong-recipient"}


# ------------------------------------------------------------------ helpers

def id_number(region: str, birth: date, order: int) -> str:
    body = f"{region}{birth:%Y%m%d}{order:03d}"
    number = body + ric.calc_check_digit(body + "0")  # stdnum expects the check place filled
    validate.id_number(number)  # raises if invalid; an unlisted region is only a warning
    return number


def stamp(ms: int, counter: int = 0) -> str:
    return str(Stamp(ms, counter, CODE))


def write(changes, suite="std", signer=None, recipient=None, **fields) -> bytes:
    """The bytes of a bundle of ``changes`` from community CODE to the suite's office."""
    office_ring, community_ring = KEYS[suite]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / bundle.file_name(CODE, fields.get("sequence", 1))
        bundle.write(path, {"origin": CODE, "sequence": 1, **fields}, changes,
                     signer or community_ring, recipient or office_ring.public)
        return path.read_bytes()


def verify(data: bytes, suite="std"):
    return bundle.verify(io.BytesIO(data), {CODE: KEYS[suite][1].public}.get)


def read(data: bytes, suite="std", keyring=None) -> list[dict]:
    return list(bundle.changes(io.BytesIO(data), keyring or KEYS[suite][0]))


def read_until_refused(data: bytes, suite="std") -> tuple[list[dict], BundleError]:
    """What changes() yields before it refuses the bundle, and the refusal."""
    got = []
    with pytest.raises(BundleError) as refused:
        for change in bundle.changes(io.BytesIO(data), KEYS[suite][0]):
            got.append(change)
    return got, refused.value


def layout(data: bytes) -> dict:
    """Cut a bundle into its parts, following the documented layout."""
    assert data[:8] == bundle.MAGIC
    (header_len,) = struct.unpack(">I", data[8:12])
    header_end = 12 + header_len
    (payload_len,) = struct.unpack(">Q", data[header_end:header_end + 8])
    payload_start = header_end + 8
    frames, at = [], payload_start
    while at < payload_start + payload_len:
        (sealed_len,) = struct.unpack(">I", data[at:at + 4])
        frames.append((at, 4 + sealed_len))
        at += 4 + sealed_len
    assert at == payload_start + payload_len == len(data) - 64
    return {"header": data[12:header_end], "header_start": 12, "payload_start": payload_start,
            "frames": frames, "signature_start": at}


def resign(data: bytes, frames: list[bytes], suite="std") -> bytes:
    """Rebuild a bundle with other payload frames, signed again by the real community key.

    This is what an attacker holding the community's signing key could do: it
    shows that the chunk layer catches reordering and truncation on its own.
    """
    header = layout(data)["header"]
    payload = b"".join(frames)
    before_payload = bundle.MAGIC + struct.pack(">I", len(header)) + header + struct.pack(">Q", len(payload))
    signature = KEYS[suite][1].sign(before_payload + hashlib.sha512(payload).digest())
    return before_payload + payload + signature


def reheader(data: bytes, suite="std", **fields) -> bytes:
    """The bundle with header fields replaced (the same payload), signed again by the real community key.

    ``encryption`` is merged, not replaced. Like ``resign``, this is what a writer
    holding the community's key could make: the refusals it meets are the reader's
    own checks, not the signature's.
    """
    parts = layout(data)
    header = json.loads(parts["header"])
    header.update({k: v for k, v in fields.items() if k != "encryption"})
    header["encryption"].update(fields.get("encryption", {}))
    raw = json.dumps(header, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    payload = data[parts["payload_start"]:parts["signature_start"]]
    before_payload = bundle.MAGIC + struct.pack(">I", len(raw)) + raw + struct.pack(">Q", len(payload))
    signature = KEYS[suite][1].sign(before_payload + hashlib.sha512(payload).digest())
    return before_payload + payload + signature


def documented_dictionary() -> bytes:
    """The preset dictionary as docs/bundle-format.md quotes it, byte for byte."""
    doc = (ROOT / "docs" / "bundle-format.md").read_text(encoding="utf-8")
    section = doc[doc.index("### The zlib stream: `zlib-d1`"):]
    section = section[:section.index("\n### ")]
    (quoted,) = re.findall(r"^```text\n(.*?)\n```", section, re.M | re.S)
    return quoted.encode("ascii")


def chunks(data: bytes) -> list[bytes]:
    return [data[at:at + size] for at, size in layout(data)["frames"]]


def noisy_changes(n: int, seed: int = 7) -> list[dict]:
    """Changes carrying random Chinese text, which zlib cannot shrink much: they fill many chunks."""
    rng = random.Random(seed)

    def text(k):
        return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(k))
    return [{"table": "huji.persons", "op": "insert", "key": {"id_number": f"{i:018d}"},
             "cells": {"name": text(3), "address": text(60), "note": rng.random(), "n": rng.randint(-9, 9)},
             "base": {}, "hlc": stamp(1_700_000_000_000 + i)} for i in range(n)]


# ------------------------------------------------------------------ round trip

json_scalars = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),  # ±infinity travels as JSON's Infinity tokens, see the doc
    st.text(),
    st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), min_size=1),
)
column_names = st.one_of(
    st.sampled_from(["name", "sex", "birth_date", "phone", "address", "status", "monthly_amount"]),
    st.text(min_size=1, max_size=10),
)
stamps = st.builds(stamp, st.integers(0, 10**15 - 1), st.integers(0, 999_999))
change_strategy = st.fixed_dictionaries({
    "table": st.sampled_from(["huji.persons", "huji.households", "shebao.enrolments", "minzheng.benefits"]),
    "op": st.sampled_from(["insert", "update", "delete"]),
    "key": st.dictionaries(column_names, st.one_of(st.text(min_size=1), st.integers()), min_size=1, max_size=2),
    "cells": st.dictionaries(column_names, json_scalars, max_size=6),
    "base": st.dictionaries(column_names, stamps, max_size=3),
    "hlc": stamps,
})


def assert_full_chunks(data: bytes, chunk_size: int) -> None:
    """Every chunk but the last holds exactly chunk_size bytes of the zlib stream; the last 1 to chunk_size."""
    sizes = [size - 4 - 16 for _, size in layout(data)["frames"]]  # u32 length and the AEAD tag
    assert all(s == chunk_size for s in sizes[:-1]) and 0 < sizes[-1] <= chunk_size, sizes


def expected_counts(changes):
    counts = {}
    for c in changes:
        counts.setdefault(c["table"], {"insert": 0, "update": 0, "delete": 0})[c["op"]] += 1
    return counts


@pytest.mark.parametrize("suite", SUITES)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.lists(change_strategy, max_size=60))
def test_round_trip(suite, changes):
    # Small chunks, so that a few generated changes already span several of them.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bundle, "CHUNK_SIZE", 97)
        data = write(changes, suite)
    header = verify(data, suite)
    assert read(data, suite) == changes
    assert header["changes"] == len(changes)
    assert header["counts"] == expected_counts(changes)
    stamps_ = [c["hlc"] for c in changes]
    assert header["hlc"] == {"min": min(stamps_, default=None), "max": max(stamps_, default=None)}
    assert header["encryption"]["suite"] == suite
    assert_full_chunks(data, 97)


@pytest.mark.parametrize("suite", SUITES)
def test_round_trip_of_many_changes_in_full_size_chunks(suite):
    changes = noisy_changes(3000)
    data = write(changes, suite, sequence=42, kind="changes", relay=[])
    header = verify(data, suite)
    assert len(layout(data)["frames"]) >= 3
    assert_full_chunks(data, bundle.CHUNK_SIZE)
    assert read(data, suite) == changes
    assert (header.origin, header.sequence, header.kind) == (CODE, 42, "changes")
    assert header["counts"] == {"huji.persons": {"insert": 3000, "update": 0, "delete": 0}}
    assert header["hlc"] == {"min": changes[0]["hlc"], "max": changes[-1]["hlc"]}


def test_header_fields():
    office_ring, community_ring = KEYS["gm"]
    changes = [
        {"table": "huji.persons", "op": "update", "key": {"id_number": "11010519491231002X"},
         "cells": {"phone": "13800138000"}, "base": {"phone": stamp(5)}, "hlc": stamp(9, 2)},
        {"table": "huji.persons", "op": "delete", "key": {"id_number": "110105194912310037"},
         "cells": {}, "base": {}, "hlc": stamp(9, 1)},
    ]
    data = write(changes, "gm", sequence=7, created="2026-06-30T02:00:00+0800",
                 schemas={"huji": {"version": 1, "fingerprint": "ab" * 8}}, acknowledged=3)
    header = verify(data, "gm")
    assert json.loads(layout(data)["header"]) == header.fields
    assert header.raw == layout(data)["header"]
    assert header.fields == {
        "format": 1, "kind": "changes", "origin": CODE, "relay": [], "sequence": 7,
        "created": "2026-06-30T02:00:00+0800",
        "schemas": {"huji": {"version": 1, "fingerprint": "ab" * 8}},
        "counts": {"huji.persons": {"insert": 0, "update": 1, "delete": 1}}, "changes": 2,
        "hlc": {"min": stamp(9, 1), "max": stamp(9, 2)},
        "recipient": office_ring.public.id, "signer": community_ring.public.id,
        "compression": "zlib-d1",
        "encryption": {"suite": "gm", "kem": "x25519-hkdf", "ephemeral": header["encryption"]["ephemeral"],
                       "chunk_size": bundle.CHUNK_SIZE},
        "acknowledged": 3,
    }
    # Sorted keys and no spaces: the header bytes are canonical.
    assert header.raw == json.dumps(header.fields, sort_keys=True, ensure_ascii=False,
                                    separators=(",", ":")).encode()


def test_file_name():
    assert bundle.file_name(CODE, 7) == "441900003001-00000007.bundle"
    assert bundle.file_name(CODE, 7, kind="resolutions") == "441900003001-r00000007.bundle"


@pytest.mark.parametrize("suite", SUITES)
def test_a_reader_written_from_the_doc_reads_bundles(suite):
    """docs/bundle-format.md, followed step by step with bare primitives, opens what bundle.py writes."""
    office_ring, community_ring = KEYS[suite]
    changes = noisy_changes(1200)
    data = write(changes, suite)
    assert data[:8] == bytes.fromhex("8953594E4344420A")
    (header_len,) = struct.unpack(">I", data[8:12])
    header = data[12:12 + header_len]
    fields = json.loads(header)
    assert header == json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    (payload_len,) = struct.unpack(">Q", data[12 + header_len:20 + header_len])
    payload = data[20 + header_len:20 + header_len + payload_len]
    signature = data[20 + header_len + payload_len:]
    assert len(signature) == 64
    Ed25519PublicKey.from_public_bytes(community_ring.public.ed25519).verify(
        signature, data[:20 + header_len] + hashlib.sha512(payload).digest())
    assert fields["recipient"] == hashlib.sha256(
        office_ring.public.x25519 + office_ring.public.ed25519).digest()[:8].hex()
    ephemeral = base64.b64decode(fields["encryption"]["ephemeral"], validate=True)
    shared = X25519PrivateKey.from_private_bytes(office_ring.x25519).exchange(
        X25519PublicKey.from_public_bytes(ephemeral))
    hash_, size = (hashes.SHA256(), 32) if suite == "std" else (hashes.SM3(), 16)
    key = HKDF(hash_, size, ephemeral + office_ring.public.x25519, b"syncdb bundle v1").derive(shared)
    stream, at, index = b"", 0, 0
    while at < payload_len:
        (sealed_len,) = struct.unpack(">I", payload[at:at + 4])
        sealed = payload[at + 4:at + 4 + sealed_len]
        at += 4 + sealed_len
        nonce = index.to_bytes(12, "big")
        aad = b"syncdb chunk" + ephemeral + struct.pack(">Q", index) + (b"\x01" if at == payload_len else b"\x00")
        if suite == "std":
            chunk = AESGCM(key).decrypt(nonce, sealed, aad)
        else:
            opener = Cipher(algorithms.SM4(key), modes.GCM(nonce, sealed[-16:])).decryptor()
            opener.authenticate_additional_data(aad)
            chunk = opener.update(sealed[:-16]) + opener.finalize()
        stream += chunk
        index += 1
    assert index >= 2 and fields["encryption"]["chunk_size"] == 65536
    # zlib-d1: a zlib stream with the preset dictionary the doc quotes in full.
    assert fields["compression"] == "zlib-d1"
    dictionary = documented_dictionary()
    assert dictionary == bundle.ZDICT and len(dictionary) == 594
    assert zlib.adler32(dictionary) == 0xFEC3CA77
    assert hashlib.sha256(dictionary).hexdigest() == "614c32c8a2d078ffaa4cdd2a2a798d8a1847044c98fa14b845243ceef64a52b9"
    cmf, flg = stream[0], stream[1]
    assert cmf & 0x0F == 8 and (cmf * 256 + flg) % 31 == 0 and flg & 0x20  # deflate, FDICT set
    assert stream[:6] == bytes.fromhex("78F9FEC3CA77")  # ... and DICTID, the dictionary's Adler-32
    with pytest.raises(zlib.error):  # without the dictionary zlib stops at Z_NEED_DICT
        zlib.decompress(stream)
    inflater = zlib.decompressobj(zdict=dictionary)
    lines = (inflater.decompress(stream) + inflater.flush()).split(b"\n")
    assert inflater.eof and not inflater.unused_data
    assert lines[-1] == b""
    assert [json.loads(line) for line in lines[:-1]] == changes


# ------------------------------------------------------------------ privacy

def people(n: int) -> list[dict]:
    rng = random.Random(3)
    surnames, given = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗", "秀英伟芳娜敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂"
    rows = []
    for i in range(n):
        birth = date(1940, 1, 1) + timedelta(days=rng.randint(0, 30000))
        rows.append({
            "id_number": id_number(rng.choice(["441900", "110105", "440306", "420106"]), birth, 100 + i),
            "name": rng.choice(surnames) + "".join(rng.choice(given) for _ in range(rng.randint(1, 2))),
            "phone": f"1{rng.choice('3589')}{rng.randint(0, 999_999_999):09d}",
            "address": f"广东省东莞市{rng.choice(['莞城', '南城', '东城'])}街道{rng.choice(['运河', '鸿福', '东纵'])}路"
                       f"{rng.randint(1, 300)}号{rng.randint(1, 30)}栋{rng.randint(101, 2808)}室",
        })
    return rows


def encodings(value: str) -> list[bytes]:
    return [value.encode("utf-8"), value.encode("utf-16-le"), value.encode("utf-16-be")]


@pytest.mark.parametrize("suite", SUITES)
def test_bundle_bytes_reveal_no_sensitive_value(suite):
    rows = people(300)
    changes = [{"table": "huji.persons", "op": "insert", "key": {"id_number": r["id_number"]},
                "cells": {k: v for k, v in r.items() if k != "id_number"}, "base": {}, "hlc": stamp(10 + i)}
               for i, r in enumerate(rows)]
    changes.append({"table": "huji.households", "op": "update", "key": {"household_no": "H0001"},
                    "cells": {"head_id_number": rows[0]["id_number"]}, "base": {}, "hlc": stamp(9999)})
    data = write(changes, suite)
    sensitive = [v for r in rows for v in r.values()]
    # The check is not vacuous: the same values are all there in the plain JSON lines.
    plain = "\n".join(json.dumps(c, ensure_ascii=False) for c in changes)
    assert all(e in plain.encode("utf-8") or e in plain.encode("utf-16-le") or e in plain.encode("utf-16-be")
               for v in sensitive for e in encodings(v))
    leaks = [v for v in sensitive for e in encodings(v) if e in data]
    assert leaks == []
    assert read(data, suite) == changes


# ------------------------------------------------------------------ refusals

@pytest.fixture(scope="module")
def small_bundle():
    return write(noisy_changes(3), "std")


@pytest.fixture(scope="module")
def multi_chunk_bundle():
    changes = noisy_changes(1500)
    data = write(changes, "std")
    assert len(layout(data)["frames"]) >= 2
    return changes, data


@pytest.mark.parametrize("suite", SUITES)
def test_flipped_byte_anywhere_is_refused(suite):
    data = write(noisy_changes(3), suite)
    parts = layout(data)
    for offset in range(len(data)):
        for flip in (0x01, 0xFF):
            bad = bytearray(data)
            bad[offset] ^= flip
            with pytest.raises(BundleError) as refused:
                verify(bytes(bad), suite)
            assert refused.value.reason in REASONS, (offset, refused.value.reason)
            assert str(refused.value)
            if offset >= parts["payload_start"]:
                # The payload is hashed whole before anything is decrypted: the signature catches it.
                assert refused.value.reason == "bad-signature", offset


def test_flipped_payload_byte_is_refused_by_the_chunk_tag_too(small_bundle):
    parts = layout(small_bundle)
    at, size = parts["frames"][0]
    for offset in range(at + 4, at + size):
        bad = bytearray(small_bundle)
        bad[offset] ^= 0x01
        got, refused = read_until_refused(bytes(bad))
        assert (got, refused.reason) == ([], "tampered")


def test_truncation_at_any_offset_is_refused(small_bundle):
    for cut in range(len(small_bundle)):
        with pytest.raises(BundleError) as refused:
            verify(small_bundle[:cut])
        expected = {"garbled", "truncated"} if cut < len(bundle.MAGIC) else {"truncated"}
        assert refused.value.reason in expected, (cut, refused.value.reason)
        if layout(small_bundle)["payload_start"] <= cut < layout(small_bundle)["signature_start"]:
            # Read without verify: the chunk layer alone notices a payload cut short.
            got, refused = read_until_refused(small_bundle[:cut])
            assert refused.reason in {"truncated", "tampered"}
            assert got == []


def test_truncation_at_many_offsets_of_a_multi_chunk_bundle(multi_chunk_bundle):
    changes, data = multi_chunk_bundle
    rng = random.Random(5)
    for cut in sorted(rng.sample(range(len(data)), 150)) + [len(data) - 1, len(data) - 64]:
        with pytest.raises(BundleError) as refused:
            verify(data[:cut])
        assert refused.value.reason == "truncated"
        if layout(data)["payload_start"] <= cut < layout(data)["signature_start"]:
            got, refused = read_until_refused(data[:cut])
            assert refused.reason in {"truncated", "tampered"}
            assert got == changes[:len(got)]


def test_extra_bytes_after_the_signature_are_refused(small_bundle):
    with pytest.raises(BundleError) as refused:
        verify(small_bundle + b"\x00")
    assert refused.value.reason == "garbled"


def test_dropping_the_last_chunks_is_caught_by_the_last_flag(multi_chunk_bundle):
    changes, data = multi_chunk_bundle
    frames = chunks(data)
    shortened = resign(data, frames[:-1])
    verify(shortened)  # the signature alone cannot tell: it was made again with the real key
    got, refused = read_until_refused(shortened)
    assert refused.reason == "tampered"
    assert got == changes[:len(got)] and len(got) < len(changes)


def test_reordered_chunks_are_refused(multi_chunk_bundle):
    changes, data = multi_chunk_bundle
    frames = chunks(data)
    swapped = [frames[1], frames[0], *frames[2:]]
    payload_start = layout(data)["payload_start"]
    forged = data[:payload_start] + b"".join(swapped) + data[layout(data)["signature_start"]:]
    with pytest.raises(BundleError) as refused:
        verify(forged)
    assert refused.value.reason == "bad-signature"
    got, refused = read_until_refused(forged)
    assert (got, refused.reason) == ([], "tampered")
    # Even signed again with the community's own key, the chunk indexes give it away.
    resigned = resign(data, swapped)
    verify(resigned)
    got, refused = read_until_refused(resigned)
    assert (got, refused.reason) == ([], "tampered")
    # The last chunk moved forward is refused too (its flag says last).
    got, refused = read_until_refused(resign(data, [*frames[:-2], frames[-1], frames[-2]]))
    assert refused.reason == "tampered" and got == changes[:len(got)]


def test_altered_chunk_yields_nothing_from_that_chunk(multi_chunk_bundle):
    changes, data = multi_chunk_bundle
    parts = layout(data)
    (at0, size0), (at1, size1) = parts["frames"][:2]
    # Which changes come out of chunk 0 alone: those yielded before the reader passes its end.
    f = io.BytesIO(data)
    from_first = [c for c in bundle.changes(f, KEYS["std"][0]) if f.tell() <= at0 + size0]
    assert 0 < len(from_first) < len(changes)
    bad = bytearray(data)
    bad[at1 + 4 + size1 // 2] ^= 0x40
    got, refused = read_until_refused(bytes(bad))
    assert refused.reason == "tampered"
    assert got == from_first
    assert "chunk 1" in str(refused)


def test_wrong_recipient():
    data = write(noisy_changes(2), "std")
    with pytest.raises(BundleError) as refused:
        read(data, keyring=Keyring.generate("office", "office", "std"))
    assert refused.value.reason == "wrong-recipient"
    assert KEYS["std"][0].public.id in str(refused.value)


def test_signed_by_another_key_claiming_the_origin():
    impostor = Keyring.generate("community", CODE, "std")
    data = write(noisy_changes(2), "std", signer=impostor)
    with pytest.raises(BundleError) as refused:
        verify(data)
    assert refused.value.reason == "bad-signature"
    assert CODE in str(refused.value)


def test_unenrolled_origin(small_bundle):
    with pytest.raises(BundleError) as refused:
        bundle.verify(io.BytesIO(small_bundle), {}.get)
    assert refused.value.reason == "unenrolled"


@pytest.mark.parametrize("garbage", [
    b"", b"\x89", b"hello, office", os.urandom(4096), b"\x89PNG\r\n\x1a\n" + os.urandom(100),
    bundle.MAGIC + struct.pack(">I", 5) + b"notjs" + bytes(8),
    bundle.MAGIC + struct.pack(">I", 2) + b"[]" + bytes(8),
    bundle.MAGIC + struct.pack(">I", 2) + b"{}" + bytes(8),
    bundle.MAGIC + struct.pack(">I", 2**31) + bytes(100),
    bundle.MAGIC + struct.pack(">I", 3) + b"\xff\xfe\x00" + bytes(8),
])
def test_garbage_is_garbled(garbage):
    with pytest.raises(BundleError) as refused:
        verify(garbage)
    assert refused.value.reason == "garbled"
    with pytest.raises(BundleError) as refused:
        read(garbage)
    assert refused.value.reason == "garbled"


def test_unknown_format_is_unsupported():
    header = json.dumps({"format": 2, "origin": CODE, "sequence": 1, "kind": "changes", "encryption": {}}).encode()
    data = bundle.MAGIC + struct.pack(">I", len(header)) + header + bytes(8) + bytes(64)
    with pytest.raises(BundleError) as refused:
        verify(data)
    assert refused.value.reason == "unsupported"


def test_compression_without_the_dictionary_is_unsupported(small_bundle):
    """A header saying "zlib" (no preset dictionary), validly signed, is refused before any chunk is read."""
    data = reheader(small_bundle, compression="zlib")
    assert json.loads(layout(data)["header"])["compression"] == "zlib"
    verify(data)  # the signature holds: the refusal is the reader's
    got, refused = read_until_refused(data)
    assert got == [] and refused.reason == "unsupported"
    for other in ("zlib-d2", "ZLIB-D1", "", None):
        got, refused = read_until_refused(reheader(small_bundle, compression=other))
        assert got == [] and refused.reason == "unsupported"


def test_chunk_larger_than_chunk_size_is_garbled(multi_chunk_bundle):
    """A sealed_len over chunk_size + 16 is refused before the frame is read."""
    changes, data = multi_chunk_bundle
    assert read(reheader(data)) == changes  # re-signing alone changes nothing
    # The first chunk holds chunk_size bytes: one byte less in the header and its frame is too large.
    got, refused = read_until_refused(reheader(data, encryption={"chunk_size": bundle.CHUNK_SIZE - 1}))
    assert got == [] and refused.reason == "garbled"
    # A frame claiming 4 GiB: refused at its length, not read.
    frames = chunks(data)
    huge = struct.pack(">I", 0xFFFFFFFF) + frames[0][4:]
    got, refused = read_until_refused(resign(data, [huge, *frames[1:]]))
    assert got == [] and refused.reason == "garbled"
