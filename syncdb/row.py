"""A stored record while a change is applied to it, as the merge and plugins see it."""

from __future__ import annotations

from dataclasses import dataclass

from . import conflicts
from .hlc import unpack_row_versions
from .plugins import manager
from .rules import Candidate
from .schema import Table
from .store import Store, table_name

_READ = object()


class Row:
    """One stored record while a change is applied to it: its cells' frontiers.

    The merge's working view of a record, and what plugins are handed (the
    ``row`` argument of the hooks; docs/plugins.md). For plugins: ``table``
    (the schema Table), ``key`` (the record's blind key), ``office_code``,
    ``exists``, ``candidates(column)``, ``winner(column)``, ``claims()`` and
    ``owner()`` (not from ``record_holder``, whose answer it is).
    Everything else is the merge's own.
    """

    def __init__(self, store: Store, table: Table, key: bytes, special: bool, stored=_READ):
        """``special``: the key has frontier, conflict or dominated entries to read.

        ``stored``: the row as stored (column -> value, the sensitive ones in
        plaintext: Store.plain_row), None when there is none, or left out to
        read it now.
        """
        self.store, self.table, self.key = store, table, key
        self.office_code = store.office_code  # for policies and rules that favour the office
        self.name = table_name(table)
        conn = store.conn
        if stored is _READ:
            cursor = conn.execute(f"SELECT * FROM [{self.name}] WHERE _key = ?", (key,))
            found = cursor.fetchone()
            names = [d[0] for d in cursor.description]
            stored = store.plain_row(table, dict(zip(names, found)), key, with_seal=True) if found else None
        self.exists = stored is not None
        self.stored = stored or {}
        self.versions = unpack_row_versions(self.stored.get("_versions"), table.non_key)
        self.frontiers: dict[str, list[Candidate]] = {}
        self.open_conflicts: set[str] = set()
        self.dominated: set[tuple[str, str]] = set()
        if special:
            for col, version, origin, value, deleted in conn.execute(
                    "SELECT col, version, origin, value, deleted FROM frontier WHERE tbl = ? AND key = ?",
                    (table.qualified, key)):
                value = store.plain(table, col, value, key)
                self.frontiers.setdefault(col, []).append(Candidate(value, version, origin, bool(deleted)))
            self.open_conflicts = conflicts.open_columns(store, table.qualified, key)
            self.dominated = {(c, v) for c, v in conn.execute(
                "SELECT col, version FROM dominated WHERE tbl = ? AND key = ?", (table.qualified, key))}
        self.had_frontier = set(self.frontiers)
        self._holding = None  # worked out once the change's versions are offered
        self.blank = False  # an update of a record with no trace here: nothing of it is shown
        self.claimants_before: set = set()  # set by the merge where a community builds on office versions
        self.new_dominated = []
        self.touched = set()
        self.winners: dict[str, Candidate] = {}

    def candidates(self, col: str) -> list[Candidate]:
        if col in self.frontiers:
            return self.frontiers[col]
        version = self.versions.get(col)
        if not version:
            return []
        deleted = version.startswith("~")
        version = version.lstrip("~")
        return [Candidate(self.stored.get(col), version, origin_of(version), deleted)]

    def offer(self, col: str, candidate: Candidate, base) -> None:
        """Add a version to the cell's frontier, retiring the version(s) it was based on.

        A community's change has one base version per cell; an office
        resolution is based on every candidate it settles, so a list.
        """
        # A community building on an office version goes the long way: see the checks below.
        guarded = isinstance(base, str) and candidate.origin != self.office_code and origin_of(base) == self.office_code
        if col not in self.frontiers and not guarded and (base is None or (isinstance(base, str) and base)):
            # The common cases, without opening the stored value: an empty cell
            # given its first value, or a clean apply onto the cell's one version.
            if (self.versions.get(col) or "").lstrip("~") == (base or ""):
                self.frontiers[col] = [] if (col, candidate.version) in self.dominated else [candidate]
                self.touched.add(col)
                return
        frontier = list(self.candidates(col))
        from_office = candidate.origin == self.office_code
        for version in ([base] if isinstance(base, str) else base or []):
            if not from_office and origin_of(version) == self.office_code:
                if candidate.origin not in self.claimants_before:
                    # The office's versions of a record belong to those who hold it: one who
                    # does not may keep its own copy beside them, never retire them (or the
                    # office's word on who holds the record, and on its status, would go).
                    continue
                if col == self.table.owner and any(
                        c.version == version and c.value != candidate.origin for c in frontier):
                    # The office gave the record to another community: only a person (or the
                    # transfer rule, seeing both claims) may take it from them.
                    continue
                if all(c.version != version for c in frontier):
                    # An office version is made and applied at the office before any community
                    # can see it: one named but not here is retired already, or made up.
                    continue
            kept = [c for c in frontier if c.version != version]
            if len(kept) == len(frontier) and (col, version) not in self.dominated:
                self.dominated.add((col, version))
                self.new_dominated.append((col, version))
            frontier = kept
        # One node's stamps are ordered: its later version supersedes its own earlier ones,
        # named as base or not. So a cell holds at most one version per origin, and no
        # bundle can grow a frontier (and the cost of every later change to it) without bound.
        superseded = any(c.origin == candidate.origin and c.version > candidate.version for c in frontier)
        frontier = [c for c in frontier if c.origin != candidate.origin or c.version >= candidate.version]
        if (col, candidate.version) not in self.dominated and not superseded \
                and all(c.version != candidate.version for c in frontier):
            frontier.append(candidate)
        self.frontiers[col] = sorted(frontier, key=lambda c: c.version)
        self.touched.add(col)

    def winner(self, col: str) -> Candidate | None:
        if col in self.winners:
            return self.winners[col]
        frontier = self.candidates(col)
        return max(frontier, key=lambda c: c.version) if frontier else None

    def owner(self):
        """The community holding the record (None once those who held it deleted it)."""
        return self.holding().holder

    def claims(self) -> dict:
        """Community code -> its live claim: the latest owner-cell version naming it."""
        claims = {}
        for c in self.candidates(self.table.owner):
            if c.live and c.value not in (None, "") and (c.value not in claims or c.version > claims[c.value].version):
                claims[c.value] = c
        return claims

    def holding(self) -> "Holders":
        """Who holds the record, and so whose versions may win its cells (docs/merge.md, trust model).

        A function of the owner cell's versions (and, through the rules, the
        other cells' versions) alone, so it is the same in any arrival order.
        """
        if self._holding is None:
            claims = self.claims()
            if not claims:
                # Nobody holds it: deleted. Only deletes (and the office) decide its cells, so no
                # version kept aside can bring it back.
                self._holding = Holders(None, frozenset(), False, "", ())
            elif len(claims) == 1:
                (holder,) = claims
                self._holding = Holders(holder, frozenset([holder]), False, "", ())
            else:
                h = manager().hook.record_holder(table=self.table, claims=claims, row=self)
                self._holding = Holders(h.holder, frozenset([h.holder]), h.duplicate, h.rule,
                                         (self.table.owner,) if not h.review else tuple(h.review))
        return self._holding


@dataclass(frozen=True)
class Holders:
    """Who holds a record, as the merge works it out (see Row.holding)."""
    holder: str | None
    eligible: frozenset  # the communities whose versions may win a cell (the office's always may)
    duplicate: bool
    rule: str
    review: tuple  # columns queued while the claims stand against each other


def origin_of(version: str) -> str:
    """The node that made a version: ``ms.counter.node``."""
    return version.split(".", 2)[2]
