"""Hybrid logical clocks (HLC).

Community PCs often have wrong clocks. An HLC stamp is the wall clock in
milliseconds, a counter, and the node that made it; it never runs backwards
on one node, and a node that has seen a later stamp (from the office) moves
past it. Stamps are fixed-width text, so comparing the strings — in Python or
in SQL — orders them by (milliseconds, counter, node).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from .i18n import _

_MS_WIDTH = 15
_COUNTER_WIDTH = 6


@dataclass(frozen=True, order=True)
class Stamp:
    ms: int
    counter: int
    node: str

    def __str__(self) -> str:
        return f"{self.ms:0{_MS_WIDTH}d}.{self.counter:0{_COUNTER_WIDTH}d}.{self.node}"

    @classmethod
    def parse(cls, text: str) -> "Stamp":
        try:
            ms, counter, node = text.split(".", 2)
            if len(ms) != _MS_WIDTH or len(counter) != _COUNTER_WIDTH or not node:
                raise ValueError
            return cls(int(ms), int(counter), node)
        except ValueError:
            raise ValueError(_("not an HLC stamp: {text!r}").format(text=text)) from None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """One node's HLC. ``last`` is persisted by the caller between runs."""

    def __init__(self, node: str, last: Stamp | None = None):
        self.node = node
        self.last = last or Stamp(0, 0, node)

    def tick(self, wall_ms: int | None = None) -> Stamp:
        """Stamp a local event that happened at ``wall_ms`` (default: now)."""
        wall = now_ms() if wall_ms is None else wall_ms
        if wall > self.last.ms:
            self.last = Stamp(wall, 0, self.node)
        elif self.last.counter < 10**_COUNTER_WIDTH - 1:
            self.last = Stamp(self.last.ms, self.last.counter + 1, self.node)
        else:
            # The text is fixed width: borrow the next millisecond rather than overflow.
            self.last = Stamp(self.last.ms + 1, 0, self.node)
        return self.last

    def observe(self, remote: Stamp | str) -> None:
        """Move past a stamp received from another node, so later ticks sort after it."""
        if isinstance(remote, str):
            remote = Stamp.parse(remote)
        if (remote.ms, remote.counter) > (self.last.ms, self.last.counter):
            self.last = Stamp(remote.ms, remote.counter, self.node)


# A row's cell versions, as stored at the office (_versions) and in a community's
# shadow: most cells share one version, so it is written once.
_PACKED_TEXT = json.JSONEncoder(separators=(",", ":")).encode


def _most_common(versions: dict) -> str:
    """The version most cells have (the latest of those tied): what a packed row keeps once."""
    counts: dict = {}
    for v in versions.values():
        counts[v] = counts.get(v, 0) + 1
    return max(counts, key=lambda v: (counts[v], v))


def pack_versions(versions: dict, columns) -> str:
    """Store the most common version once as "*", the others by column, and "-" the unset."""
    if not versions:
        return "{}"
    common = _most_common(versions)
    packed = {"*": common}
    packed.update({c: v for c, v in versions.items() if v != common})
    unset = [c for c in columns if c not in versions]
    if unset:
        packed["-"] = unset
    return _PACKED_TEXT(packed)


def unpack_versions(text: str | None, columns) -> dict:
    packed = json.loads(text or "{}")
    default = packed.pop("*", None)
    unset = set(packed.pop("-", ()))
    return {c: packed.get(c, default) for c in columns if c not in unset and packed.get(c, default)}


# The office's rows keep their versions in bytes (store version 4): a version is
# a flags byte (1: a delete's "~", 2: a 12-digit node), its milliseconds in 6
# bytes, its counter in 3 and its node in 5 (12 digits) or as length and UTF-8.
#   01 V                        every column at version V (a record as it came)
#   02 V n (name V')*n u name*u  V but for n columns, u columns unset; a name is length and UTF-8
# 16 bytes for a row with one version, where the text took 43. What they cannot
# hold exactly (an odd stamp, a long name) is kept as the text (pack_versions).
_DELETED, _DIGIT_NODE = 1, 2
_MS_LIMIT = 1 << 48  # 6 bytes; the counter's 6 digits fit 3 bytes


