"""The bundle file: the one place that knows its bytes (docs/bundle-format.md).

    magic        8 bytes   b"\\x89SYNCDB\\n"
    header_len   u32 BE
    header       header_len bytes of UTF-8 JSON (sorted keys)
    payload_len  u64 BE
    payload      chunks: u32 BE sealed_len, then sealed_len bytes (AEAD ciphertext + tag)
    signature    64 bytes Ed25519 over magic ‖ header_len ‖ header ‖ payload_len ‖ SHA-512(payload)

The payload is zlib-compressed JSON lines (with the preset dictionary ZDICT), one change a line, cut into chunks
of at most CHUNK_SIZE bytes and sealed chunk by chunk (the STREAM
construction): a chunk's nonce is its index, its associated data says
whether it is the last, so a reader authenticates each chunk before it uses
it and notices a payload cut short. The chunk key comes from X25519 between a
fresh ephemeral key and the recipient's key, through HKDF.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives import serialization

from .crypto import SUITES, Keyring, PublicKey, b64, suite, unb64
from .errors import SyncdbError
from .files import disk_error, fsync_dir

MAGIC = b"\x89SYNCDB\n"
FORMAT = 1
CHUNK_SIZE = 64 * 1024
SIGNATURE_SIZE = 64
MAX_HEADER = 1 << 20
SUFFIX = ".bundle"
COMPRESSION = "zlib-d1"
# A preset dictionary (RFC 1950 FDICT) of the strings every payload repeats:
# change keywords and the shipped schemas' column names. Part of the format:
# it never changes under this name. A nightly bundle of a hundred changes
# shrinks by about a tenth; a domain added later still compresses, just less.
ZDICT = (
    '"base":{},"cells":{"address":"community_code":"household_no":"relationship":"marital_status":'
    '"ethnicity":"01","birth_date":"phone":"name":"sex":"1","2","status":"normal","moved_out","deceased",'
    '"insurance_type":"start_date":"end_date":"employer":"monthly_base":"benefit_type":"monthly_amount":'
    '"household_type":"family","head_id_number":"active","retired","pension_employee","medical_resident",'
    '{"base":{"name":"0017","hlc":"0017","key":{"id_number":"op":"update","op":"insert","op":"delete",'
    '"table":"huji.persons","table":"huji.households","table":"shebao.enrolments","table":"minzheng.benefits",'
).encode()


class BundleError(SyncdbError):
    """A bundle that cannot be trusted. ``reason`` is a short machine word."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Header:
    fields: dict
    raw: bytes  # the exact bytes signed

    def __getitem__(self, name):
        return self.fields[name]

    @property
    def origin(self) -> str:
        return self.fields["origin"]

    @property
    def sequence(self) -> int:
        return self.fields["sequence"]

    @property
    def kind(self) -> str:
        return self.fields["kind"]


def file_name(origin: str, sequence: int, kind: str = "changes") -> str:
    """``441900003001-00000007.bundle``; resolutions for a community carry an ``r``."""
    tag = "" if kind == "changes" else "r"
    return f"{origin}-{tag}{sequence:08d}{SUFFIX}"


def _chunk_nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _chunk_aad(ephemeral: bytes, index: int, last: bool) -> bytes:
    return b"syncdb chunk" + ephemeral + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")


def _chunk_key(shared: bytes, ephemeral: bytes, recipient_x25519: bytes, suite_name: str) -> bytes:
    return suite(suite_name).derive(shared, ephemeral + recipient_x25519, b"syncdb bundle v1")


def _signed_message(header_raw: bytes, payload_len: int, payload_digest: bytes) -> bytes:
    return (MAGIC + struct.pack(">I", len(header_raw)) + header_raw
            + struct.pack(">Q", payload_len) + payload_digest)


