"""The store's shape: every table of store.db, made and upgraded in one place.

Each table belongs to one module, which declares it (store: the records and
their versions; audit: the ledger; conflicts: the queue; office: enrolled
communities, received bundles, the office's clock; outbound: bundles for the
communities; bundles: skipped bundles). Only the commands that may change the
store's shape open it through ``open_upgraded``: ``office init``, ``merge``,
``serve`` and ``keys rotate``. Every other command opens it with
``store.open_store``, which never writes, and says which command to run when
the store is behind.

A store is behind when its ``PRAGMA user_version`` is older than
``store.STORE_VERSION`` (made by an earlier release) or a schema file gained
columns or tables since the store last saw it. Upgrading a store that holds
records first copies it, whole and consistent, to ``STORE/backups/``; then
one transaction brings it up to date, so a crash leaves either the old store
or the new one. Columns are added, never dropped.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from pathlib import Path
from typing import Callable

from . import audit, bundles, cases, checks, conflicts, office, outbound, publishdb
from .crypto import Keyring, Secret
from .errors import SyncdbError
from .files import fsync_dir, storage_error
from .i18n import _
from .hlc import pack_versions, unpack_versions
from .schema import Domain, Table, load_domains
from .store import (STORE_TABLES, STORE_VERSION, Store, create_sql, id_columns, opened, redundant_index_names,
                    table_name)

log = logging.getLogger("syncdb.migrations")

# Every table of store.db, by owner, in the order they are made.
OWNED_TABLES = {
    "office": office.OFFICE_TABLES,
    "store": STORE_TABLES,
    "audit": audit.LEDGER_TABLES,
    "conflicts": conflicts.TABLES,
    "outbound": outbound.OUTBOUND_TABLE,
    "bundles": bundles.SKIPPED_TABLE,
    # New in a store already at version 1 too: cases.ensure makes them where the checks first write.
    "cases": cases.TABLES,
}


def rowid_layout(store: Store) -> None:
    """Step 2: every record table the store has made (``store_columns`` names them, whichever schemas
    this process loaded) rebuilt as a rowid table (store.create_sql says why), row for row."""
    conn = store.conn
    for (qualified,) in conn.execute("SELECT tbl FROM store_columns").fetchall():
        domain, _, name = qualified.partition(".")
        _rebuild_with_rowid(conn, f"{domain}__{name}")


def _rebuild_with_rowid(conn: sqlite3.Connection, name: str) -> None:
    """One WITHOUT ROWID table made anew as a rowid table: every column (a column a schema has
    dropped since included), every row, every index; inside the upgrade's transaction."""
    found = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    if found is None or not re.search(r"\bWITHOUT\s+ROWID\s*$", found[0], re.IGNORECASE):
        return
    indexes = [sql for (sql,) in conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (name,))]
    columns = conn.execute(f"PRAGMA table_info([{name}])").fetchall()  # cid, name, type, notnull, default, pk
    defined = [f"[{col}] {kind}".rstrip() + (" NOT NULL" if notnull or pk else "")
               + (f" DEFAULT {default}" if default is not None else "")
               for _, col, kind, notnull, default, pk in columns]
    names = ", ".join(f"[{col}]" for _, col, *_ in columns)
    rebuilt = f"{name}__rowid"
    conn.execute(f"CREATE TABLE [{rebuilt}] ({', '.join(defined)})")
    # In key order: the rowids follow the keys, and the UNIQUE index below is built from sorted keys.
    conn.execute(f"INSERT INTO [{rebuilt}] ({names}) SELECT {names} FROM [{name}] ORDER BY [_key]")
    conn.execute(f"DROP TABLE [{name}]")  # its indexes with it; made again on the new table below
    conn.execute(f"ALTER TABLE [{rebuilt}] RENAME TO [{name}]")
    conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS [{name}__key] ON [{name}] ([_key])")
    for sql in indexes:
        conn.execute(re.sub(r"^CREATE (UNIQUE )?INDEX (IF NOT EXISTS )?", r"CREATE \1INDEX IF NOT EXISTS ",
                            sql, flags=re.IGNORECASE))


def compact_bearings(store: Store) -> None:
    """Step 3: the subjects the checks kept per record move to ``record_bearings`` (cases.py), a sixth
    of the bytes. The old table is dropped, not copied: a check whose kept version is older
    (checks.BEARINGS_KEPT) looks at every record once at its next run and keeps them anew, so no case
    is missed; its cases stay as they were. And the blind-ID index of a table keyed by that ID number
    alone (store.redundant_index_names) is dropped: the blind key's index finds those records."""
    store.conn.execute("DROP TABLE IF EXISTS check_bearings")
    for table in store.tables.values():
        for name in redundant_index_names(table):
            store.conn.execute(f"DROP INDEX IF EXISTS [{name}]")


# Steps from one store version to the next, each run inside the upgrade's transaction
# after the tables above are made: STEPS[n] brings a store from version n - 1 to n.
STEPS: dict[int, Callable[[Store], object]] = {
    1: publishdb.carry_page_views,  # what publish writes lives in publish.db, beside the store
    2: rowid_layout,  # record tables: rowid tables, the blind key in a UNIQUE index
    3: compact_bearings,  # the checks' bearings a third of their size; indexes for the checks' look-ups
}


