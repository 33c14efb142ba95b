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


def pack_versions(versions: dict, columns) -> str:
    """Store the most common version once as "*", the others by column, and "-" the unset."""
    if not versions:
        return "{}"
    counts = {}
    for v in versions.values():
        counts[v] = counts.get(v, 0) + 1
    common = max(counts, key=lambda v: (counts[v], v))
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
