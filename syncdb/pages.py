"""What the office pages of ``syncdb publish`` show beyond the tables.

Sync status and the conflict queue are read from the store (opened
read-only) and the quarantine at each request; conflict candidates are
masked unless the reader may see plaintext. The person and address pages
read the published in-memory database the reader may open.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from dataclasses import dataclass

from . import checks, conflicts, meanings, office
from .projection import PERSON_COLUMN, mask_value, person_column, published_name
from .schema import Domain, Table
from .store import Store


def refusals(store_dir) -> list[dict]:
    """The quarantine's records, newest first: who (verified, or only claimed), why, when.

    A bundle refused before its signature checked out has no verified sender:
    it is listed with the origin its header claims, never counted for that community.
    """
    out = []
    for path in office.quarantine_dir(store_dir).glob("*.reason.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {"reason": "unreadable", "message": f"the record {path.name} cannot be read"}
        origin = record.get("origin")
        if origin is None and path.name.startswith("inbox-"):
            origin = path.name[len("inbox-"):].split("-")[0]  # the office's own inbox copy: verified once
        verified = origin not in (None, "unknown")
        out.append({"origin": origin if verified else None, "claimed": None if verified else _claimed(record),
                    "reason": str(record.get("reason", "unknown")), "refused": str(record.get("refused", "")),
                    "sequence": record.get("sequence")})
    out.sort(key=lambda r: r["refused"], reverse=True)
    return out


def _claimed(record: dict) -> str:
    """The origin an unverified header claims, if it can be read: a claim, shown as one."""
    found = re.search(r'"origin"\s*:\s*"([^"\\]{1,40})"', str(record.get("header") or ""))
    return found.group(1) if found else "?"


def sync_status(store: Store, store_dir) -> list[dict]:
    """Per community: last bundle applied, when, what waits, what was refused."""
    conn = store.conn
    now = time.time()
    refused: dict[str, int] = {}
    for item in refusals(store_dir):
        if item["origin"]:
            refused[item["origin"]] = refused.get(item["origin"], 0) + 1
    out = []
    names = office.names(conn)
    for (code,) in conn.execute("SELECT code FROM communities ORDER BY code"):
        # The last bundle applied and received by the primary keys; the sums by an index holding them
        # (store version 5), a few bytes a bundle, never the bundles' rows.
        applied = (*office.last_bundle(conn, "applied", code),
                   *conn.execute("SELECT coalesce(sum(changes), 0), coalesce(sum(rejected), 0) FROM applied "
                                 "WHERE origin = ?", (code,)).fetchone())
        received = office.last_bundle(conn, "received", code)
        last = applied[1]
        lag = None
        if last:
            lag = (now - time.mktime(time.strptime(last, "%Y-%m-%dT%H:%M:%S"))) / 3600
        out.append({"code": code, "name": names.get(code, ""), "last_applied": applied[0] or 0, "applied_at": last or "",
                    "lag_hours": None if lag is None else round(lag, 1),
                    "last_received": received[0] or 0, "received_at": received[1] or "",
                    "waiting": (received[0] or 0) - (applied[0] or 0), "changes": applied[2],
                    "rejected": applied[3], "refused": refused.get(code, 0)})
    return out


def open_conflicts(store: Store, plaintext: bool) -> list[dict]:
    """The queue, read-only: candidates masked unless ``plaintext``."""
    names = office.names(store.conn)
    out = []
    for item in conflicts.items(store):
        table = store.table(item["table"])
        column = table.columns[item["column"]]
        hidden = column.sensitive and not plaintext
        candidates = [{"origin": office.label(c["origin"], names), "version": c["version"], "deleted": c["deleted"],
                       "value": meanings.shown(store.domains[table.domain], column,
                                               mask_value(column, c["value"]) if hidden else c["value"], hidden)}
                      for c in item["candidates"]]
        out.append({"id": item["id"], "table": published_name(store.domains[table.domain], table),
                    "record": item["record"], "column": column.label, "kind": item["kind"], "rule": item["rule"],
                    "opened": item["opened"], "candidates": candidates})
    return out


# ---------------------------------------------------------------- places: the person and address pages
#
# 一标三实: every resident, house and unit hangs on a standard address, and
# addresses are grouped into grids. These pages read the published in-memory
# database the reader may open (masked, or plaintext for ``view-pii``), so
# they mask exactly what the tables mask. Tables and columns are found by the
# schemas' ``references``, so a store without these domains shows no places.

ADDRESSES = "dizhi.addresses"  # 标准地址
HOUSES = "fangwu.houses"  # 实有房屋
GRIDS = "wangge.grids"  # 网格
# What the address page lists of each person living there: those of these columns their table has.
RESIDENT_COLUMNS = ("name", "id_number", "sex", "birth_date", "household_no", "relationship", "status",
                    "house_code", "reason", "arrival_date", "leaving_date", "permit_expires")
HOUSE_COLUMNS = ("house_code", "use", "rented", "rooms", "capacity", "owner_name", "landlord_phone",
                 "rental_expires")
GRID_COLUMNS = ("grid_code", "name", "worker_name", "worker_phone")
# How people read each part of an address: 莞太路 12号 3栋 2单元 501房.
ADDRESS_PARTS = (("road", ""), ("door_no", "号"), ("building", "栋"), ("unit", "单元"), ("room", "房"))


class Published:
    """The published tables on one connection to an in-memory database, read by schema names."""

    def __init__(self, conn, domains: dict[str, Domain]):
        self.conn, self.domains = conn, domains

    def table(self, qualified: str) -> Table | None:
        domain, _, name = qualified.partition(".")
        return self.domains[domain].tables.get(name) if domain in self.domains else None

    def name(self, table: Table) -> str:
        return published_name(self.domains[table.domain], table)

    def rows(self, table: Table, where: dict[str, list]) -> list[dict]:
        """Records whose column (a schema name) holds one of the values listed for it, by schema names;
        the person page's token as PERSON_COLUMN."""
        terms, params = [], []
        labels = {c.name: c.label for c in table.columns.values()}
        if person_column(table):
            labels[PERSON_COLUMN] = PERSON_COLUMN
        for column, values in where.items():
            values = [v for v in values if v not in (None, "")]
            if column in labels and values:
                terms.append(f"[{labels[column]}] IN ({', '.join('?' * len(values))})")
                params += values
        if not terms:
            return []
        by_label = {c.label: c.name for c in table.columns.values()}
        cursor = self.conn.execute(f"SELECT * FROM [{self.name(table)}] WHERE {' OR '.join(terms)}", params)
        labels = [d[0] for d in cursor.description]
        return [{by_label.get(label, label): value for label, value in zip(labels, row)} for row in cursor]

    def shown(self, table: Table, names, row: dict) -> list[dict]:
        """Cells as a page shows them: label, and a code with its meaning from the schema (`2 女性`)."""
        cells = []
        for name in names:
            if name not in table.columns:
                continue
            column, value = table.columns[name], row.get(name)
            # A sensitive coded column counts as masked: its meaning is never looked up on a page
            # that may be the masked one (the meaning would tell what the mask hides).
            value = meanings.shown(self.domains[table.domain], column, value, masked=column.sensitive)
            cells.append({"name": name, "label": column.label, "value": "" if value is None else value})
        return cells


