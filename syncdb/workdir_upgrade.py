"""``syncdb community upgrade``: a community's working databases brought to new schemas.

A release whose schemas add columns or tables (a domain's new version, or a
new domain) needs them in the community's working databases too: until then a push holds back every
table lacking a column. This adds what is missing and nothing else. No
column is dropped, renamed or retyped and no value is changed, so the
records, what the office last received of them and the change log stay as
they were, and the next push sends only what people change afterwards.
Two exceptions are rewritten, and pushed like edits: a code the schemas retired
and map to its successor (``[codes.NAME.was]``, ``recode``), and 民政 version 1's
per-person 低保/特困 rows, moved into household records (``move_household_assistance``).

A column or table the schemas no longer name stays with its rows; it is simply no longer synced. A required
column added to a table that holds rows is added without ``NOT NULL``
(SQLite cannot add one without a default, and inventing values would change
records): the rows stay as they are, and a push holds back a record that
changes while such a value is missing, saying so, as it does any invalid one.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from . import capture, holds, workdir
from .errors import SyncdbError
from .files import storage_error
from .i18n import _
from .masks import mask
from .schema import TYPES, Column, Domain, Table
from .state import open_state, state_dir


@dataclass
class Upgraded:
    """What ``upgrade`` did to one community folder, for the command to print."""

    added: dict[str, list[str]] = field(default_factory=dict)  # "domain.table" -> columns added
    made_tables: list[str] = field(default_factory=list)  # "domain.table" made empty
    made_databases: list[str] = field(default_factory=list)  # "domain.db" made
    unsynced: list[str] = field(default_factory=list)  # tables and columns kept that no schema names
    left_alone: list[str] = field(default_factory=list)  # why a schema table was not made
    empty_required: list[str] = field(default_factory=list)  # required columns added empty to rows
    captured: list[str] = field(default_factory=list)  # "domain.db" whose capture was made afresh
    recoded: list[str] = field(default_factory=list)  # old codes rewritten ([codes.NAME.was]), and any kept
    recoded_rows: int = 0
    assistance: list[str] = field(default_factory=list)  # 民政 v2: what moved to household records, what stayed
    moved_rows: int = 0  # per-person 低保/特困 rows moved into household records

    @property
    def changed(self) -> bool:
        return bool(self.added or self.made_tables or self.made_databases or self.moved_rows or self.recoded_rows)


def upgrade(workdir_path, domains: dict[str, Domain], create_databases: bool = False) -> Upgraded:
    """Add the tables and columns the schemas declare and the working databases lack.

    Each database is changed in one transaction, then its change capture is
    made afresh (triggers, change log, key index; capture.install) when the
    folder is set up for sync. A domain without a database in the folder is
    left out unless ``create_databases``, which makes it with empty tables.
    A table missing while the office holds records of it from here is not
    made again: it is gone, and the next push asks before deleting them.
    """
    folder = Path(workdir_path)
    if not folder.is_dir():
        raise SyncdbError(_("{folder}: no such folder. Give the folder that holds the community's working "
                            "databases; nothing was changed").format(folder=folder))
    present = [d for d in domains.values() if workdir.db_path(folder, d.name).is_file()]
    if not present and not create_databases:
        names = ", ".join(f"{name}.db" for name in domains)
        raise SyncdbError(_("{folder} holds no working database ({names}); give the community's folder, or "
                            "add --create-databases to start with empty ones; nothing was changed").format(
            folder=folder, names=names))
    set_up = (state_dir(folder) / "config.json").is_file()
    done = Upgraded()
    try:
        for domain in domains.values():
            path = workdir.db_path(folder, domain.name)
            if not path.is_file():
                if not create_databases:
                    continue
                done.made_databases.append(path.name)
            _upgrade_database(folder, path, domain, set_up, done)
        # After capture is set up afresh: the moved rows are captured, and pushed, like any edit.
        move_household_assistance(folder, domains, done)
    except sqlite3.Error as e:
        raise storage_error(e, folder, then=_("correct it and run `syncdb community upgrade` again; each "
                                              "database is upgraded whole or not at all")) from None
    return done


def _upgrade_database(folder: Path, path: Path, domain: Domain, set_up: bool, done: Upgraded) -> None:
    conn = workdir.connect(path)
    try:
        gone = _gone_tables(folder, conn, domain) if set_up else {}
        # Not sqlite-utils' default: recursive triggers would change how the community's own
        # triggers behave on this connection, and nothing here needs them.
        db = sqlite_utils.Database(conn, recursive_triggers=False)
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for table in domain.tables.values():
                if table.name in gone:
                    done.left_alone.append(gone[table.name])
                elif not db[table.name].exists():
                    conn.execute(table.create_sql())
                    done.made_tables.append(table.qualified)
                else:
                    _add_columns(conn, db, table, done)
        done.unsynced += _unsynced(db, domain)
        if set_up:
            # Made afresh, so this release's triggers are the ones in place; the capture id and
            # the log are kept, so the next push reads the log as usual, no full comparison.
            capture.install(conn, domain, skip=set(gone), allow_duplicates=True)
            done.captured.append(path.name)
        # After capture is set up afresh, so the rewritten records are pushed like any edit.
        recode(conn, domain, done)
    finally:
        conn.close()


def _gone_tables(folder: Path, conn: sqlite3.Connection, domain: Domain) -> dict[str, str]:
    """Tables missing from the database while the office holds records of them from here."""
    missing = [t for t in domain.tables.values() if not capture.table_exists(conn, t.name)]
    if not missing:
        return {}
    with open_state(folder) as state:
        rows = {t.name: state.live_rows(t.qualified) for t in missing}
    return {name: _("{domain}.db: table '{table}' is gone while the office holds {records} record(s) of it "
                    "from here; it was not made again (`syncdb push` asks before deleting them there)").format(
                domain=domain.name, table=name, records=n)
            for name, n in rows.items() if n}


def _add_columns(conn: sqlite3.Connection, db: sqlite_utils.Database, table: Table, done: Upgraded) -> None:
    present = {c.name.lower() for c in db[table.name].columns}
    missing = [c for c in table.columns.values() if c.name.lower() not in present]
    if not missing:
        return
    for column in missing:
        db[table.name].add_column(column.name, TYPES[column.type])
    done.added[table.qualified] = [c.name for c in missing]
    required = [c.name for c in missing if c.required]
    if required:
        (rows,) = conn.execute(f"SELECT count(*) FROM [{table.name}]").fetchone()
        if rows:
            done.empty_required.append(
                _("{table}: {columns} must be filled in its {records} record(s); until then "
                  "a record that changes is held back by `syncdb push`, saying which value is missing").format(
                    table=table.qualified, columns=", ".join(required), records=rows))


def _unsynced(db: sqlite_utils.Database, domain: Domain) -> list[str]:
    """Tables and columns of the database that no schema of the domain names: kept, not synced."""
    found = []
    for name in db.table_names():
        if name.startswith(("_syncdb", "sqlite_")):
            continue
        table = domain.tables.get(name)
        if table is None:
            found.append(f"{domain.name}.{name}")
            continue
        known = {c.lower() for c in table.columns}
        found += [f"{table.qualified}.{c.name}" for c in db[name].columns if c.name.lower() not in known]
    return found


# -- Old codes ([codes.NAME.was]) ----------------------------------------------------------------
_LISTED = 10  # masked keys listed per note; the rest are counted


def recode(conn: sqlite3.Connection, domain: Domain, done: Upgraded) -> None:
    """Rewrite the old codes the domain's ``was`` tables map (社保 version 1's 险种 to AAE140 …).

    One transaction of the database. Run once capture is set up, so each rewritten record is captured
    and sent by the next push like any edit; a code in the natural key goes as one ``rekey`` (the
    office moves the record to its new key). A record whose new key another record already holds
    keeps its old code and is listed: nothing is merged or dropped without a person.
    """
    work = [(table, column) for table in domain.tables.values() for column in table.columns.values()
            if column.codes in domain.was and capture.table_exists(conn, table.name)]
    if not work:
        return
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        for table, column in work:
            _recode_column(conn, table, column, domain.was[column.codes], done)


def _recode_column(conn: sqlite3.Connection, table: Table, column: Column, mapped: dict, done: Upgraded) -> None:
    present = {row[1].lower() for row in conn.execute(f"PRAGMA table_info([{table.name}])")}
    where = f"{table.qualified}.{column.name}"
    rewritten = []
    for old, target in mapped.items():
        sets = {column.name: target.code, **{c: v for c, v in target.set.items() if c.lower() in present}}
        assigned = ", ".join(f"[{c}] = ?" for c in sets)
        # OR IGNORE: a row whose new key is taken is skipped, and listed below.
        count = conn.execute(f"UPDATE OR IGNORE [{table.name}] SET {assigned} WHERE [{column.name}] = ?",
                             (*sets.values(), old)).rowcount
        if count:
            rewritten.append(f"{old} → {target.code}" + "".join(f", {c} {v}" for c, v in target.set.items())
                             + f": {count}")
            done.recoded_rows += count
        kept = [dict(zip(table.key, r)) for r in conn.execute(
            f"SELECT {', '.join(f'[{k}]' for k in table.key)} FROM [{table.name}] WHERE [{column.name}] = ?", (old,))]
        if kept:
            shown = "; ".join(holds.shown_key(table, capture.key_json(table, k)) for k in kept[:_LISTED])
            if len(kept) > _LISTED:
                shown = _("{listed} and {count} more").format(listed=shown, count=len(kept) - _LISTED)
            done.recoded.append(_(
                "note: {where}: {records} record(s) keep the old code '{old}' ({keys}): another record "
                "already holds the key with '{new}'; keep one of the two (copy over what the other "
                "adds), delete the other, and run `syncdb community upgrade` again").format(
                where=where, records=len(kept), old=old, keys=shown, new=target.code))
    if rewritten:
        done.recoded.append(_("{where}: old codes rewritten ({rewritten}); the next push sends them").format(
            where=where, rewritten="; ".join(rewritten)))


# -- 民政 version 2: 低保 and 特困 granted per household ---------------------------------------
# Version 1 kept them per person in minzheng.benefits; version 2 has one record per household
# and type in minzheng.assistance. benefit_type (version 1) -> assistance_type:
HOUSEHOLD_BENEFITS = {"dibao": "1", "tekun": "2"}
RETIRED_BENEFITS = {"veteran": "优抚"}  # moved to 退役军人事务 in 2018: kept where they are, reported
_BENEFIT = ("id_number", "benefit_type", "status", "monthly_amount", "start_date", "end_date", "community_code")


def move_household_assistance(folder: Path, domains: dict[str, Domain], done: Upgraded) -> None:
    """Move the per-person 低保/特困 rows of minzheng.benefits into household records of minzheng.assistance.

    Members are grouped by huji.persons.household_no (huji.db in the same folder, read only). Per
    household and type: one record with the amount most of its members had (ties: the larger),
    ``members`` = how many had it, the earliest start, the latest end if every member's ended, and
    the status ``active`` if any member's is (else ``suspended``, else ``ended``). The household
    records are written and the rows they replace deleted in one transaction of minzheng.db, so a
    crash leaves all of them per person or all moved. A row is never dropped without its household
    record: a person with no household in huji.db, a household already holding a record of that
    type, or a record that would be invalid leaves the rows where they are, reported. 优抚 rows
    are kept as they were and counted (RETIRED_BENEFITS).
    """
    domain = domains.get("minzheng")
    path = workdir.db_path(folder, "minzheng")
    if domain is None or "assistance" not in domain.tables or not path.is_file():
        return
    conn = workdir.connect(path)
    try:
        if not (capture.table_exists(conn, "benefits") and capture.table_exists(conn, "assistance")):
            return
        households = _households_of_persons(folder)
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            _move_rows(conn, domain, households, done)
            _count_retired(conn, done)
    finally:
        conn.close()


def _households_of_persons(folder: Path) -> dict[str, str]:
    """id_number -> household_no of every person whose household huji.db holds ({} without huji.db)."""
    path = workdir.db_path(folder, "huji")
    if not path.is_file():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if not (capture.table_exists(conn, "persons") and capture.table_exists(conn, "households")):
            return {}
        return dict(conn.execute(
            "SELECT p.id_number, p.household_no FROM persons p JOIN households h ON h.household_no = p.household_no "
            "WHERE p.household_no IS NOT NULL AND trim(p.household_no) != ''").fetchall())
    finally:
        conn.close()


def _move_rows(conn: sqlite3.Connection, domain: Domain, households: dict[str, str], done: Upgraded) -> None:
    marks = ", ".join("?" * len(HOUSEHOLD_BENEFITS))
    rows = [dict(zip(_BENEFIT, r)) for r in conn.execute(
        f"SELECT {', '.join(_BENEFIT)} FROM benefits WHERE benefit_type IN ({marks}) ORDER BY rowid",
        tuple(HOUSEHOLD_BENEFITS))]
    groups: dict[tuple[str, str], list[dict]] = {}
    homeless = []
    for row in rows:
        household = households.get(row["id_number"])
        if household is None:
            homeless.append(row)
        else:
            groups.setdefault((household, HOUSEHOLD_BENEFITS[row["benefit_type"]]), []).append(row)
    table = domain.tables["assistance"]
    left: dict[str, list[dict]] = {}
    moved = written = 0
    for (household, kind), members in groups.items():
        record = _household_record(household, kind, members)
        exists = conn.execute("SELECT 1 FROM assistance WHERE household_no = ? AND assistance_type = ?",
                              (household, kind)).fetchone()
        amounts = sorted({m["monthly_amount"] for m in members if m["monthly_amount"] is not None})
        why = (_("the household already has a record of this type in minzheng.assistance") if exists
               else _("its members' monthly amounts differ ({amounts}): a person "
                      "decides the household's amount").format(amounts=", ".join(f"{a:g}" for a in amounts))
               if len(amounts) > 1
               else holds.record_problems(table, record, domain))
        if why:
            left.setdefault(why, []).extend(members)
            continue
        conn.execute(f"INSERT INTO assistance ({', '.join(record)}) VALUES ({', '.join('?' * len(record))})",
                     tuple(record.values()))
        conn.executemany("DELETE FROM benefits WHERE id_number = ? AND benefit_type = ?",
                         [(m["id_number"], m["benefit_type"]) for m in members])
        moved += len(members)
        written += 1
    if moved:
        done.moved_rows += moved
        done.assistance.append(_(
            "minzheng: {moved} per-person 低保/特困 record(s) of minzheng.benefits moved into "
            "{written} household record(s) of minzheng.assistance; the next push sends them and deletes the per-person "
            "records at the office (if it holds those deletions back, confirm them with `syncdb push "
            "--confirm-deletes`)").format(moved=moved, written=written))
    if homeless:
        left.setdefault(_("no household in huji.db (huji.persons.household_no empty, or naming a household "
                          "huji.households does not hold; if another community registers the household, it enters "
                          "the household's record, and this one is deleted here once it has)"), []).extend(homeless)
    for why, members in left.items():
        done.assistance.append(_(
            "minzheng.benefits: {records} 低保/特困 record(s) left per person ({keys}): {why}; "
            "correct that and run `syncdb community upgrade` again, or enter the household's record in "
            "minzheng.assistance and delete them").format(records=len(members), keys=_listed(members), why=why))


def _household_record(household: str, kind: str, members: list[dict]) -> dict:
    amounts = Counter(m["monthly_amount"] for m in members if m["monthly_amount"] is not None)
    statuses = {m["status"] for m in members}
    ends = [m["end_date"] for m in members]
    starts = [m["start_date"] for m in members if m["start_date"]]
    codes = Counter(m["community_code"] for m in members)
    return {
        "household_no": household,
        "assistance_type": kind,
        "status": next((s for s in ("active", "suspended", "ended") if s in statuses), members[0]["status"]),
        "monthly_amount": max(amounts, key=lambda a: (amounts[a], a)) if amounts else None,
        "members": len(members),
        "start_date": min(starts) if starts else None,
        "end_date": max(ends) if all(ends) else None,
        "community_code": codes.most_common(1)[0][0],
    }


def _count_retired(conn: sqlite3.Connection, done: Upgraded) -> None:
    for code, label in RETIRED_BENEFITS.items():
        rows = [dict(zip(_BENEFIT, r)) for r in conn.execute(
            f"SELECT {', '.join(_BENEFIT)} FROM benefits WHERE benefit_type = ? ORDER BY rowid", (code,))]
        if rows:
            done.assistance.append(_(
                "minzheng.benefits: {records} {label} ({code}) record(s) kept as they were: {label} is handled "
                "by 退役军人事务 since 2018 and is no 民政 benefit type now, so a push holds back a change to one; "
                "hand them over and delete them (the push deletes them at the office too)").format(
                records=len(rows), label=label, code=code))


def _listed(rows: list[dict]) -> str:
    shown = ", ".join(f"{mask(r['id_number'])} {r['benefit_type']}" for r in rows[:_LISTED])
    if len(rows) > _LISTED:
        return _("{listed} and {count} more").format(listed=shown, count=len(rows) - _LISTED)
    return shown