def write(path, fields: dict, changes: Iterable[dict], signer: Keyring, recipient: PublicKey) -> Header:
    """Write a bundle of ``changes`` to ``path`` atomically and return its header.

    ``fields`` gives kind, origin, sequence, schemas and relay; counts and the
    HLC range are computed from the changes as they stream past.
    """
    path = Path(path)
    s = suite(recipient.suite)
    eph = X25519PrivateKey.generate()
    ephemeral = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient.x25519))
    key = _chunk_key(shared, ephemeral, recipient.x25519, s.name)

    counts: dict[str, dict[str, int]] = {}
    hlc_min = hlc_max = None
    total = 0
    tmp_payload = path.with_name(f".{path.name}.payload-{os.getpid()}")
    digest = hashlib.sha512()
    payload_len = 0
    index = 0
    pending = b""
    try:
        with open(tmp_payload, "wb") as out:
            def emit(chunk: bytes, last: bool):
                nonlocal index, payload_len
                sealed = s.seal(key, _chunk_nonce(index), chunk, _chunk_aad(ephemeral, index, last))
                framed = struct.pack(">I", len(sealed)) + sealed
                out.write(framed)
                digest.update(framed)
                payload_len += len(framed)
                index += 1

            compressor = zlib.compressobj(9, zdict=ZDICT)
            for change in changes:
                total += 1
                table_counts = counts.setdefault(change["table"], {"insert": 0, "update": 0, "delete": 0})
                table_counts[change["op"]] += 1
                stamp = change["hlc"]
                hlc_min = stamp if hlc_min is None or stamp < hlc_min else hlc_min
                hlc_max = stamp if hlc_max is None or stamp > hlc_max else hlc_max
                line = json.dumps(change, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
                pending += compressor.compress(line)
                while len(pending) > CHUNK_SIZE:
                    emit(pending[:CHUNK_SIZE], last=False)
                    pending = pending[CHUNK_SIZE:]
            pending += compressor.flush()
            while len(pending) > CHUNK_SIZE:
                emit(pending[:CHUNK_SIZE], last=False)
                pending = pending[CHUNK_SIZE:]
            emit(pending, last=True)

        header_fields = {
            "format": FORMAT,
            "kind": fields.get("kind", "changes"),
            "origin": fields["origin"],
            "relay": list(fields.get("relay", [])),
            "sequence": int(fields["sequence"]),
            "created": fields.get("created", ""),
            "schemas": fields.get("schemas", {}),
            "counts": counts,
            "changes": total,
            "hlc": {"min": hlc_min, "max": hlc_max},
            "recipient": recipient.id,
            "signer": signer.public.id,
            "compression": COMPRESSION,
            "encryption": {"suite": s.name, "kem": "x25519-hkdf", "ephemeral": b64(ephemeral),
                           "chunk_size": CHUNK_SIZE},
        }
        for extra in ("acknowledged",):
            if extra in fields:
                header_fields[extra] = fields[extra]
        raw = json.dumps(header_fields, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
        signature = signer.sign(_signed_message(raw, payload_len, digest.digest()))

        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as out, open(tmp_payload, "rb") as body:
            out.write(MAGIC + struct.pack(">I", len(raw)) + raw + struct.pack(">Q", payload_len))
            while block := body.read(1 << 20):
                out.write(block)
            out.write(signature)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        path.with_name(f".{path.name}.tmp-{os.getpid()}").unlink(missing_ok=True)
        raise disk_error(e, path) from None
    finally:
        tmp_payload.unlink(missing_ok=True)
    return Header(header_fields, raw)


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise BundleError(f"the bundle is truncated (it ends inside the {what}); "
                          "copy it again from the community's outbox", "truncated")
    return data


def read_header(f: BinaryIO) -> tuple[Header, int]:
    """Read the clear header. Returns it and the payload length; nothing is verified yet."""
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise BundleError("this is not a syncdb bundle (wrong magic bytes); "
                          "check that the right file was copied and not opened in another program", "garbled")
    (hlen,) = struct.unpack(">I", _read_exact(f, 4, "header length"))
    if hlen > MAX_HEADER:
        raise BundleError("the bundle header is impossibly large; the file is damaged", "garbled")
    raw = _read_exact(f, hlen, "header")
    try:
        fields = json.loads(raw)
        if fields["format"] != FORMAT:
            raise BundleError(f"bundle format {fields['format']} is not supported by this syncdb "
                              f"(it reads format {FORMAT}); upgrade syncdb at the office", "unsupported")
        for name in ("origin", "sequence", "kind", "encryption"):
            fields[name]
    except BundleError:
        raise
    except (ValueError, KeyError, TypeError):
        raise BundleError("the bundle header is garbled; the file is damaged", "garbled") from None
    (payload_len,) = struct.unpack(">Q", _read_exact(f, 8, "payload length"))
    return Header(fields, raw), payload_len


def verify(f: BinaryIO, lookup_key) -> Header:
    """Check structure and signature; ``lookup_key(origin)`` returns the signer's PublicKey or None.

    Reads the whole file once (hashing, not keeping it). Raises BundleError.
    """
    header, payload_len = read_header(f)
    signer = lookup_key(header.origin)
    if signer is None:
        raise BundleError(f"community {header.origin} is not enrolled at this office; "
                          f"enrol it with `syncdb office enroll STORE {header.origin} PUBKEY_FILE`",
                          "unenrolled")
    digest = hashlib.sha512()
    remaining = payload_len
    while remaining:
        block = f.read(min(remaining, 1 << 20))
        if not block:
            raise BundleError("the bundle is truncated (it ends inside the payload); "
                              "copy it again from the community's outbox", "truncated")
        digest.update(block)
        remaining -= len(block)
    signature = f.read(SIGNATURE_SIZE)
    if len(signature) != SIGNATURE_SIZE:
        raise BundleError("the bundle is truncated (its signature is missing); "
                          "copy it again from the community's outbox", "truncated")
    if f.read(1):
        raise BundleError("the bundle has extra bytes after its signature; the file is damaged", "garbled")
    if not signer.verify(signature, _signed_message(header.raw, payload_len, digest.digest())):
        raise BundleError(f"the signature does not match community {header.origin}'s enrolled key: "
                          "the bundle was altered, or signed by another key", "bad-signature")
    return header


def changes(f: BinaryIO, keyring: Keyring) -> Iterator[dict]:
    """Decrypt and decompress the payload, one change at a time.

    Call ``verify`` first: this checks each chunk's tag, not the signature.
    """
    header, payload_len = read_header(f)
    enc = header["encryption"]
    if header.fields.get("compression") != COMPRESSION or enc.get("kem") != "x25519-hkdf" or enc.get("suite") not in SUITES:
        raise BundleError("this bundle uses a compression, key agreement or cipher suite this syncdb "
                          "does not know; upgrade syncdb at the office", "unsupported")
    s = suite(enc["suite"])
    ephemeral = unb64(enc["ephemeral"])
    if header["recipient"] != keyring.public.id:
        raise BundleError(f"this bundle is encrypted to key {header['recipient']}, not to this "
                          f"office's key {keyring.public.id}; it was made for another office "
                          "or before the office key changed", "wrong-recipient")
    key = _chunk_key(keyring.agree(ephemeral), ephemeral, keyring.public.x25519, s.name)
    decompressor = zlib.decompressobj(zdict=ZDICT)
    remaining = payload_len
    index = 0
    buffer = b""
    while remaining > 0:
        (sealed_len,) = struct.unpack(">I", _read_exact(f, 4, "payload"))
        if sealed_len > enc.get("chunk_size", CHUNK_SIZE) + 16:
            raise BundleError("a payload chunk is larger than the header allows; the file is damaged", "garbled")
        sealed = _read_exact(f, sealed_len, "payload")
        remaining -= 4 + sealed_len
        last = remaining == 0
        try:
            chunk = s.open(key, _chunk_nonce(index), sealed, _chunk_aad(ephemeral, index, last))
        except InvalidTag:
            raise BundleError(f"payload chunk {index} does not decrypt: the bundle was altered or "
                              "cut short, or is not for this office's key", "tampered") from None
        index += 1
        buffer += decompressor.decompress(chunk)
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield json.loads(line)
    if remaining < 0:
        raise BundleError("the payload chunks overrun the payload length; the file is damaged", "garbled")
    buffer += decompressor.flush()
    if buffer.strip():
        raise BundleError("the payload ends in the middle of a change; the file is damaged", "garbled")


def open_verified(path, lookup_key) -> Header:
    """Verify the bundle file at ``path``; convenience for callers holding a path."""
    try:
        with open(path, "rb") as f:
            return verify(f, lookup_key)
    except OSError as e:
        raise SyncdbError(f"cannot read bundle {path}: {e.strerror}") from None


def iter_path(path, keyring: Keyring) -> Iterator[dict]:
    with open(path, "rb") as f:
        yield from changes(f, keyring)