def references(table: Table, target: str) -> list[str]:
    """The columns of ``table`` that name a record of ``target`` (``domain.table``)."""
    return [c.name for c in table.columns.values() if c.references == target]


def resident_tables(domains: dict[str, Domain]) -> list[Table]:
    """Tables of people who live somewhere: one record per person (keyed by the ID number) naming an
    address or a house, such as 户籍's persons and the migrants; not a house's owner or a household."""
    return [t for d in domains.values() for t in d.tables.values()
            if person_column(t) and t.key == (person_column(t),)
            and (references(t, ADDRESSES) or references(t, HOUSES))]


def address_text(row: dict) -> str:
    """The address as people read and write it: 莞太路12号3栋2单元501房."""
    parts = []
    for name, suffix in ADDRESS_PARTS:
        value = str(row.get(name) or "").strip()
        # Add the unit word only to a bare number or letter: "12" is 12号, "12号" stays.
        parts.append(value + suffix if value and value[-1].isascii() and value[-1].isalnum() else value)
    return "".join(parts)


def _address(db: Published, code: str) -> dict | None:
    """One standard address with its grid; None if there is no such live address."""
    addresses, grids = db.table(ADDRESSES), db.table(GRIDS)
    if addresses is None:
        return None
    found = db.rows(addresses, {addresses.key[0]: [code]})
    if not found:
        return None
    row = found[0]
    grid = None
    if grids is not None:
        codes = [row.get(c) for c in references(addresses, GRIDS)]
        grid_rows = db.rows(grids, {grids.key[0]: codes})
        if grid_rows:
            grid = db.shown(grids, GRID_COLUMNS, grid_rows[0])
    return {"code": code, "text": address_text(row), "grid": grid,
            "cells": db.shown(addresses, addresses.columns, row)}


