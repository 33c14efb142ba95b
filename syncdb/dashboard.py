"""The street office at a glance: the dashboard (看板) at ``/-/dashboard``.

Per community: the registered residents, households, the floating population
living here now, 民政's assistance and benefits by type, open conflicts and
the last successful sync; the street's totals; what the audit ledger saw
change in the last 30 days; and two charts.

Every count is a ``count(*)`` over the published masked database, the tables
staff open, with the filter the page's notes state: an administrator running
the same SQL gets the same number. Only counts are shown, and to every role
alike: no name, ID number or other value of a person is on the page, so it
needs no plaintext and is not a plaintext view to log.

The charts are Vega-Lite specs rendered to SVG by vl-convert: no charting code
of ours. The board is made once per data generation (the plugin refreshes the
published databases after a merge) and per day, off the event loop; every
other request is served from the cache.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field

import vl_convert

from . import audit, checks_pages, conflicts, pages
from .i18n import N_, _
from .projection import published_name
from .schema import Domain, Table
from .store import Store

RECENT_DAYS = 30
PERSONS = "huji.persons"  # 户籍人员
HOUSEHOLDS = "huji.households"  # 户
STILL_REGISTERED = "normal"  # 人员状态: the code of a person registered and living here (not 迁出, not 死亡)
SUPPORT = ("minzheng.assistance", "minzheng.benefits")  # 社会救助 per household; 民政待遇 per person
RECEIVING = "active"  # 待遇状态 / 救助状态: 享受中
STATUS, LEAVING, MEMBERS = "status", "leaving_date", "members"


@dataclass(frozen=True)
class Measure:
    """One count per community: a published table and the filter that decides what counts."""

    key: str
    title: str  # an N_() message
    table: Table
    where: str = "1"
    params: tuple = ()

    def sql(self, domains: dict[str, Domain], by: tuple[str, ...] = ()) -> str:
        """``SELECT owner, *by, count(*)`` over the published table, grouped per community."""
        columns = ", ".join(f"[{c}]" for c in (label(self.table, self.table.owner), *by))
        return (f"SELECT {columns}, count(*) FROM [{published(domains, self.table)}] "
                f"WHERE {self.where} GROUP BY {columns}")


def published(domains: dict[str, Domain], table: Table) -> str:
    return published_name(domains[table.domain], table)


def label(table: Table, column: str) -> str:
    """A column's name in the published databases (its Chinese label)."""
    return table.columns[column].label


def find(domains: dict[str, Domain], qualified: str) -> Table | None:
    domain, _dot, name = qualified.partition(".")
    return domains[domain].tables.get(name) if domain in domains else None


def measures(domains: dict[str, Domain], today: str) -> list[Measure]:
    """The people and households counted, as far as the office's schemas have their tables."""
    found = []
    persons, households = find(domains, PERSONS), find(domains, HOUSEHOLDS)
    if persons is not None:
        found.append(Measure("residents", N_("Registered residents"), persons,
                             f"[{label(persons, STATUS)}] = ?", (STILL_REGISTERED,)))
    if households is not None:
        found.append(Measure("households", N_("Households"), households))
    # The floating population: every other table of people living at an address here, such as
    # 流动人员 (pages.resident_tables), less those whose leaving date has come.
    for table in pages.resident_tables(domains):
        if table.qualified != PERSONS:
            where, params = "1", ()
            if LEAVING in table.columns:
                leaving = label(table, LEAVING)
                where, params = f"(coalesce([{leaving}], '') = '' OR [{leaving}] > ?)", (today,)
            found.append(Measure("migrants", N_("Floating population"), table, where, params))
    return found


@dataclass(frozen=True)
class Support:
    """One of 民政's tables of assistance or benefits, counted per type of what is received."""

    table: Table
    kind: str  # the coded key column: 救助类别 or 待遇类别
    per_household: bool

    def measure(self) -> Measure:
        return Measure("support", "", self.table, f"[{label(self.table, STATUS)}] = ?", (RECEIVING,))


def supports(domains: dict[str, Domain]) -> list[Support]:
    found = []
    for qualified in SUPPORT:
        table = find(domains, qualified)
        if table is not None:
            kind = next(c for c in table.key if table.columns[c].codes)
            found.append(Support(table, kind, per_household=not table.id_columns))
    return found


# ---------------------------------------------------------------- what the board shows

@dataclass
class Board:
    communities: list[dict]  # per community: code, name, counts by measure key, support by type, sync
    totals: dict
    measures: list[dict]  # key, title
    support_types: list[dict]  # key, title (the meaning of the code), unit, per_household
    recent: list[dict]  # per community: what the ledger saw change in RECENT_DAYS days
    charts: list[dict] = field(default_factory=list)  # title, svg
    made_at: str = ""
    notes: list[str] = field(default_factory=list)


