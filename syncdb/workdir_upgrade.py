"""``syncdb community upgrade``: a community's working databases brought to new schemas.

A release whose schemas add columns or tables (a domain's new version, or a
new domain) needs them in the community's working databases too: until then a push holds back every
table lacking a column. This adds what is missing and nothing else. No
column is dropped, renamed or retyped and no value is changed, so the
records, what the office last received of them and the change log stay as
they were, and the next push sends only what people change afterwards.
The one exception is a code the schemas retired and map to its successor
(``[codes.NAME.was]``, ``recode``): it is rewritten, and pushed like an edit.

A column or table the schemas no longer name stays with its rows; it is simply no longer synced. A required
column added to a table that holds rows is added without ``NOT NULL``
(SQLite cannot add one without a default, and inventing values would change
records): the rows stay as they are, and a push holds back a record that
changes while such a value is missing, saying so, as it does any invalid one.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from . import capture, holds, workdir
from .errors import SyncdbError
from .files import storage_error
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

    @property
    def changed(self) -> bool:
        return bool(self.added or self.made_tables or self.made_databases or self.recoded_rows)


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
        raise SyncdbError(f"{folder}: no such folder. Give the folder that holds the community's working "
                          "databases; nothing was changed")
    present = [d for d in domains.values() if workdir.db_path(folder, d.name).is_file()]
    if not present and not create_databases:
        names = ", ".join(f"{name}.db" for name in domains)
        raise SyncdbError(f"{folder} holds no working database ({names}); give the community's folder, or "
                          "add --create-databases to start with empty ones; nothing was changed")
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
    except sqlite3.Error as e:
        raise storage_error(e, folder, then="correct it and run `syncdb community upgrade` again; each "
                                            "database is upgraded whole or not at all") from None
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
    return {name: (f"{domain.name}.db: table '{name}' is gone while the office holds {n} record(s) of it "
                   "from here; it was not made again (`syncdb push` asks before deleting them there)")
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
                f"{table.qualified}: {', '.join(required)} must be filled in its {rows} record(s); until then "
                "a record that changes is held back by `syncdb push`, saying which value is missing")


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
            more = f" and {len(kept) - _LISTED} more" if len(kept) > _LISTED else ""
            done.recoded.append(
                f"note: {where}: {len(kept)} record(s) keep the old code '{old}' ({shown}{more}): another record "
                f"already holds the key with '{target.code}'; keep one of the two (copy over what the other "
                "adds), delete the other, and run `syncdb community upgrade` again")
    if rewritten:
        done.recoded.append(f"{where}: old codes rewritten ({'; '.join(rewritten)}); the next push sends them")