def person_places(conn, domains: dict[str, Domain], token: int) -> list[dict]:
    """Where the person with this token lives, from each record of theirs that names an address or a house:
    the address as people read it, its grid, and the house."""
    db = Published(conn, domains)
    houses = db.table(HOUSES)
    places = []
    for table in resident_tables(domains):
        to_address, to_house = references(table, ADDRESSES), references(table, HOUSES)
        for row in db.rows(table, {PERSON_COLUMN: [token]}):
            places += _places_of(db, table, row, to_address, to_house if houses else [])
    return places


def _places_of(db: Published, table: Table, row: dict, to_address, to_house) -> list[dict]:
    """One record's places: the house it names (at the house's address) and each address it names."""
    houses_table = db.table(HOUSES)
    named_houses = db.rows(houses_table, {houses_table.key[0]: [row.get(c) for c in to_house]}) if to_house else []
    by_address: dict[str, list] = {}
    for house in named_houses:
        for column in references(houses_table, ADDRESSES):
            by_address.setdefault(house.get(column), []).append(house)
    for column in to_address:
        code = row.get(column)
        if code not in (None, ""):
            by_address.setdefault(code, [])
    places = []
    for code, houses in by_address.items():
        if code in (None, ""):
            continue
        if not houses and houses_table is not None:  # no house named: the houses on the address
            houses = db.rows(houses_table, {c: [code] for c in references(houses_table, ADDRESSES)})
        place = _address(db, code) or {"code": code, "text": "", "grid": None, "cells": [], "unknown": True}
        place["source"] = db.name(table)
        place["houses"] = [db.shown(houses_table, HOUSE_COLUMNS, h) for h in houses]
        places.append(place)
    return places


def _left(row: dict) -> bool:
    """A migrant whose leaving date has come no longer counts among a house's occupants."""
    leaving = row.get("leaving_date")
    return bool(leaving) and str(leaving) <= time.strftime("%Y-%m-%d")


def address_page(conn, domains: dict[str, Domain], code: str) -> dict | None:
    """The address page's data: the address and its grid, the houses on it, and who lives there
    (each resident table's records naming the address or a house on it); None for an unknown code."""
    db = Published(conn, domains)
    place = _address(db, code)
    if place is None:
        return None
    houses_table = db.table(HOUSES)
    houses = db.rows(houses_table, {c: [code] for c in references(houses_table, ADDRESSES)}) \
        if houses_table is not None else []
    house_codes = [h.get(houses_table.key[0]) for h in houses]
    residents, living = [], {}
    for table in resident_tables(domains):
        names = [c for c in RESIDENT_COLUMNS if c in table.columns]
        where = {c: [code] for c in references(table, ADDRESSES)}
        where |= {c: house_codes for c in references(table, HOUSES)}
        rows = db.rows(table, where)
        for row in rows:
            if _left(row):
                continue
            for c in references(table, HOUSES):
                living[row.get(c)] = living.get(row.get(c), 0) + 1
        residents.append({"table": db.name(table), "label": table.label,
                          "columns": [c["label"] for c in db.shown(table, names, {})],
                          "rows": [{"cells": db.shown(table, names, row), "token": row.get(PERSON_COLUMN)}
                                   for row in rows]})
    place["houses"] = [{"cells": db.shown(houses_table, HOUSE_COLUMNS, h),
                        "living": living.get(h.get(houses_table.key[0]), 0)} for h in houses]
    place["house_columns"] = [c["label"] for c in db.shown(houses_table, HOUSE_COLUMNS, {})] \
        if houses_table is not None else []
    place["residents"] = residents
    return place


