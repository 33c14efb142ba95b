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

import base64
import hashlib
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives import serialization

from .crypto import SUITES, Keyring, PublicKey, b64, suite
from .errors import SyncdbError
from .files import disk_error, fsync_dir
from .i18n import N_, _
from .limits import DEFAULT as DEFAULT_LIMITS
from .limits import RANGES, Limits

MAGIC = b"\x89SYNCDB\n"
FORMAT = 1
CHUNK_SIZE = 64 * 1024
SIGNATURE_SIZE = 64
# A header is a few hundred bytes: 64 KiB holds any real one and keeps a hostile one small.
MAX_HEADER = 64 * 1024
MAX_CHUNK = 1 << 20  # the largest encryption.chunk_size a reader takes (syncdb writes 64 KiB)
INFLATE_BLOCK = 64 * 1024  # decompressed bytes produced at a time
KINDS = ("changes", "resolutions")
OPS = ("insert", "update", "delete")  # every table's counts name these three
REKEY = "rekey"  # a natural key corrected: old key -> new key as one change (counted only when present)
# Community codes are 12 digits; the office's own code is chosen at `office init`.
CODE_PATTERN = re.compile(r"[0-9A-Za-z_-]{1,32}")
STAMP_PATTERN = re.compile(r"[0-9]{15}\.[0-9]{6}\.[0-9A-Za-z_-]{1,32}")  # hlc.py's stamps
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{16}")
MAX_SEQUENCE = 2**53  # a JSON number every reader holds exactly
MAX_CHANGES = RANGES["max_changes"][1]  # the most any office may take in one bundle
NAME_LEN = 128  # a table, domain or column name
MAX_KEY_COLUMNS = 16
MAX_COLUMNS = 512
MAX_BASES = 1024  # versions one office resolution may settle in one cell
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
    sha256: str | None = None  # of the whole file, when this process wrote it

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
                table_counts[change["op"]] = table_counts.get(change["op"], 0) + 1
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
        for extra in ("acknowledged", "resend"):
            if extra in fields:
                header_fields[extra] = fields[extra]
        raw = json.dumps(header_fields, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
        signature = signer.sign(_signed_message(raw, payload_len, digest.digest()))

        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        whole = hashlib.sha256()  # of the file, for the office's record of what it holds
        with open(tmp, "wb") as out, open(tmp_payload, "rb") as body:
            for block in _blocks(MAGIC + struct.pack(">I", len(raw)) + raw + struct.pack(">Q", payload_len),
                                 body, signature):
                whole.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        path.with_name(f".{path.name}.tmp-{os.getpid()}").unlink(missing_ok=True)
        raise disk_error(e, path) from None
    finally:
        tmp_payload.unlink(missing_ok=True)
    return Header(header_fields, raw, whole.hexdigest())


def _blocks(head: bytes, body: BinaryIO, tail: bytes) -> Iterator[bytes]:
    yield head
    while block := body.read(1 << 20):
        yield block
    yield tail


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise BundleError(_("the bundle is truncated (it ends inside the {part}); "
                            "copy it again from the community's outbox").format(part=_(what)), "truncated")
    return data


def read_header(f: BinaryIO) -> tuple[Header, int]:
    """Read the clear header, every field typed and range-checked. Returns it and the payload length.

    Nothing is verified yet: the fields are safe to use, not to trust.
    """
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise BundleError(_("this is not a syncdb bundle (wrong magic bytes); "
                            "check that the right file was copied and not opened in another program"), "garbled")
    (hlen,) = struct.unpack(">I", _read_exact(f, 4, N_("header length")))
    if hlen > MAX_HEADER:
        raise BundleError(_("the bundle header is {size:,} bytes, more than a header can be "
                            "({most:,}); the file is damaged").format(size=hlen, most=MAX_HEADER), "garbled")
    raw = _read_exact(f, hlen, N_("header"))
    fields = _parse_header(raw)
    (payload_len,) = struct.unpack(">Q", _read_exact(f, 8, N_("payload length")))
    return Header(fields, raw), payload_len


def _parse_header(raw: bytes) -> dict:
    try:
        fields = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        fields = None
    if not isinstance(fields, dict):
        raise BundleError(_("the bundle header is garbled (not a JSON object); the file is damaged"), "garbled")
    version = fields.get("format")
    if type(version) is int and version != FORMAT:
        raise BundleError(_("bundle format {version} is not supported by this syncdb "
                            "(it reads format {format}); upgrade syncdb at the office").format(
                              version=_shown(version), format=FORMAT), "unsupported")
    problem = _("'{name}' is {value}").format(name="format", value=_shown(version)) if type(version) is not int else _header_problem(fields)
    if problem:
        raise BundleError(_("the bundle header is garbled ({problem}); the file is damaged "
                            "or was not written by syncdb").format(problem=problem), "garbled")
    if fields["kind"] not in KINDS:
        raise BundleError(_("this is a bundle of kind {kind}, which this syncdb does not "
                            "know; upgrade syncdb").format(kind=_shown(fields['kind'])), "unsupported")
    return fields


def _header_problem(h: dict) -> str | None:
    """What is wrong with the header's fields (a short phrase naming one), or None."""
    for name, ok in _HEADER_FIELDS:
        if name not in h:
            return _("'{name}' is missing").format(name=name)
        if not ok(h[name]):
            return _("'{name}' is {value}").format(name=name, value=_shown(h[name]))
    for name, low in (("acknowledged", 0), ("resend", 1)):
        if name in h and not _is_int(h[name], low, MAX_SEQUENCE):
            return _("'{name}' is {value}").format(name=name, value=_shown(h[name]))
    counted = sum(n for ops in h["counts"].values() for n in ops.values())
    if counted != h["changes"]:
        return _("'changes' is {changes} but the counts add up to {counted}").format(
            changes=h['changes'], counted=counted)
    if (h["changes"] == 0) != (h["hlc"]["min"] is None):
        return _("'hlc' must be null exactly when there are no changes")
    return None


def _is_int(v, low: int, high: int) -> bool:
    return type(v) is int and low <= v <= high  # not bool, not float


def _is_name(v) -> bool:
    return isinstance(v, str) and 0 < len(v) <= NAME_LEN


def _is_code(v) -> bool:
    return isinstance(v, str) and CODE_PATTERN.fullmatch(v) is not None


def _is_stamp(v) -> bool:
    return isinstance(v, str) and STAMP_PATTERN.fullmatch(v) is not None


def _is_counts(v) -> bool:
    return isinstance(v, dict) and all(
        _is_name(table) and "." in table.strip(".") and isinstance(ops, dict)
        and set(OPS) <= set(ops) <= {*OPS, REKEY}
        and all(_is_int(n, 0, MAX_CHANGES) for n in ops.values())
        for table, ops in v.items())


def _is_schemas(v) -> bool:
    return isinstance(v, dict) and all(
        _is_name(domain) and isinstance(about, dict)
        and (_is_int(about.get("version"), 0, MAX_SEQUENCE) or _is_short(about.get("version")))
        and _is_short(about.get("fingerprint"))
        for domain, about in v.items())


def _is_short(v) -> bool:
    return isinstance(v, str) and len(v) <= 64


def _is_hlc_range(v) -> bool:
    if not isinstance(v, dict) or set(v) != {"min", "max"}:
        return False
    if v["min"] is None and v["max"] is None:
        return True
    # Strings here; each change's own stamp is checked for its form, and to lie within them.
    return _is_short(v["min"]) and _is_short(v["max"]) and v["min"] <= v["max"]


def _is_encryption(v) -> bool:
    # The values of suite and kem are judged by changes() (unsupported); here only their types.
    return (isinstance(v, dict) and _is_short(v.get("suite")) and _is_short(v.get("kem"))
            and _is_short(v.get("ephemeral")) and _is_int(v.get("chunk_size"), 1, MAX_CHUNK))


_HEADER_FIELDS = (
    ("kind", _is_short),
    ("origin", _is_code),
    ("sequence", lambda v: _is_int(v, 1, MAX_SEQUENCE)),
    ("relay", lambda v: isinstance(v, list) and len(v) <= 16 and all(map(_is_code, v))),
    ("created", _is_short),
    ("schemas", _is_schemas),
    ("counts", _is_counts),
    ("changes", lambda v: _is_int(v, 0, MAX_CHANGES)),
    ("hlc", _is_hlc_range),
    ("recipient", lambda v: isinstance(v, str) and KEY_ID_PATTERN.fullmatch(v) is not None),
    ("signer", lambda v: isinstance(v, str) and KEY_ID_PATTERN.fullmatch(v) is not None),
    ("encryption", _is_encryption),
)


def utf8(text: str) -> str:
    """``text`` with each lone surrogate (a JSON escape of a hostile change, see prepare.unkeepable) as
    the escape of its bytes: a message about it is printed and kept in the store, which take UTF-8 only."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "backslashreplace")


def _shown(v) -> str:
    """A hostile value, short enough to put in a message or a log."""
    if isinstance(v, dict):
        return _("a JSON object")
    if isinstance(v, list):
        return _("a JSON list")
    text = utf8(json.dumps(v, ensure_ascii=False))
    return text if len(text) <= 40 else text[:37] + "..."


def verify(f: BinaryIO, lookup_key) -> Header:
    """Check structure and signature; ``lookup_key(origin)`` returns the signer's PublicKey or None.

    Reads the whole file once (hashing, not keeping it). Raises BundleError.
    """
    header, payload_len = read_header(f)
    return _verify_after_header(f, header, payload_len, lookup_key)


def _verify_after_header(f: BinaryIO, header: Header, payload_len: int, lookup_key) -> Header:
    """``verify`` from the first payload byte on, the header already read and checked."""
    signer = lookup_key(header.origin)
    if signer is None:
        raise BundleError(_("community {code} is not enrolled at this office; "
                            "enrol it with `syncdb office enroll STORE {code} PUBKEY_FILE`").format(
                              code=header.origin), "unenrolled")
    digest = hashlib.sha512()
    remaining = payload_len
    while remaining:
        block = f.read(min(remaining, 1 << 20))
        if not block:
            raise BundleError(_("the bundle is truncated (it ends inside the payload); "
                                "copy it again from the community's outbox"), "truncated")
        digest.update(block)
        remaining -= len(block)
    signature = f.read(SIGNATURE_SIZE)
    if len(signature) != SIGNATURE_SIZE:
        raise BundleError(_("the bundle is truncated (its signature is missing); "
                            "copy it again from the community's outbox"), "truncated")
    if f.read(1):
        raise BundleError(_("the bundle has extra bytes after its signature; the file is damaged"), "garbled")
    if not signer.verify(signature, _signed_message(header.raw, payload_len, digest.digest())):
        raise BundleError(_("the signature does not match community {code}'s enrolled key: "
                            "the bundle was altered, or signed by another key").format(code=header.origin),
                          "bad-signature")
    return header


def changes(f: BinaryIO, keyring: Keyring, limits: Limits | None = None) -> Iterator[dict]:
    """Decrypt and decompress the payload, one checked change at a time.

    Call ``verify`` first: this checks each chunk's tag, not the signature.
    Memory stays within ``limits`` (the defaults if None) whatever the
    payload holds: it is inflated a block at a time, a line longer than
    ``max_line`` is refused before it is whole, and the payload must agree
    with its header (each change well formed, counted, within the HLC range).
    A refusal can come after changes were yielded: apply a bundle in one
    transaction and roll back on BundleError.
    """
    header, payload_len = read_header(f)
    yield from _changes_after_header(f, header, payload_len, keyring, limits)


def _changes_after_header(f: BinaryIO, header: Header, payload_len: int, keyring: Keyring,
                          limits: Limits | None) -> Iterator[dict]:
    """``changes`` from the first payload byte on, the header already read and checked."""
    lines, raw = _lines_after_header(f, header, payload_len, keyring, limits)
    for line in raw:
        yield lines.check(line)
    lines.finish()


def _lines_after_header(f: BinaryIO, header: Header, payload_len: int, keyring: Keyring,
                        limits: Limits | None) -> tuple["_Lines", Iterator[bytes]]:
    """The payload's change lines, not yet read as changes: (what checks them, the lines).

    Give each line to ``_Lines.check`` (or ``parse_line`` then ``_Lines.account``, which may be
    done elsewhere in between), and call ``_Lines.finish`` after the last.
    """
    caps = limits or DEFAULT_LIMITS
    enc = header["encryption"]
    if header.fields.get("compression") != COMPRESSION or enc["kem"] != "x25519-hkdf" or enc["suite"] not in SUITES:
        raise BundleError(_("this bundle uses a compression, key agreement or cipher suite this syncdb "
                            "does not know; upgrade syncdb at the office"), "unsupported")
    if header["recipient"] != keyring.public.id:
        raise BundleError(_("this bundle is encrypted to key {theirs}, not to this "
                            "office's key {ours}; it was made for another office "
                            "or before the office key changed").format(theirs=header['recipient'],
                                                                        ours=keyring.public.id),
                          "wrong-recipient")
    if header["changes"] > caps.max_changes:
        raise _too_large(_("{n:,} changes").format(n=header['changes']), _("{n:,} changes").format(n=caps.max_changes))
    try:
        ephemeral = base64.b64decode(enc["ephemeral"], validate=True)
        key = _chunk_key(keyring.agree(ephemeral), ephemeral, keyring.public.x25519, enc["suite"])
    except ValueError:
        raise BundleError(_("the bundle header's ephemeral key is not a key; the file is damaged"),
                          "garbled") from None
    lines = _Lines(header, caps, lists_allowed=header.kind != "changes" or header.origin == keyring.public.code)
    return lines, _raw_lines(f, payload_len, key, ephemeral, enc, lines)


def _raw_lines(f: BinaryIO, payload_len: int, key: bytes, ephemeral: bytes, enc: dict,
               lines: "_Lines") -> Iterator[bytes]:
    decompressor = zlib.decompressobj(zdict=ZDICT)
    for chunk in _opened_chunks(f, payload_len, key, ephemeral, suite(enc["suite"]), enc["chunk_size"]):
        while True:
            try:
                # At most one block of output at a time: a small chunk may inflate to gigabytes.
                out = decompressor.decompress(chunk, INFLATE_BLOCK)
            except zlib.error:
                raise BundleError(_("the payload's compressed stream is damaged"), "garbled") from None
            chunk = decompressor.unconsumed_tail
            yield from lines.feed(out)
            if not chunk and len(out) < INFLATE_BLOCK:
                break  # this chunk is used up (a full block may have more to come, even with no input)
    if not decompressor.eof or decompressor.unused_data:
        raise BundleError(_("the payload's compressed stream is cut short or has bytes after its end; "
                            "the file is damaged"), "garbled")
    if lines.pending:
        raise BundleError(_("the payload ends in the middle of a change; the file is damaged"), "garbled")


def _opened_chunks(f: BinaryIO, payload_len: int, key: bytes, ephemeral: bytes, s, chunk_size: int):
    """Each payload chunk, authenticated and decrypted, in order."""
    remaining = payload_len
    index = 0
    while remaining > 0:
        (sealed_len,) = struct.unpack(">I", _read_exact(f, 4, N_("payload")))
        if sealed_len > chunk_size + 16:
            raise BundleError(_("a payload chunk is larger than the header allows; the file is damaged"), "garbled")
        sealed = _read_exact(f, sealed_len, N_("payload"))
        remaining -= 4 + sealed_len
        last = remaining == 0
        try:
            yield s.open(key, _chunk_nonce(index), sealed, _chunk_aad(ephemeral, index, last))
        except InvalidTag:
            raise BundleError(_("payload chunk {index} does not decrypt: the bundle was altered or "
                                "cut short, or is not for this office's key").format(index=index),
                              "tampered") from None
        index += 1
    if remaining < 0:
        raise BundleError(_("the payload chunks overrun the payload length; the file is damaged"), "garbled")


def _too_large(what: str, cap: str) -> BundleError:
    return BundleError(_("the bundle holds more than this office takes ({what}; the limit is {cap}); "
                         "a current syncdb splits large exports to fit, so upgrade syncdb at the community "
                         "and push again, or ask the data administrator to raise the office's limits "
                         "(STORE/limits.json)").format(what=what, cap=cap), "too-large")


class _Lines:
    """Cuts inflated bytes into change lines and checks each against the header and the caps."""

    def __init__(self, header: Header, caps: Limits, lists_allowed: bool):
        self.caps, self.lists_allowed = caps, lists_allowed
        self.expected = header["counts"]
        self.total = header["changes"]
        self.low, self.high = header["hlc"]["min"], header["hlc"]["max"]
        self.seen: dict[str, dict[str, int]] = {}
        self.count = 0  # changes checked
        self.cut = 0  # lines cut from the payload (ahead of count when lines are read elsewhere)
        self.size = 0
        self.pending = bytearray()  # the start of a line whose end has not come yet

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The whole lines ``data`` ends, each within the caps."""
        self.size += len(data)
        if self.size > self.caps.max_payload:
            raise _too_large(_("over {n:,} bytes of changes once decompressed").format(n=self.caps.max_payload),
                             _("{n:,} bytes").format(n=self.caps.max_payload))
        buffer = self.pending
        buffer += data
        start = 0
        max_line = self.caps.max_line
        while (end := buffer.find(b"\n", start)) >= 0:
            if end - start + 1 > max_line:
                raise self.line_too_long()
            line = bytes(buffer[start:end])
            start = end + 1
            self.cut += 1
            yield line
        del buffer[:start]
        if len(buffer) > max_line:
            raise self.line_too_long()

    def line_too_long(self) -> BundleError:
        return _too_large(_("change {number} is over {n:,} bytes").format(number=self.cut + 1, n=self.caps.max_line),
                          _("{n:,} bytes for one change").format(n=self.caps.max_line))

    def check(self, line: bytes) -> dict:
        """The change of the next line, read and accounted for."""
        number = self.count + 1
        return self.account(parse_line(line, number, self.lists_allowed), number)

    def account(self, change: dict, number: int) -> dict:
        """Count change ``number`` (read by ``parse_line``) against the header; the changes come in order."""
        self.count = number
        table, op = change["table"], change["op"]
        ops = self.seen.setdefault(table, dict.fromkeys((*OPS, REKEY), 0))
        ops[op] += 1
        if self.count > self.total or ops[op] > self.expected.get(table, {}).get(op, 0):
            raise BundleError(_("change {number} of the payload is one more {op} for {table} than the header "
                                "counts; the bundle was not written by syncdb").format(
                                  number=number, op=op, table=_shown(table)), "garbled")
        if not self.low <= change["hlc"] <= self.high:
            raise BundleError(_("change {number} of the payload has an HLC stamp outside the header's range; "
                                "the bundle was not written by syncdb").format(number=number), "garbled")
        return change

    def finish(self) -> None:
        if self.count != self.total:
            raise BundleError(_("the payload holds {count} changes but its header counts {total}; "
                                "the bundle was not written by syncdb").format(count=self.count, total=self.total),
                              "garbled")


def parse_line(line: bytes, number: int, lists_allowed: bool) -> dict:
    """Change ``number`` of a payload from its line: a JSON object of the change's shape, or BundleError.

    Needs nothing but the line, so it may run in another process (prepare.py).
    """
    try:
        change = _json_line(line)
    except (ValueError, RecursionError):
        raise BundleError(_("change {number} of the payload is not a JSON line; the file is damaged").format(
            number=number), "garbled") from None
    problem = _change_problem(change, lists_allowed)
    if problem:
        raise BundleError(_("change {number} of the payload is not a valid change ({problem}); the bundle "
                            "is damaged or was not written by syncdb").format(number=number, problem=problem),
                          "garbled")
    return change


# A run of 19 digits, told without a regular expression (its search took 3.7 µs a line of the audit ledger,
# more than orjson's reading of it): in the text translated by _DIGITS each digit is "0", a newline stays
# itself and any other byte is a space (a digit is never part of a multi-byte UTF-8 character), and a
# run of 19 digits is _RUN there.
_DIGITS = bytes(48 if 48 <= c <= 57 else 10 if c == 10 else 32 for c in range(256))
_RUN = b"0" * 19


def read_json(data: bytes):
    """A JSON text: orjson where it reads it as the standard decoder does (a fifth of reading a
    bundle was json's decoder), the standard decoder for the rest: what orjson refuses (NaN, lone
    surrogates) and integers of 19 digits or more, which orjson may read as floats."""
    if _RUN not in data.translate(_DIGITS):
        return _read_short(data)
    return json.loads(data.decode("utf-8"))


def read_json_lines(data: bytes) -> list:
    """The JSON text of each non-empty line of ``data``, each read as ``read_json`` reads it, the whole
    translated once to find the lines with a run of 19 digits."""
    digits = data.translate(_DIGITS)
    if _RUN not in digits:
        del digits  # a copy of the whole: not kept while the lines are read
        return [_read_short(line) for line in data.split(b"\n") if line]
    return [json.loads(line.decode("utf-8")) if _RUN in shape else _read_short(line)
            for line, shape in zip(data.split(b"\n"), digits.split(b"\n")) if line]


def _read_short(data: bytes):
    """``read_json`` of a text with no run of 19 digits."""
    try:
        return orjson.loads(data)
    except ValueError:
        return json.loads(data.decode("utf-8"))


_json_line = read_json


_PLAIN = frozenset((str, int, float, bool))  # what JSON reads as str, int or float


def _change_problem(change, lists_allowed: bool) -> str | None:
    """What is wrong with one decoded change line (a short phrase), or None."""
    if not isinstance(change, dict):
        return _("not a JSON object")
    for name in ("table", "op", "key", "cells", "base", "hlc"):
        if name not in change:
            return _("'{name}' is missing").format(name=name)
    if not _is_name(change["table"]):
        return _("'{name}' is {value}").format(name="table", value=_shown(change['table']))
    if change["op"] not in OPS and change["op"] != REKEY:
        return _("'{name}' is {value}").format(name="op", value=_shown(change['op']))
    if change["op"] == REKEY:
        new_key = change.get("new_key")
        if not isinstance(new_key, dict) or not isinstance(change["key"], dict) \
                or set(new_key) != set(change["key"]) or new_key == change["key"]:
            return _("'{name}' is {value}").format(name="new_key", value=_shown(new_key))
        for name, value in new_key.items():
            if not (value is None or isinstance(value, (str, int, float))):
                return _("'{name}' has {column}: {value}").format(name="new_key", column=_shown(name),
                                                                  value=_shown(value))
    if not _is_stamp(change["hlc"]):
        return _("'{name}' is {value}").format(name="hlc", value=_shown(change['hlc']))
    for part, most in (("key", MAX_KEY_COLUMNS), ("cells", MAX_COLUMNS)):
        values = change[part]
        if not isinstance(values, dict) or len(values) > most or (part == "key" and not values):
            return _("'{name}' is {value}").format(name=part, value=_shown(values))
        for name, value in values.items():
            # The common case first, at a glance: a short name and a plain value.
            if name.__class__ is str and 0 < len(name) <= NAME_LEN and (value is None or value.__class__ in _PLAIN):
                continue
            if not _is_name(name) or not (value is None or isinstance(value, (str, int, float))):
                return _("'{name}' has {column}: {value}").format(name=part, column=_shown(name),
                                                                  value=_shown(value))
    base = change["base"]
    if not isinstance(base, dict) or len(base) > MAX_COLUMNS:
        return _("'{name}' is {value}").format(name="base", value=_shown(base))
    for name, version in base.items():
        ok = _is_stamp(version) or (lists_allowed and isinstance(version, list)
                                    and 0 < len(version) <= MAX_BASES and all(map(_is_stamp, version)))
        if not _is_name(name) or not ok:
            return _("'{name}' has {column}: {value}").format(name="base", column=_shown(name),
                                                              value=_shown(version))
    return None


def schema_mismatch(domains: dict, header: Header) -> str | None:
    """Why the office cannot apply this bundle under its own schemas, or None.

    Only the domains the bundle has changes for are compared: a change
    written under another schema could name columns the office does not
    keep, and applying it would drop them. The reason quotes the header's names, which a
    hostile header spells with lone surrogates: escaped (utf8), as `syncdb status` prints it.
    """
    written = header.fields.get("schemas", {})
    for domain in sorted({table.split(".")[0] for table in header["counts"]}):
        ours = domains.get(domain)
        theirs = written.get(domain, {})
        if ours is None:
            return utf8(_("it has changes for domain '{domain}', which the office has no schema for; "
                          "add schemas/{domain}.toml at the office and merge again").format(domain=domain))
        if theirs.get("fingerprint") != ours.fingerprint:
            return utf8(_schema_advice(header, domain, theirs, ours))
    return None


def _schema_advice(header: Header, domain: str, theirs: dict, ours) -> str:
    """What frees a bundle written under other schemas than the office's, by which side is behind."""
    said = _("{code} wrote '{domain}' under schema version {version} ({fingerprint}), the office has "
             "version {ours} ({our_fingerprint})").format(
        code=header.origin, domain=domain, version=theirs.get('version'), fingerprint=theirs.get('fingerprint'),
        ours=ours.version, our_fingerprint=ours.fingerprint)
    version = theirs.get("version")
    if isinstance(version, int) and version < ours.version:
        # Written already: upgrading the community cannot rewrite it, but its next push can send it all again.
        return _("{said}: upgrade the community (`syncdb community upgrade` there, with the office's schema "
                 "files), then give this bundle up with `syncdb bundles skip STORE {code} {sequence} "
                 "--reason TEXT`; the community's next push then sends every record again").format(
            said=said, code=header.origin, sequence=header.sequence)
    if isinstance(version, int) and version > ours.version:
        return _("{said}: put the newer schemas/{domain}.toml at the office and merge again "
                 "(the merge upgrades the store)").format(said=said, domain=domain)
    return _("{said}: bring both to the same schemas/{domain}.toml and merge again").format(said=said, domain=domain)


class Reader:
    """One bundle file, opened once and its header parsed once, for all that is done with it.

    ``Reader(path)`` reads and checks the header (BundleError if it is not
    one); ``verify`` checks the signature; ``changes`` decrypts the payload.
    Each may be called again (the file is read again, never reopened). Use it
    as a context manager, or ``close()`` it.
    """

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.file = open(self.path, "rb")
        except OSError as e:
            raise SyncdbError(_("cannot read bundle {path}: {problem}").format(path=path, problem=e.strerror)) from None
        try:
            self.header, self.payload_len = read_header(self.file)
        except BaseException:
            self.file.close()
            raise
        self.payload_start = self.file.tell()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    def verify(self, lookup_key) -> Header:
        self.file.seek(self.payload_start)
        return _verify_after_header(self.file, self.header, self.payload_len, lookup_key)

    def changes(self, keyring: Keyring, limits: Limits | None = None) -> Iterator[dict]:
        self.file.seek(self.payload_start)
        return _changes_after_header(self.file, self.header, self.payload_len, keyring, limits)

    def lines(self, keyring: Keyring, limits: Limits | None = None) -> tuple["_Lines", Iterator[bytes]]:
        """The payload's change lines, each to be read by ``parse_line`` and accounted for in order by
        the ``_Lines`` returned with them (``account``, then ``finish``): ``changes`` in steps."""
        self.file.seek(self.payload_start)
        return _lines_after_header(self.file, self.header, self.payload_len, keyring, limits)


def open_verified(path, lookup_key) -> Header:
    """Verify the bundle file at ``path``; convenience for callers holding a path."""
    try:
        with open(path, "rb") as f:
            return verify(f, lookup_key)
    except OSError as e:
        raise SyncdbError(_("cannot read bundle {path}: {problem}").format(path=path, problem=e.strerror)) from None


def iter_path(path, keyring: Keyring) -> Iterator[dict]:
    with open(path, "rb") as f:
        yield from changes(f, keyring)
