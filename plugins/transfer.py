"""Resident transfer between communities (户口迁移), a domain rule for huji.persons.

Which community holds a resident that more than one community has registered:

- Community A marks a resident ``moved_out`` and community B registers the
  same ID number: a transfer. B holds the record and its versions win every
  cell, with no conflict for a person to look at, whichever bundle arrives
  first. A's own copy stays aside; A may edit or delete it without touching B's.
- Both communities hold the resident as ``normal`` at once: a duplicate
  registration. The community the office gave the record to keeps it, else the
  older registration; the status cell, and
  every ``manual`` column on which the two disagree, is queued for a person.
  When one side later marks the resident moved out, it becomes a transfer and
  the conflicts close by themselves.
- Nobody holds them as normal any more (moved on, deceased): the copy whose
  status changed last holds the record, with nothing to queue.

A community never gets a resident by editing another community's record: the
merge refuses that before any rule is asked (docs/merge.md, "trust model").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from syncdb.hookspecs import hookimpl
from syncdb.rules import Candidate, Holding

if TYPE_CHECKING:  # names for the hints only
    from syncdb.row import Row
    from syncdb.schema import Table

TABLE = "huji.persons"


def _status_of(row: Row, community: str, claims: dict[str, Candidate]) -> str | None:
    """The status of the community's copy of the record (its latest version); where the office
    gave the record to it, the office's versions are that copy too."""
    by_office = claims[community].origin == row.office_code
    mine = [c for c in row.candidates("status")
            if c.origin == community or (by_office and c.origin == row.office_code)]
    if not mine:
        return None
    latest = max(mine, key=lambda c: c.version)
    return latest.value if latest.live else None


@hookimpl
def record_holder(table: Table, claims: dict[str, Candidate], row: Row) -> Holding | None:
    if table.qualified != TABLE:
        return None
    registered = sorted(code for code in claims if _status_of(row, code, claims) == "normal")
    if len(registered) == 1:
        return Holding(registered[0], duplicate=False, rule="plugin:transfer")
    if len(registered) > 1:
        # The office's decision holds against a registration made since; then the older one.
        first = min(registered, key=lambda code: (claims[code].origin != row.office_code,
                                                  claims[code].version, code))
        return Holding(first, duplicate=True, rule="plugin:transfer", review=("status",))
    # Nobody holds them as normal (moved on, or deceased): the copy that changed last.
    def last_change(code: str) -> tuple[str, str]:
        mine = [c.version for c in row.candidates("status") if c.origin == code]
        return (max(mine) if mine else "", code)
    return Holding(max(claims, key=last_change), duplicate=False, rule="plugin:transfer")
