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

from . import conflicts, meanings, office
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
        applied = conn.execute("SELECT max(sequence), max(applied), coalesce(sum(changes), 0), "
                               "coalesce(sum(rejected), 0) FROM applied WHERE origin = ?", (code,)).fetchone()
        received = conn.execute("SELECT max(sequence), max(received) FROM received WHERE origin = ?",
                                (code,)).fetchone()
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
        """Cells as a page shows them: label, and a code's meaning from the schema rather than the code."""
        cells = []
        for name in names:
            if name not in table.columns:
                continue
            column, value = table.columns[name], row.get(name)
            if column.codes and value not in (None, ""):
                value = self.domains[table.domain].code_table(column.codes).get(str(value), value)
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


def person_places(conn, domains: dict[str, Domain], token: str) -> list[dict]:
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
