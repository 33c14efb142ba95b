"""The built-in conflict policies, registered like any plugin (``trylast``).

A policy sees the set of concurrent versions of one cell (its candidates)
and picks a winner. Every policy is a function of that set alone — never of
the order the versions arrived in — which is what makes the merged store the
same whatever order the communities' bundles come in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, NamedTuple

from .hookspecs import hookimpl

if TYPE_CHECKING:
    # For readers and type checkers only: row.py imports the plugin manager, which registers this module.
    from .row import Row
    from .schema import Table


class Candidate(NamedTuple):
    """One version of a cell. A named tuple: the merge makes one per changed cell."""

    value: object  # the plain value (decrypted in memory for a sensitive column)
    version: str  # HLC stamp text; ends with the origin's code, and sorts as the stamps do
    origin: str  # the community (or the office) that made this version
    deleted: bool = False  # a delete's tombstone

    @property
    def live(self) -> bool:
        """Not a delete's tombstone."""
        return not self.deleted


@dataclass(frozen=True)
class Decision:
    """What ``resolve_conflict`` returns: the cell's provisional winner, and whether a person decides."""

    winner: Candidate  # one of the candidates the hook was given
    review: bool  # queue it for a person
    rule: str  # who decided, for the audit ledger
    kind: str = "value"  # value | update-delete | duplicate-registration | …


@dataclass(frozen=True)
class Holding:
    """Who holds a record several communities claim (see the ``record_holder`` hook)."""

    holder: str  # one of the claiming codes
    duplicate: bool  # the claims stand against each other: a person decides
    rule: str
    review: tuple = ()  # columns queued besides the owner column while it is a duplicate


def latest(candidates: Iterable[Candidate]) -> Candidate:
    """Last writer wins: the highest HLC, ties broken by the community code inside it."""
    return max(candidates, key=lambda c: c.version)


def _update_vs_delete(candidates) -> bool:
    return any(c.deleted for c in candidates) and any(c.live for c in candidates)


def _ordered(candidates, reverse):
    """max/min by value; empty values lose; equal values fall back to the latest."""
    present = [c for c in candidates if c.live and c.value is not None]
    if not present:
        return latest(candidates)
    pick = max if reverse else min
    best = pick(_sortable(c.value) for c in present)
    return latest(c for c in present if _sortable(c.value) == best)


def _sortable(value):
    # Numbers before text, so a cell mixing them still has a total order.
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def decide(policy: str, column: str, candidates: list[Candidate], row: Row) -> Decision:
    """The built-in policy ``policy`` over the cell's candidates (contract 3 of DESIGN.md)."""
    if len({(c.deleted, repr(c.value)) for c in candidates}) == 1:
        # The same value reached by several sides is agreement, not a conflict.
        return Decision(latest(candidates), False, f"builtin:{policy}", "same-value")
    if policy == "owner":
        owner = row.owner()
        mine = [c for c in candidates if c.origin == owner]
        winner = latest(mine or candidates)
    elif policy == "office":
        ours = [c for c in candidates if c.origin == row.office_code]
        winner = latest(ours or candidates)
    elif policy == "prefer_non_null":
        present = [c for c in candidates if c.live and c.value is not None]
        winner = latest(present or candidates)
    elif policy == "max":
        winner = _ordered(candidates, reverse=True)
    elif policy == "min":
        winner = _ordered(candidates, reverse=False)
    else:  # lww, manual, and any unknown policy fall back to the latest
        winner = latest(candidates)
    if _update_vs_delete(candidates):
        # Never a silent drop: a person decides between the edit and the delete.
        return Decision(winner, True, f"builtin:{policy}", "update-delete")
    return Decision(winner, policy == "manual", f"builtin:{policy}")


@hookimpl
def conflict_policies() -> list[str]:
    return ["lww", "owner", "office", "prefer_non_null", "max", "min", "manual"]


@hookimpl(trylast=True)
def resolve_conflict(table: Table, column: str, candidates: list[Candidate], row: Row) -> Decision:
    return decide(table.columns[column].policy, column, candidates, row)


@hookimpl(trylast=True)
def record_holder(table: Table, claims: dict[str, Candidate], row: Row) -> Holding:
    """Two communities registering the same record: the one the office gave it to, else the older
    claim, holds it until a person decides, so a newcomer never overwrites another's cells."""
    # The office's decision holds against a claim made since it; then the older claim.
    holder = min(claims, key=lambda code: (claims[code].origin != row.office_code, claims[code].version, code))
    return Holding(holder, duplicate=True, rule="builtin:oldest-claim")
