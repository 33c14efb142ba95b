"""The pluggy hook specifications: how plugins take part in a merge.

The built-in conflict policies (rules.py) are plugins like any other,
registered ``trylast``, so a domain plugin in plugins/ decides first.
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("syncdb")
hookimpl = HookimplMarker("syncdb")


@hookspec
def conflict_policies():
    """Return the names of the conflict policies this plugin adds (for schema checking)."""


@hookspec(firstresult=True)
def resolve_conflict(table, column, candidates, row):
    """Pick the winner among concurrent versions of one cell, or return None to pass.

    ``candidates`` are Candidate objects (value, version, origin, deleted),
    sorted by version; ``row`` gives the other cells' candidates through
    ``row.candidates(column)`` and ``row.winner(column)``, for rules about the
    whole record. Return a Decision(winner, review, kind).
    """


@hookspec(firstresult=True)
def record_holder(table, claims, row):
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