def counts(conn, domains: dict[str, Domain], today: str) -> dict:
    """Every count of the board, per community, from a connection to the published masked database."""
    out: dict = {"measures": {}, "support": {}}
    for m in measures(domains, today):
        found = out["measures"].setdefault(m.key, {})
        for community, n in conn.execute(m.sql(domains), m.params):
            found[community] = found.get(community, 0) + n
    for s in supports(domains):
        code_table = domains[s.table.domain].code_table(s.table.columns[s.kind].codes)
        m = s.measure()
        for community, code, n in conn.execute(m.sql(domains, (label(s.table, s.kind),)), m.params):
            key = f"{s.table.qualified}:{code}"
            out["support"].setdefault(key, {"title": code_table.get(str(code), str(code)),
                                            "per_household": s.per_household, "by": {}})
            out["support"][key]["by"][community] = n
    return out


def store_facts(store: Store, store_dir, since: str) -> dict:
    """From the store (read-only): sync status, open conflicts and cases per community, recent changes."""
    involved: dict[str, int] = {}
    for item in conflicts.items(store):
        for origin in {c["origin"] for c in item["candidates"]}:
            involved[origin] = involved.get(origin, 0) + 1
    return {"sync": pages.sync_status(store, store_dir), "conflicts": involved,
            "open_conflicts": conflicts.signature(store)[0], "recent": recent_changes(store, since),
            "cases": checks_pages.open_per_community(store)}


def recent_changes(store: Store, since: str) -> dict[str, dict[str, dict[str, set]]]:
    """origin -> table -> {"added", "removed", "status"}: the records the ledger saw change since ``since``.

    The ledger holds versions, not values: it tells that a person's 人员状态
    or a migrant's leaving date changed, not to what, so the board shows these
    changes rather than a count as it stood 30 days ago.
    """
    out: dict = {}
    for origin, change in audit.changes_after(store, since):
        if not change["key"]:
            continue  # a bundle skipped by hand: no record
        cells = set((change.get("detail") or {}).get("cells") or ())
        kind = {"insert": "added", "delete": "removed"}.get(change["op"])
        if kind is None and cells & {STATUS, LEAVING}:
            kind = "status"
        if kind:
            out.setdefault(origin, {}).setdefault(change["table"], {}).setdefault(kind, set()).add(change["key"])
    return out


def assemble(domains: dict[str, Domain], found: dict, facts: dict, today: str) -> Board:
    """The board's rows and totals from the counts and the store's facts."""
    shown = [{"key": m.key, "title": _(m.title)} for m in _unique(measures(domains, today))]
    types = [{"key": key, "title": s["title"], "per_household": s["per_household"]}
             for key, s in sorted(found["support"].items())]
    sync = {row["code"]: row for row in facts["sync"]}
    codes = sorted(set(sync) | {c for by in found["measures"].values() for c in by}
                   | {c for s in found["support"].values() for c in s["by"]})
    rows = []
    for code in codes:
        row = sync.get(code, {})
        rows.append({"code": code, "name": row.get("name", ""),
                     "counts": {m["key"]: found["measures"].get(m["key"], {}).get(code, 0) for m in shown},
                     "support": {t["key"]: found["support"][t["key"]]["by"].get(code, 0) for t in types},
                     "conflicts": facts["conflicts"].get(code, 0), "cases": facts["cases"].get(code, 0),
                     "synced_at": row.get("applied_at", ""), "lag_hours": row.get("lag_hours")})
    totals = {"counts": {m["key"]: sum(r["counts"][m["key"]] for r in rows) for m in shown},
              "support": {t["key"]: sum(r["support"][t["key"]] for r in rows) for t in types},
              "conflicts": facts["open_conflicts"], "cases": sum(facts["cases"].values())}
    return Board(rows, totals, shown, types, recent_rows(domains, facts["recent"], rows, today))


def _unique(found: list[Measure]) -> list[Measure]:
    """One column per kind of measure (two tables of migrants still make one 流动人口 column)."""
    seen, out = set(), []
    for m in found:
        if m.key not in seen:
            seen.add(m.key)
            out.append(m)
    return out


def recent_rows(domains: dict[str, Domain], recent: dict, rows: list[dict], today: str) -> list[dict]:
    """Per community, for each counted table: records added, removed and with a changed status."""
    tables = {m.table.qualified: m for m in measures(domains, today)}
    out = []
    for row in rows:
        changed = recent.get(row["code"], {})
        cells = {key: {kind: 0 for kind in ("added", "removed", "status")} for key in ("residents", "households",
                                                                                     "migrants")}
        for qualified, kinds in changed.items():
            if qualified in tables:
                for kind, keys in kinds.items():
                    cells[tables[qualified].key][kind] += len(keys)
        out.append({"code": row["code"], "name": row["name"], "cells": cells})
    return out


# ---------------------------------------------------------------- the charts