def statements(ddl: str) -> list[str]:
    return [s.strip() for s in ddl.split(";") if s.strip()]


def open_upgraded(store_dir, secret: Secret | Keyring, domains: dict[str, Domain]) -> Store:
    """The store, open to write, brought up to this release and these schemas first."""
    def ready(store: Store) -> None:  # the keyring is checked before anything is written
        if store.behind() or store.unmade_tables():
            upgrade(store)
    return opened(store_dir, secret, domains, write=True, ready=ready)


def init(store_dir, secret: Secret, suite_name: str = "std", code: str = "office",
         domains: dict[str, Domain] | None = None) -> Path:
    """``syncdb office init``: the store folder and the office keys (office.create), and a store made
    whole for ``domains`` (the shipped schemas if None). Return the office's public key file."""
    public = office.create(store_dir, secret, suite_name, code)
    open_upgraded(store_dir, secret, load_domains(None) if domains is None else domains).close()
    return public


def upgrade(store: Store) -> Path | None:
    """Bring the store up to date; return the backup copy made first, if any."""
    conn = store.conn
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    _refuse_later_release(store, version)
    backup = _backup(store) if _holds_records(conn) else None
    with store.transaction():
        (version,) = conn.execute("PRAGMA user_version").fetchone()  # another process may have upgraded it
        _refuse_later_release(store, version)  # ...even a later release, while this one waited for the lock
        for ddl in OWNED_TABLES.values():
            for statement in statements(ddl):
                conn.execute(statement)
        office.add_missing_columns(conn)
        for table in store.tables.values():
            for statement in create_sql(table):
                conn.execute(statement)
            _add_new_columns(conn, table)
        for step in range(version + 1, STORE_VERSION + 1):
            if step in STEPS:
                STEPS[step](store)
        # The columns the checks look records up by (checks.py); after the steps: step 2 would build them twice.
        try:
            wanted = checks.registered()
            checks.lookup_indexes(store, wanted)  # what a plugin declares is read here
        except Exception as e:  # a check plugin's bug stops no upgrade nor merge; the checks' run reports it
            log.warning("the checks' look-up indexes were not made: %s", e)
            wanted = []
        checks.make_lookup_indexes(store, wanted)
        conn.execute("INSERT OR IGNORE INTO keyring_check VALUES (1, ?, ?)", store.keyring_check)
        conn.execute(f"PRAGMA user_version = {STORE_VERSION}")
    return backup


def _refuse_later_release(store: Store, version: int) -> None:
    if version > STORE_VERSION:
        raise SyncdbError(_("the store in {folder} was made by a later release of syncdb (store "
                            "version {version}, this one knows {known}); install that release at the "
                            "office; nothing was changed").format(folder=store.folder, version=version,
                                                                  known=STORE_VERSION))


def _holds_records(conn: sqlite3.Connection) -> bool:
    """Has anything been merged into it (only then is there something a backup could save)?"""
    has_applied = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'applied'").fetchone()
    return bool(has_applied and conn.execute("SELECT 1 FROM applied LIMIT 1").fetchone())


def _backup(store: Store) -> Path:
    """A consistent copy of store.db (SQLite's backup API, so a running merge elsewhere is no harm)."""
    folder = store.folder / "backups"
    (version,) = store.conn.execute("PRAGMA user_version").fetchone()
    target = folder / f"store-v{version}-{time.strftime('%Y%m%d-%H%M%S')}.db"
    try:
        folder.mkdir(exist_ok=True)
        copy = sqlite3.connect(str(target))
        try:
            store.conn.backup(copy)
        finally:
            copy.close()
        fsync_dir(folder)
    except (OSError, sqlite3.Error) as e:
        target.unlink(missing_ok=True)
        raise storage_error(e, store.folder, then=_("free some space and run the command again; the store "
                                                    "was not changed")) from None
    return target


def _add_new_columns(conn: sqlite3.Connection, table: Table) -> None:
    """A column added to a schema file is added to the store; nothing is ever dropped."""
    name = table_name(table)
    present = {row[1] for row in conn.execute(f"PRAGMA table_info([{name}])")}
    for c in (c for c in table.columns.values() if c.name not in present):
        conn.execute(f"ALTER TABLE [{name}] ADD COLUMN [{c.name}] {'BLOB' if c.sensitive else ''}")
    # Rows written under another column list: their shared version ("*") never
    # covered a column new since, so mark such columns unset, once.
    non_key = table.non_key
    known = conn.execute("SELECT columns FROM store_columns WHERE tbl = ?", (table.qualified,)).fetchone()
    if known and json.loads(known[0]) != non_key:
        before = [c for c in non_key if c in json.loads(known[0])]
        rows = conn.execute(f"SELECT _key, _versions FROM [{name}]").fetchall()
        conn.executemany(f"UPDATE [{name}] SET _versions = ? WHERE _key = ?", [
            (pack_versions(unpack_versions(text, before), non_key), key) for key, text in rows])
    conn.execute("INSERT OR REPLACE INTO store_columns VALUES (?, ?)", (table.qualified, json.dumps(non_key)))
    for col in id_columns(table):
        if f"{col}__bi" not in present:
            conn.execute(f"ALTER TABLE [{name}] ADD COLUMN [{col}__bi] BLOB")

