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