def chart_specs(board: Board) -> list[dict]:
    """Vega-Lite specs: people per community (residents beside migrants), and assistance by type."""
    people = [m for m in board.measures if m["key"] in ("residents", "migrants")]
    values = [{"community": r["name"] or r["code"], "group": m["title"], "count": r["counts"][m["key"]]}
              for r in board.communities for m in people]
    specs = [{"title": _("Residents and floating population per community"), "spec": _bars(
        values, "community", _("People"), offset=True)}] if values else []
    support = [{"type": t["title"], "group": _("households") if t["per_household"] else _("persons"),
                "count": board.totals["support"][t["key"]]} for t in board.support_types]
    if support:
        specs.append({"title": _("Assistance and benefits received, by type (the street)"),
                      "spec": _bars(support, "type", _("Number"), offset=False)})
    return specs


def _bars(values: list[dict], category: str, measured: str, offset: bool) -> dict:
    """Horizontal bars (long Chinese names read best along the side), coloured by group."""
    encoding = {
        "y": {"field": category, "type": "nominal", "title": None, "sort": None},
        "x": {"field": "count", "type": "quantitative", "title": measured, "axis": {"tickMinStep": 1}},
        "color": {"field": "group", "type": "nominal", "title": None, "legend": {"orient": "top"}},
    }
    if offset:
        encoding["yOffset"] = {"field": "group"}
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"values": values},
            "mark": {"type": "bar", "tooltip": False},
            "encoding": encoding, "width": 520, "height": {"step": 14 if offset else 22},
            # The browser's fonts are not the ones vl-convert measured with: room for wider labels.
            "padding": {"left": 24, "right": 8, "top": 4, "bottom": 4},
            "config": {"aria": False, "font": "sans-serif", "axis": {"labelLimit": 240}}}


def render(specs: list[dict]) -> list[dict]:
    """Each spec as SVG (vl-convert runs Vega in its own engine: slow enough to keep off the event loop)."""
    return [{"title": s["title"], "svg": vl_convert.vegalite_to_svg(s["spec"])} for s in specs]


NOTES = (
    N_("Registered residents: persons of the household register (户籍) whose person status is {normal}; "
       "those moved out ({moved_out}) or deceased ({deceased}) are not counted."),
    N_("Households: every household record of the register."),
    N_("Floating population: migrants registered here whose leaving date is empty or still to come."),
    N_("Assistance (per household) and benefits (per person): records whose status is {active}, by type."),
    N_("Open conflicts: the conflicts waiting for the data administrator that this community's data is part "
       "of; the street's total counts each conflict once."),
    N_("Open cases: the cross-domain checks' cases still to be worked on (open or confirmed) listed under "
       "this community; the street's total also counts a case listed under no community."),
    N_("Last successful sync: when the community's last bundle was merged."),
    N_("Changes in the last {days} days come from the audit ledger: records added, removed, and records "
       "whose status (or leaving date) changed. The ledger keeps versions, not values, so it cannot say "
       "how many residents there were {days} days ago."),
    N_("Every count is a count of the published tables: the same numbers as counting them yourself."),
)


def notes(domains: dict[str, Domain]) -> list[str]:
    """The notes, with each status code the counts filter on read as its meaning in the schemas."""
    people = meanings(domains, find(domains, PERSONS))
    support = next((meanings(domains, s.table) for s in supports(domains)), {})
    words = {code: people.get(code, code) for code in ("normal", "moved_out", "deceased")}
    return [_(text).format(**words, active=support.get(RECEIVING, RECEIVING), days=RECENT_DAYS) for text in NOTES]


def meanings(domains: dict[str, Domain], table: Table | None) -> dict[str, str]:
    """The meanings of a table's status codes ({} if it has no coded status)."""
    if table is None or STATUS not in table.columns or not table.columns[STATUS].codes:
        return {}
    return domains[table.domain].code_table(table.columns[STATUS].codes)


# ---------------------------------------------------------------- made once per generation

class Cache:
    """The last board made, and what it was made for (the data generation, the day, the language)."""

    def __init__(self):
        self.made_for = None
        self.board: Board | None = None
        self.lock = asyncio.Lock()

    async def get(self, made_for, make) -> Board:
        async with self.lock:  # two requests at once make it once
            if self.board is None or self.made_for != made_for:
                self.board = await make()
                self.made_for = made_for
            return self.board


_caches: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def cache_for(datasette) -> Cache:
    """One cache per published site (the Datasette instance), gone with it."""
    if datasette not in _caches:
        _caches[datasette] = Cache()
    return _caches[datasette]


async def board(datasette, db, open_store, store_dir, domains: dict[str, Domain], generation) -> Board:
    """The board for this generation of the published data, made on the first request after a refresh.

    ``db`` is the published masked database (Datasette's), ``open_store`` opens
    the store read-only for the calling thread.
    """
    today = time.strftime("%Y-%m-%d")
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - RECENT_DAYS * 86400))

    async def make() -> Board:
        found = await db.execute_fn(lambda conn: counts(conn, domains, today))

        def facts():
            with open_store() as store:
                return store_facts(store, store_dir, since)
        made = assemble(domains, found, await asyncio.to_thread(facts), today)
        made.charts = await asyncio.to_thread(render, chart_specs(made))
        made.made_at = time.strftime("%Y-%m-%d %H:%M:%S")
        made.notes = notes(domains)
        return made
    return await cache_for(datasette).get((generation, today), make)