# ---------------------------------------------------------------- look-ups: by ID number or name, for every role
#
# A full ID number is found through its blind index, whose first 63 bits are the
# person's number the 档案 column holds (projection.person_token), so a masked
# clerk finds a resident without anything being unmasked. A
# name is compared in publish's memory only (the plaintext database), and the
# answer is read from the database the reader may open. Part of a number or of
# a name would let anyone list residents one guess at a time: only ``view-pii``
# may search by a part.

FULL_ID = re.compile(r"\d{17}[\dX]")
WILDCARDS = set("*%?_")
MOST_FOUND = 200  # a look-up lists at most this many people: a clerk narrows it down beyond that
SHORTEST_PART = 2  # a part of one character (a surname, a digit) would match half the street
# What a look-up's list shows of each person: those of these columns their table has.
FOUND_COLUMNS = ("name", "id_number", "sex", "birth_date", "household_no", "status", "community_code",
                 "arrival_date")


@dataclass(frozen=True)
class Query:
    """What was typed into the search box, read: ``kind`` is ``id`` (a full ID number), ``name`` (a
    full name), ``part`` (part of a name or number: view-pii only), ``refused`` or ``empty``."""

    kind: str
    text: str
    why: str = ""  # for ``refused``: ``partial_id`` or ``fragment``


def read_query(typed: str, plaintext: bool) -> Query:
    """Read a look-up: full-width characters as half-width, spaces ignored in a number, lower-case x as X."""
    text = " ".join(unicodedata.normalize("NFKC", typed or "").split())
    if not text:
        return Query("empty", "")
    number = "".join(text.split()).upper()
    if FULL_ID.fullmatch(number):
        return Query("id", number)
    partial_id = any(c.isdigit() for c in number)
    fragment = partial_id or len(text) < SHORTEST_PART or bool(WILDCARDS & set(text))
    if not fragment and not plaintext:
        return Query("name", text)
    part = number if partial_id else text.strip("".join(WILDCARDS)).strip()
    if not plaintext:
        return Query("refused", part or text, "partial_id" if partial_id else "fragment")
    if len(part) < SHORTEST_PART:
        return Query("refused", part or text, "too_short")
    return Query("part", part)


# Guessing what a mask hides: a masked ID number hides only the month and day of birth (the masked
# table shows the year, and the check character narrows it further), so some thirty numbers fit it, and
# a masked name (张*明) hides a character or two. A look-up that finds nobody is a wrong guess: after
# MOST_MISSES of them within MISS_WINDOW seconds, a masked clerk's look-ups wait, so no one can try them all.
MOST_MISSES = 10
MISS_WINDOW = 3600.0


class Misses:
    """A masked clerk's look-ups that found nobody, per account, in publish's memory.

    Used on the event loop only (the look-up page), so no lock. A restart of publish forgets them:
    a clerk cannot restart it, and each miss is in the page-view log all the same.
    """

    def __init__(self, most: int = MOST_MISSES, window: float = MISS_WINDOW):
        self.most, self.window = most, window
        self.seen: dict[str, list[float]] = {}

    def wait(self, account: str) -> float:
        """Seconds before this account may look up again; 0 for now."""
        now = time.monotonic()
        recent = [t for t in self.seen.get(account, ()) if t > now - self.window]
        self.seen[account] = recent
        return 0.0 if len(recent) < self.most else recent[0] + self.window - now

    def missed(self, account: str) -> int:
        """Count a look-up that found nobody; the account's misses within the window."""
        self.seen.setdefault(account, []).append(time.monotonic())
        return len(self.seen[account])


def person_tables(domains: dict[str, Domain]) -> list[Table]:
    """Every table whose records name a person by ID number (the person page's sections)."""
    return [t for d in domains.values() for t in d.tables.values() if person_column(t)]


def named_tables(domains: dict[str, Domain]) -> list[Table]:
    """Tables of people with a name: one record per person, keyed by the ID number (户籍's persons, migrants)."""
    return [t for t in person_tables(domains) if t.key == (person_column(t),) and "name" in t.columns]


def person_known(conn, domains: dict[str, Domain], token: int) -> bool:
    """Does any published record name the person with this token?"""
    db = Published(conn, domains)
    return any(db.rows(t, {PERSON_COLUMN: [token]}) for t in person_tables(domains))


