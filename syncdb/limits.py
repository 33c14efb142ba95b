"""The caps an office puts on one bundle, so no bundle can bloat or stall it.

    STORE/limits.json    {"max_payload": …, "max_changes": …, "max_line": …, "max_value": …}

``office init`` writes the defaults; an administrator may edit the file (any
field left out keeps its default). ``serve`` publishes the caps at
``GET /v1/limits`` and ``push`` splits its exports to fit them.
docs/bundle-format.md ("Limits") says why each default is what it is.

Three caps are structural, checked by ``bundle.changes`` while the payload
streams, and refuse the whole bundle: the decompressed payload size, the
number of changes, and the length of one change line. The fourth, the size
of one value, refuses only the record that carries it (``oversized``, called
by the merge), so one overlong address does not cost a community its night.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import SyncdbError
from .files import write_atomic
from .i18n import _

KiB, MiB = 1 << 10, 1 << 20
FILE_NAME = "limits.json"


@dataclass(frozen=True)
class Limits:
    """One office's caps. Sizes are bytes of UTF-8 (values: of their JSON text)."""

    max_payload: int = 256 * MiB  # a bundle's payload, decompressed
    max_changes: int = 100_000  # changes in one bundle
    max_line: int = 256 * KiB  # one change line, decompressed
    max_value: int = 64 * KiB  # one key or cell value

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT = Limits()

# What an administrator may set each cap to. The upper ends keep a merge of any
# single bundle within a few hundred MB of memory (the merge holds a batch of
# lines at a time); the lower ends keep an ordinary nightly bundle possible.
RANGES = {
    "max_payload": (1 * MiB, 4096 * MiB),
    "max_changes": (100, 10_000_000),
    "max_line": (4 * KiB, 4 * MiB),
    "max_value": (256, 4 * MiB),
}


def from_dict(doc, where: str | None = None) -> Limits:
    """Limits from a JSON object (missing fields take their default); SyncdbError if out of range."""
    where = _("the limits") if where is None else where
    if not isinstance(doc, dict):
        raise SyncdbError(_("{where} must be a JSON object like {example}").format(
            where=where, example=json.dumps(DEFAULT.as_dict())))
    values = {}
    for f in fields(Limits):
        value = doc.get(f.name, getattr(DEFAULT, f.name))
        low, high = RANGES[f.name]
        if type(value) is not int or not low <= value <= high:
            raise SyncdbError(_("{where}: {name} must be a whole number from {low:,} to {high:,} "
                                "(it is {value}); the default is {default:,}").format(
                where=where, name=f.name, low=low, high=high, value=json.dumps(value)[:40],
                default=getattr(DEFAULT, f.name)))
        values[f.name] = value
    if values["max_value"] > values["max_line"]:
        raise SyncdbError(_("{where}: max_value ({max_value:,}) cannot be more than "
                            "max_line ({max_line:,}): a value travels inside a line").format(where=where, **values))
    if values["max_line"] > values["max_payload"]:
        raise SyncdbError(_("{where}: max_line ({max_line:,}) cannot be more than "
                            "max_payload ({max_payload:,})").format(where=where, **values))
    return Limits(**values)


def path(store) -> Path:
    return Path(store) / FILE_NAME


def load(store) -> Limits:
    """The office's caps: STORE/limits.json, or the defaults when there is none."""
    file = path(store)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return DEFAULT
    except OSError as e:
        raise SyncdbError(_("cannot read {file}: {problem}").format(file=file, problem=e.strerror)) from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise SyncdbError(_("{file} is not valid JSON ({problem}); fix it or delete it to use the defaults").format(
            file=file, problem=e)) from None
    return from_dict(doc, str(file))


def save(store, limits: Limits) -> Path:
    return write_atomic(path(store), (json.dumps(limits.as_dict(), indent=2) + "\n").encode())


def value_size(value) -> int:
    """A value's size as it travels: UTF-8 bytes of a string, the JSON text of anything else."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(json.dumps(value))


def oversized(change: dict, max_value: int) -> list[tuple[str, str]]:
    """(field, why) for each key or cell value of ``change`` over ``max_value`` bytes; [] if none.

    For the merge: a record with such a value is rejected on its own, the
    rest of its bundle applies. ``why`` never quotes the value.
    """
    found = []
    for part in ("key", "cells"):
        values = change.get(part)
        if not isinstance(values, dict):
            continue
        for name, value in values.items():
            # Cheap first: most values are far under the cap whatever their encoding.
            if isinstance(value, str) and len(value) * 4 <= max_value:
                continue
            size = value_size(value)
            if size > max_value:
                found.append((str(name), _("the value is {size:,} bytes, over the office's limit of "
                                           "{most:,} bytes for one value; shorten it in the "
                                           "community's database").format(size=size, most=max_value)))
    return found


def fits(change: dict, limits: Limits) -> str | None:
    """Why a community must not send ``change`` under ``limits`` (a value or the line too long), or None."""
    problems = oversized(change, limits.max_value)
    if problems:
        return "; ".join(f"{name}: {why}" for name, why in problems)
    size = len(line_bytes(change))
    if size > limits.max_line:
        return _("the record is {size:,} bytes as a change, over the office's limit of {most:,} "
                 "bytes for one record; shorten its longest values").format(size=size, most=limits.max_line)
    return None


def line_bytes(change: dict) -> bytes:
    """The change as one payload line (the bytes bundle.write emits for it, newline included)."""
    return json.dumps(change, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass") + b"\n"
