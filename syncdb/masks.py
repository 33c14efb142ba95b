"""Masking: enough of a sensitive value to find a record by, not enough to read it.

Used wherever a key must be named without being shown: rejections, held records, the
conflict queue's record labels, and the projection's masked ID numbers.
"""

from __future__ import annotations


def mask(value: str | None) -> str:
    """Show enough of a key to find it, not enough to read it: 110105********002X."""
    if value is None:
        return ""
    text = str(value)
    if len(text) >= 15:
        return text[:6] + "*" * (len(text) - 10) + text[-4:]
    if len(text) >= 3:
        return text[0] + "*" * (len(text) - 2) + text[-1]
    return "*" * len(text)