def _version_bytes(version: str) -> bytes | None:
    flags = 0
    if version.startswith("~"):
        flags, version = _DELETED, version[1:]
    parts = version.split(".", 2)
    if len(parts) != 3:
        return None
    ms, counter, node = parts
    if not (len(ms) == _MS_WIDTH and len(counter) == _COUNTER_WIDTH and (ms + counter).isascii()
            and (ms + counter).isdigit() and node):
        return None
    ms_value = int(ms)
    if ms_value >= _MS_LIMIT:
        return None
    if len(node) == 12 and node.isascii() and node.isdigit():
        tail = int(node).to_bytes(5, "big")
        flags |= _DIGIT_NODE
    else:
        raw = node.encode("utf-8")
        if len(raw) > 255:
            return None
        tail = bytes([len(raw)]) + raw
    return bytes([flags]) + ms_value.to_bytes(6, "big") + int(counter).to_bytes(3, "big") + tail


def _version_of(data: bytes, at: int) -> tuple[str, int]:
    flags = data[at]
    ms = int.from_bytes(data[at + 1:at + 7], "big")
    counter = int.from_bytes(data[at + 7:at + 10], "big")
    if flags & _DIGIT_NODE:
        node, at = f"{int.from_bytes(data[at + 10:at + 15], 'big'):012d}", at + 15
    else:
        size = data[at + 10]
        node, at = data[at + 11:at + 11 + size].decode("utf-8"), at + 11 + size
    return ("~" if flags & _DELETED else "") + f"{ms:0{_MS_WIDTH}d}.{counter:0{_COUNTER_WIDTH}d}.{node}", at


def _name_bytes(name: str) -> bytes | None:
    raw = name.encode("utf-8")
    return bytes([len(raw)]) + raw if len(raw) <= 255 else None


def pack_row_versions(versions: dict, columns) -> bytes | str:
    """``pack_versions`` for the office's rows: the same meaning, in bytes (see above)."""
    if not versions:
        return "{}"
    common = _most_common(versions)
    head = _version_bytes(common)
    others = [(c, v) for c, v in versions.items() if v != common]
    unset = [c for c in columns if c not in versions]
    if head is not None and not others and not unset:
        return b"\x01" + head
    if head is not None and len(others) <= 255 and len(unset) <= 255:
        parts = [b"\x02", head, bytes([len(others)])]
        for c, v in others:
            name, version = _name_bytes(c), _version_bytes(v)
            if name is None or version is None:
                break
            parts += [name, version]
        else:
            parts.append(bytes([len(unset)]))
            for c in unset:
                name = _name_bytes(c)
                if name is None:
                    break
                parts.append(name)
            else:
                return b"".join(parts)
    return pack_versions(versions, columns)


def one_row_version(version: str) -> bytes | str:
    """What ``pack_row_versions`` makes of one version for every column, made directly."""
    head = _version_bytes(version)
    return b"\x01" + head if head is not None else _PACKED_TEXT({"*": version})


def unpack_row_versions(packed, columns) -> dict:
    """The versions ``pack_row_versions`` packed (or ``pack_versions``, as stores before version 4 did)."""
    if not isinstance(packed, (bytes, memoryview)):
        return unpack_versions(packed, columns)
    data = bytes(packed)
    common, at = _version_of(data, 1)
    if data[0] == 1:
        return {c: common for c in columns}
    others: dict = {}
    count, at = data[at], at + 1
    for _n in range(count):
        size = data[at]
        name = data[at + 1:at + 1 + size].decode("utf-8")
        others[name], at = _version_of(data, at + 1 + size)
    unset = set()
    count, at = data[at], at + 1
    for _n in range(count):
        size = data[at]
        unset.add(data[at + 1:at + 1 + size].decode("utf-8"))
        at += 1 + size
    return {c: others.get(c, common) for c in columns if c not in unset and others.get(c, common)}