def _like(text: str) -> str:
    return "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"


def find_people(plain_conn, domains: dict[str, Domain], query: Query) -> list[int]:
    """Tokens of the people a name (or, for view-pii, a part of a name or number) finds.

    ``plain_conn`` is the plaintext in-memory database: names are compared
    there and never leave publish's memory; only tokens come back.
    """
    db = Published(plain_conn, domains)
    tokens: list[int] = []
    for table in named_tables(domains):
        # A former name (曾用名) finds the person too: papers from before the change still carry it.
        columns = [table.columns[c].label for c in ("name", "former_name") if c in table.columns]
        if query.kind == "part" and any(c.isdigit() for c in query.text):
            columns = [table.columns[c].label for c in table.id_columns]
        test = "LIKE ? ESCAPE '\\'" if query.kind == "part" else "= ?"
        value = _like(query.text) if query.kind == "part" else query.text
        where = " OR ".join(f"[{c}] {test}" for c in columns)
        found = plain_conn.execute(f"SELECT [{PERSON_COLUMN}] FROM [{db.name(table)}] WHERE {where} LIMIT ?",
                                   [value] * len(columns) + [MOST_FOUND + 1])
        tokens += [t for (t,) in found if t is not None and t not in tokens]
    return tokens


def found_people(conn, domains: dict[str, Domain], tokens: list[int]) -> list[dict]:
    """The look-up's list, from the database the reader may open: per table, each person found and a link."""
    db = Published(conn, domains)
    groups = []
    for table in named_tables(domains):
        names = [c for c in FOUND_COLUMNS if c in table.columns]
        rows = db.rows(table, {PERSON_COLUMN: tokens[:MOST_FOUND]})
        if rows:
            groups.append({"table": db.name(table), "columns": [c["label"] for c in db.shown(table, names, {})],
                           "rows": [{"cells": db.shown(table, names, row), "token": row.get(PERSON_COLUMN)}
                                    for row in rows]})
    return groups


# ---------------------------------------------------------------- households (户)
#
# The household page and the person page's household read the published
# database the reader may open, like the address page. A household's address
# is its 户号 (not sensitive in huji's schema, so it shows in the masked tables
# as well); were a schema to mark it sensitive, the 户号 would give away what
# the mask hides, so there is no household page then.

HOUSEHOLDS = "huji.households"  # 户
HOUSEHOLD_NUMBER = re.compile(r"[0-9A-Za-z_-]{1,40}")  # what a household page's address may hold
MEMBER_COLUMNS = ("name", "id_number", "sex", "birth_date", "relationship", "status", "phone")


def households_table(domains: dict[str, Domain]) -> Table | None:
    """huji's households, if published with a 户号 that may appear in an address."""
    table = Published(None, domains).table(HOUSEHOLDS)
    if table is None or len(table.key) != 1 or table.columns[table.key[0]].sensitive:
        return None
    return table


def household_href(domains: dict[str, Domain], number) -> str | None:
    """The household page of this 户号, or None where there can be none."""
    if households_table(domains) is None or not HOUSEHOLD_NUMBER.fullmatch(str(number or "")):
        return None
    return f"/-/household/{number}"


def member_tables(domains: dict[str, Domain]) -> list[Table]:
    """Tables of a household's members: one record per person naming its household (户籍's persons)."""
    return [t for t in person_tables(domains) if t.key == (person_column(t),) and references(t, HOUSEHOLDS)]


def _is_head(table: Table, row: dict, head_token) -> bool:
    """The head: the person the household names as its head, or, failing that, the member coded 户主
    (the schema's one-per rule: one 02 per household among the members still registered)."""
    if head_token is not None:
        return row.get(PERSON_COLUMN) == head_token
    rule = table.one_per
    return bool(rule) and str(row.get(rule.column) or "") == rule.value and rule.counts(row)


def _members(db: Published, number: str, head_token) -> list[dict]:
    members = []
    for table in member_tables(db.domains):
        names = [c for c in MEMBER_COLUMNS if c in table.columns]
        for row in db.rows(table, {c: [number] for c in references(table, HOUSEHOLDS)}):
            members.append({"table": db.name(table), "token": row.get(PERSON_COLUMN),
                            "head": _is_head(table, row, head_token), "cells": db.shown(table, names, row),
                            "order": (str(row.get("relationship") or "99"), str(row.get("birth_date") or ""))})
    members.sort(key=lambda m: (not m["head"], m["order"]))
    return members


