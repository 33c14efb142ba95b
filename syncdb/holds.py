"""What a push holds back for a person instead of sending, and why.

- A record that fails validation, shares its key with another row, or has a
  value over the office's caps is held back (state.db ``held``) and looked at
  again at every push until it is fixed, so the office never gets half a record.
- A record that breaks a record rule (a reference to a record that is not
  there, an ``implies``, a ``one_per``: integrity.py) is held back the same way,
  and goes at the next push once the rule holds (the household entered).
- A key change whose new record is held back is held whole with it (``moves``).
- A table that is gone, or one push deleting more than ``DELETE_SHARE`` of a
  table's records, sends none of those deletions until ``--confirm-deletes``
  (``HeldDeletes``): a wrong restore or a mass delete never empties the office.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from . import capture, integrity, limits, workdir
from .schema import Domain, Table
from .state import State
from .i18n import N_, _
from .masks import mask
from .validate import check_record


@dataclass
class HeldDeletes:
    """Deletions of one table a push did not send: a dropped table, or more than the share allowed."""

    table: str  # domain.table
    deletes: int  # records the push would delete at the office
    rows: int  # records of the table the office holds from this community
    dropped: bool = False

    def message(self, command: str = "syncdb push WORKDIR … --confirm-deletes") -> str:
        domain, __, name = self.table.partition(".")
        if self.dropped:
            return _("table '{table}' is gone from {domain}.db (dropped, renamed or lost with a restore); the "
                     "office holds {rows} of its records from this community. None of those deletions was sent, "
                     "so the office still holds every record. Restore the table from a backup; if the office "
                     "really should delete them, run: {command}").format(
                table=name, domain=domain, rows=self.rows, command=command)
        return _("this push would delete {deletes} of the {rows} records of {table} the office holds from this "
                 "community. None of those deletions was sent, so the office still holds every record. If they "
                 "were deleted by mistake, restore them from a backup; if the office really should delete them, "
                 "run: {command}").format(deletes=self.deletes, rows=self.rows, table=self.table, command=command)


DELETE_SHARE = 0.2  # one push deleting more of a table than this is held for a person
DELETE_MINIMUM = 10  # … but a small table may lose this many at once (a 3-row table may lose 1)
# Stored as state.db held.why and looked up by it (State.held_for): kept in English there, and
# translated where it is shown (shown_why).
DELETION_HELD = N_("deletion held: confirm it with `syncdb push --confirm-deletes`")


def shown_why(why: str) -> str:
    """A held record's reason as a person reads it: the one reason stored as a key is translated here;
    the others were written in the user's language when the push held the record."""
    return _(DELETION_HELD) if why == DELETION_HELD else why


def record_problems(table: Table, record: dict, domain: Domain) -> str | None:
    """Why a record cannot be sent as it is ("field: why; …"), or None."""
    garbled = [c for c, v in record.items() if isinstance(v, workdir.Undecodable)]
    if garbled:
        # Read as text with U+FFFD in place of the bad bytes: never sent like that.
        return "; ".join(_("{column}: is not UTF-8 text (the program that wrote it used another encoding); "
                           "type the value again").format(column=c) for c in garbled)
    errors = [p for p in check_record(table, record, domain) if p.severity == "error"]
    return "; ".join(_problem(p) for p in errors) or None


def _problem(p) -> str:
    """One problem of a held record as the worker reads it: the field, then why."""
    return _("{field}: {why}").format(field=p.field, why=p.why)


def duplicate_why(table: Table, key_json: str, duplicated: dict) -> str | None:
    rows = duplicated.get(table.name, {}).get(key_json)
    if not rows:
        return None
    return _("{rows} rows of table '{table}' have this {key}; syncdb sends one record "
             "per key, so keep one row (correct or delete the others)").format(
        rows=rows, table=table.name, key=", ".join(table.key))


def moved_why(table: Table, new_key_json: str) -> str:
    return _("its key was changed to {key}, which is held back; the record "
             "stays at the office as it was, and the change goes as one once that record is fixed").format(
        key=shown_key(table, new_key_json))


def shown_key(table: Table, key_json: str) -> str:
    """A key as messages show it: sensitive values masked (110105********002X), enough to find it."""
    return " / ".join(mask(v) if table.columns[k].sensitive else str(v)
                      for k, v in zip(table.key, json.loads(key_json)))


def within_limits(collected: list, caps: limits.Limits, vetted: dict, held_moves: list) -> list:
    """The changes the office will take; a record with a value or a line over its caps is
    held back like an invalid one (``vetted``), told to the worker, and sent once shortened."""
    kept = []
    for item in collected:
        ms, table, key_json, change = item
        why = limits.fits(change, caps)
        if not why:
            kept.append(item)
            continue
        vetted[(table.qualified, key_json)] = why
        if change["op"] == "rekey":  # the old key is held with it: the change goes whole or not at all
            old = capture.key_json(table, change["key"])
            vetted[(table.qualified, old)] = moved_why(table, key_json)
            held_moves.append((table.qualified, old, key_json, ms))
    return kept


