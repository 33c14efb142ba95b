"""Resident transfer between communities (户口迁移), a domain rule for huji.persons.

- Community A marks a resident ``moved_out`` and community B registers the
  same ID number: a transfer. B's record wins every cell, with no conflict
  for a person to look at, whichever bundle arrives first.
- Both communities hold the resident as ``normal`` at once: a duplicate
  registration, queued for review on the status cell. When one side later
  marks the resident moved out, it becomes a transfer and the conflict
  closes by itself.
"""

from syncdb.hookspecs import hookimpl
from syncdb.rules import Decision, latest

TABLE = "huji.persons"


def _latest_status_by_community(row):
    by_origin = {}
    for candidate in row.candidates("status"):
        if candidate.origin not in by_origin or candidate.version > by_origin[candidate.origin].version:
            by_origin[candidate.origin] = candidate
    return by_origin


@hookimpl
def resolve_conflict(table, column, candidates, row):
    if table.qualified != TABLE:
        return None
    by_origin = _latest_status_by_community(row)
    if len(by_origin) < 2:
        return None  # edits within one community: the column's own policy decides
    registered = sorted(o for o, c in by_origin.items() if c.live and c.value == "normal")
    if len(registered) == 1:
        mine = [c for c in candidates if c.origin == registered[0]]
        if mine:
            return Decision(latest(mine), review=False, rule="plugin:transfer", kind="transfer")
        return None
    if len(registered) > 1:
        return Decision(latest(candidates), review=column == "status", rule="plugin:transfer",
                        kind="duplicate-registration")
    return None