def household_page(conn, domains: dict[str, Domain], number: str) -> dict | None:
    """One household: its record (户号, 户别, address linked to its page), its members with their
    relationship to the head and the head marked, and the records of other tables naming it
    (社会救助 …); None for an unknown 户号."""
    households = households_table(domains)
    if households is None:
        return None
    db = Published(conn, domains)
    found = db.rows(households, {households.key[0]: [number]})
    if not found:
        return None
    row = found[0]
    to_address = references(households, ADDRESSES)
    places = [_address(db, row.get(c)) or {"code": row.get(c), "text": "", "unknown": True}
              for c in to_address if row.get(c)]
    shown = [c for c in households.columns if c not in to_address]
    members = _members(db, number, row.get(PERSON_COLUMN))
    return {"number": number, "cells": db.shown(households, shown, row), "places": places,
            "members": members, "member_columns": [c["label"] for c in members[0]["cells"]] if members else [],
            "records": _naming_household(db, number)}


def _naming_household(db: Published, number: str) -> list[dict]:
    """Records of tables other than the members' that name the household (社会救助 …), by table."""
    members = {t.qualified for t in member_tables(db.domains)}
    sections = []
    for table in (t for d in db.domains.values() for t in d.tables.values()):
        if table.qualified in members or table.qualified == HOUSEHOLDS or not references(table, HOUSEHOLDS):
            continue
        rows = db.rows(table, {c: [number] for c in references(table, HOUSEHOLDS)})
        if rows:
            names = [c for c in table.columns if c not in references(table, HOUSEHOLDS)]
            sections.append({"table": db.name(table), "columns": [c["label"] for c in db.shown(table, names, {})],
                             "rows": [db.shown(table, names, r) for r in rows]})
    return sections


def person_households(conn, domains: dict[str, Domain], token: int) -> list[dict]:
    """The households the person with this token is registered in (one, as a rule), with their members."""
    db = Published(conn, domains)
    numbers = []
    for table in member_tables(domains):
        for row in db.rows(table, {PERSON_COLUMN: [token]}):
            numbers += [row.get(c) for c in references(table, HOUSEHOLDS) if row.get(c) not in (None, "")]
    pages = [household_page(conn, domains, n) for n in dict.fromkeys(numbers)]
    return [dict(p, href=household_href(domains, p["number"])) for p in pages if p]


# ---------------------------------------------------------------- what the person page says about the person

def person_keys(plain_conn, domains: dict[str, Domain], token: int) -> list[tuple[str, list]]:
    """(table, natural key values) of every record naming the person, read from the plaintext database:
    the store finds conflicts by a record's blind key, the HMAC of its plaintext key. Kept in memory."""
    db = Published(plain_conn, domains)
    return [(t.qualified, [row.get(k) for k in t.key])
            for t in person_tables(domains) for row in db.rows(t, {PERSON_COLUMN: [token]})]


def person_conflicts(store: Store, keys: list[tuple[str, list]], plaintext: bool) -> list[dict]:
    """The open conflicts on the person's records, as the conflicts page shows them (masked by role)."""
    records = {(q, store.blind_key(store.table(q), values)) for q, values in keys}
    ids = conflicts.open_ids(store, records)
    return [c for c in open_conflicts(store, plaintext) if c["id"] in ids] if ids else []


def person_cases(store: Store, keys: list[tuple[str, list]], plaintext: bool) -> list[dict] | None:
    """The open cross-domain cases about the person (DESIGN section 8), masked by role.

    The cases built on any of the person's records (checks.cases_of_records),
    each with its line (``text``) and its place on its check's page (``href``).
    """
    records = {(q, store.blind_key(store.table(q), values)) for q, values in keys}
    return checks.cases_of_records(store, records, masked=not plaintext)


def css_string(text: str) -> str:
    """``text`` as a CSS string for a print stylesheet (@page margin boxes), safe inside a <style> element."""
    return '"' + re.sub(r'[\\"<>&\n\r]', lambda m: f"\\{ord(m.group()):x} ", str(text)) + '"'