def within_rules(collected: list, records: integrity.WorkingRecords, vetted: dict, held_moves: list) -> list:
    """The changes whose record keeps the record rules; one that breaks one is held back like an
    invalid record (``vetted``), and looked at again at every push until the rule holds.

    The record is read whole from its working database (an update carries only what changed).
    """
    kept = []
    for item in collected:
        ms, table, key_json, change = item
        record = None
        if change["op"] != "delete" and integrity.has_rules(table):
            record = records.record(table, key_json)
        problems = integrity.rule_problems(table, record, records.domains, records) if record else []
        if not problems:
            kept.append(item)
            continue
        vetted[(table.qualified, key_json)] = "; ".join(_problem(p) for p in problems)
        if change["op"] == "rekey":  # the old key is held with it: the change goes whole or not at all
            old = capture.key_json(table, change["key"])
            vetted[(table.qualified, old)] = moved_why(table, key_json)
            held_moves.append((table.qualified, old, key_json, ms))
    return kept


def unfit_tables(conn, state: State, domain: Domain, confirm_deletes: bool, held_tables: list,
                 deletes_held: list, notify) -> set[str]:
    """The tables of a working database that cannot be read now: none of their changes is sent.

    A table that is gone is held while the office holds records of it from
    here (nothing of it is deleted there, and it is not made again empty);
    with ``confirm_deletes`` it is made again empty and its records are
    deleted. A table missing a column is held until the column is back.
    """
    skip = set()
    for name, why in capture.table_problems(conn, domain).items():
        table = domain.tables[name]
        if capture.table_exists(conn, name):
            skip.add(name)
            held_tables.append(_("{table} / {domain}.db: {why}; nothing of the table was sent").format(
                table=table.qualified, domain=domain.name, why=why))
            continue
        rows = state.live_rows(table.qualified)
        if rows and not confirm_deletes:
            skip.add(name)
            deletes_held.append(HeldDeletes(table.qualified, rows, rows, dropped=True))
        elif rows:
            notify(_("{domain}.db: table '{table}' is gone; made again empty, as confirmed, and its "
                     "{rows} records are deleted at the office").format(domain=domain.name, table=name, rows=rows))
    return skip


def deletions_to_hold(workdir_path, domains: dict[str, Domain], state: State | sqlite3.Connection) -> list[HeldDeletes]:
    """What the next push would hold of whole tables, found by reading only (``syncdb status``).

    A table gone from its working database, or one with no record left, while
    the office holds records of it from here: the push holds those deletions
    (``unfit_tables``, ``hold_mass_deletes``). ``state`` is state.db opened
    read-only (a State, or a plain connection); each working database is opened read-only too.
    """
    state = state if isinstance(state, State) else State(state)
    found = []
    for domain in domains.values():
        path = workdir.db_path(workdir_path, domain.name)
        if not path.is_file():
            continue
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
        try:
            problems = capture.table_problems(conn, domain)
            for table in domain.tables.values():
                rows = state.live_rows(table.qualified)
                if not rows:
                    continue
                if table.name in problems and not capture.table_exists(conn, table.name):
                    found.append(HeldDeletes(table.qualified, rows, rows, dropped=True))
                elif table.name not in problems and \
                        not conn.execute(f"SELECT 1 FROM [{table.name}] LIMIT 1").fetchone():
                    found.append(HeldDeletes(table.qualified, rows, rows))
        finally:
            conn.close()
    return found


def duplicated_keys(conn, domain: Domain, skip) -> dict[str, dict[str, int]]:
    """{table name: {key_json: rows}} of the keys more than one row holds, where no unique index
    keeps them apart (capture could not add one while such rows are there)."""
    found = {}
    for table in domain.tables.values():
        if table.name in skip or capture.key_is_unique(conn, table):
            continue
        found[table.name] = {json.dumps(values, ensure_ascii=False): n
                             for values, n in capture.duplicate_keys(conn, table)}
    return found


def untracked_tables(conn, domain: Domain) -> set[str]:
    """The tables (domain.table) whose capture triggers are gone since the last push: a table
    dropped and made again has lost them, and what it lost shows only as deletions."""
    missing = set(capture.missing_triggers(conn, domain))
    return {table.qualified for table in domain.tables.values()
            if missing & set(capture.trigger_names(table))}


def hold_mass_deletes(state: State, collected: list, share: float, awaiting: dict, deletes_held: list,
                      untracked=frozenset()) -> list:
    """Hold back a table's deletions when one push would delete more than ``share`` of the
    records the office holds from here (and more than DELETE_MINIMUM): a wrong restore, a
    mass delete. A small table is not exempt when it would lose every record the office holds
    from here, or when its capture triggers were gone (``untracked``: dropped and made again).
    Once held, a deletion stays held until confirmed. They wait, in the held table, for
    ``--confirm-deletes``."""
    deletes: dict[str, list] = {}
    for item in collected:
        if item[3]["op"] == "delete":
            deletes.setdefault(item[1].qualified, []).append(item)
    waiting = state.held_for(DELETION_HELD)
    held = set()
    for qualified, items in deletes.items():
        rows = state.live_rows(qualified)
        whole = len(items) >= rows or qualified in untracked
        if not whole and len(items) <= max(DELETE_MINIMUM, share * rows):
            items = [item for item in items if (qualified, item[2]) in waiting]
            if not items:
                continue
        deletes_held.append(HeldDeletes(qualified, len(items), rows))
        for __, __, key_json, __ in items:
            awaiting[(qualified, key_json)] = DELETION_HELD
            held.add((qualified, key_json))
    return [item for item in collected
            if not (item[3]["op"] == "delete" and (item[1].qualified, item[2]) in held)]
