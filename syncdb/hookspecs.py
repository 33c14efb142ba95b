"""The pluggy hook specifications: how plugins take part in a merge.

The built-in conflict policies (rules.py) are plugins like any other,
registered ``trylast``, so a domain plugin in plugins/ decides first.
docs/plugins.md is the reference for these hooks and the types they see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    # For readers and type checkers only: rules.py imports this module for hookimpl.
    from .checks import Check
    from .row import Row
    from .rules import Candidate, Decision, Holding
    from .schema import Table

hookspec = HookspecMarker("syncdb")
hookimpl = HookimplMarker("syncdb")


@hookspec
def conflict_policies() -> list[str]:
    """Return the names of the conflict policies this plugin adds.

    Loading a schema (syncdb.schema.load_domains) accepts them in a column's
    ``policy``; ``resolve_conflict`` is where the plugin acts on them.
    """


@hookspec(firstresult=True)
def resolve_conflict(table: Table, column: str, candidates: list[Candidate], row: Row) -> Decision | None:
    """Pick the winner among concurrent versions of one cell, or return None to pass.

    ``candidates`` are Candidate objects (value, version, origin, deleted),
    sorted by version, from the community holding the record and the office
    only; ``row`` is the record (a syncdb.row.Row): the other cells'
    candidates through ``row.candidates(column)`` and ``row.winner(column)``,
    for rules about the whole record. Return a Decision(winner, review, rule,
    kind), ``winner`` being one of ``candidates``.
    """


@hookspec(firstresult=True)
def record_holder(table: Table, claims: dict[str, Candidate], row: Row) -> Holding | None:
    """Decide which community holds a record that several communities claim, or return None to pass.

    ``claims`` maps each claiming community's code to its claim: the live
    Candidate of the owner column naming it (a community's version always names
    itself; an office version may name any community). Only the holder's
    versions (and the office's) can win the record's cells; the others are kept
    aside, never shown and never queued. Return a Holding(holder, duplicate,
    rule, review): ``duplicate`` when the claims stand against each other
    (queued for a person on the owner column and on ``review`` columns).
    Decide from the claims and ``row.candidates(column)`` alone, never from the
    order bundles arrived in.
    """


@hookspec
def cross_checks() -> list[Check]:
    """Return the cross-domain checks (信息比对) this plugin adds: syncdb.checks.Check objects.

    The office runs them on the store's records, decrypted in memory only,
    after each merge and with ``syncdb checks run``; each finding becomes a
    case for a person to work (docs/checks.md). A check never changes a record.
    """
