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
from .hlc import pack_row_versions, unpack_row_versions
from .schema import Domain, Table, load_domains
from .store import (STORE_TABLES, STORE_VERSION, Seals, Store, clear_columns, create_sql, id_columns, opened,
                    read_sealed_columns, redundant_index_names, table_name)

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
    columns = conn.execute(f"PRAGMA table_info([{name}])").fetchall()
    defined = _definitions(conn, name)
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


def _definitions(conn: sqlite3.Connection, name: str, only: list[str] | None = None) -> list[str]:
    """The column definitions of table ``name`` as they are made there (``only`` these columns, if given),
    for a table made anew beside it."""
    return [f"[{col}] {kind}".rstrip() + (" NOT NULL" if notnull or pk else "")
            + (f" DEFAULT {default}" if default is not None else "")
            for _cid, col, kind, notnull, default, pk in conn.execute(f"PRAGMA table_info([{name}])").fetchall()
            if only is None or col in only]


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


def reconcile_seals(store: Store, table: Table) -> bool:
    """Make a record table's row seals hold what its schema says is sensitive (step 4, and every upgrade).

    - A table made before store version 4 sealed each sensitive value in a column of its own: the
      table is made anew, row for row (rowids kept), with the values sealed together in ``_sealed``
      and those columns gone, and the versions in bytes (hlc.pack_row_versions): the nonces and
      tags of single values and the versions' text were a quarter of the store's bytes.
    - A column the schema has made sensitive since: its values move into the row seals, and the
      column of their own is emptied (columns are never dropped).
    - A column no longer sensitive: its values are copied out of the seals to a column of their own;
      its place in the seals is kept, marked unused ("-"), so every seal made before still opens.

    The store's list of the seals' columns (``sealed_columns``) is written in the same transaction.
    """
    conn, seals, name = store.conn, store.seals, table_name(table)
    types = {row[1]: row[2].upper() for row in conn.execute(f"PRAGMA table_info([{name}])")}
    held = set(types)
    listed = seals.row_columns.get(table.qualified)
    legacy = "_sealed" not in held
    if listed is None and not legacy:  # a table made anew, by create_sql
        _list_sealed(store, table.qualified, table.sensitive_columns)
        return False
    listed = list(listed or [])
    active = [c for c in listed if not c.startswith("-")]
    to_seal = [c for c in table.sensitive_columns if c not in active]
    # Only a column the schema still declares, in the clear, comes out: one no schema declares any
    # more stays sealed where it is (its values are kept, and were sensitive).
    to_unseal = [c for c in active if c in table.columns and c not in table.sensitive_columns]
    # Values version 3 sealed alone, left in a column the schema has in the clear (made plain under
    # version 3, or kept while no schema declared it and declared plain since; version 3 made such a
    # column BLOB): opened here.
    sealed_plain = [c for c in types if c in table.columns and not table.columns[c].sensitive
                    and c not in to_unseal and (legacy or types[c] == "BLOB") and conn.execute(
                        f"SELECT 1 FROM [{name}] WHERE typeof([{c}]) = 'blob' LIMIT 1").fetchone()]
    now = [f"-{c}" if c in to_unseal else c for c in listed] + to_seal
    moving = [c for c in to_seal if c in held]  # the values that come into the seals, from their own columns
    if not moving and not to_unseal and not sealed_plain:
        # Nothing to move. Columns new to the table have no values yet: every seal opens under the longer
        # list (a seal is bound to the names of its own places only), so no row is sealed again.
        if legacy:  # nothing sealed in it yet
            conn.execute(f"ALTER TABLE [{name}] ADD COLUMN [_sealed] BLOB")
        if legacy or to_seal:
            _list_sealed(store, table.qualified, now)
        return False
    before, after = seals, Seals(store.keyring, {**seals.row_columns, table.qualified: now})
    for c in to_unseal:
        if c not in held:
            conn.execute(f"ALTER TABLE [{name}] ADD COLUMN [{c}]")
    if legacy:
        kept = [c for c in (row[1] for row in conn.execute(f"PRAGMA table_info([{name}])")) if c not in moving]
        rebuilt = _made_beside(conn, name, kept)
        write = (f"INSERT INTO [{rebuilt}] (rowid, {', '.join(f'[{c}]' for c in kept)}, [_sealed]) "
                 f"VALUES (?, {', '.join('?' * len(kept))}, ?)")
        read = ["rowid"] + kept + moving
    else:
        sets = ", ".join(["[_sealed] = ?"] + [f"[{c}] = NULL" for c in moving]
                         + [f"[{c}] = ?" for c in to_unseal + sealed_plain])
        write = f"UPDATE [{name}] SET {sets} WHERE rowid = ?"
        read = ["rowid", "_key", "_sealed"] + sealed_plain + moving
    # Values in the clear that come into the seals (upgrade() then clears their copies on disk): from a
    # column kept plain until now, also where version 3's table is made anew and the old one dropped.
    cleared = (bool(moving) and not legacy) or any(types[c] != "BLOB" for c in moving)
    at_key = read.index("_key")
    at_versions = read.index("_versions") if legacy and "_versions" in read else None
    at_plain = [(read.index(c), c) for c in sealed_plain]
    cursor = conn.execute(f"SELECT {', '.join(f'[{c}]' for c in read)} FROM [{name}] ORDER BY rowid")
    while rows := cursor.fetchmany(2000):
        out = []
        for row in rows:
            rowid, key = row[0], bytes(row[at_key])
            values = {} if legacy else before.open_row(table, row[2], key)
            for c, value in zip(moving, row[len(read) - len(moving):]):
                # Sealed alone by an earlier release (also in a column no schema declared when the store
                # became version 4, kept as it was), or plain while the column was not sensitive: a
                # record's value is never bytes (a bundle's JSON has none).
                if isinstance(value, bytes):
                    values[c] = before.open(value, table, c, key)
                else:
                    values[c], cleared = value, cleared or value is not None
            sealed = after.seal_row(table, values, key)
            if legacy:
                kept_values = list(row[:len(read) - len(moving)])
                for at, c in at_plain:
                    if isinstance(kept_values[at], bytes):
                        kept_values[at] = before.open(kept_values[at], table, c, key)
                if at_versions is not None:  # the versions in bytes too (hlc.pack_row_versions)
                    kept_values[at_versions] = pack_row_versions(
                        unpack_row_versions(kept_values[at_versions], table.non_key), table.non_key)
                out.append((*kept_values, sealed))
            else:
                opened = [before.open(row[at], table, c, key) if isinstance(row[at], bytes) else row[at]
                          for at, c in at_plain]
                out.append((sealed, *(values.get(c) for c in to_unseal), *opened, rowid))
        conn.executemany(write, out)
    if legacy:
        _replace(conn, name, rebuilt, kept)
    _list_sealed(store, table.qualified, now)
    return cleared


def _list_sealed(store: Store, qualified: str, columns: list[str]) -> None:
    store.seals.set_row_columns(qualified, columns)
    store.conn.execute("INSERT OR REPLACE INTO sealed_columns VALUES (?, ?)", (qualified, json.dumps(columns)))


def _made_beside(conn: sqlite3.Connection, name: str, kept: list[str]) -> str:
    """An empty table beside ``name`` with its columns ``kept`` (as they are defined there) and ``_sealed``."""
    defined = _definitions(conn, name, kept)
    rebuilt = f"{name}__sealed"
    conn.execute(f"DROP TABLE IF EXISTS [{rebuilt}]")
    conn.execute(f"CREATE TABLE [{rebuilt}] ({', '.join(defined)}, [_sealed] BLOB)")
    return rebuilt


def _replace(conn: sqlite3.Connection, name: str, rebuilt: str, kept: list[str]) -> None:
    """``rebuilt`` takes the place of ``name``, with every index of it that is on columns it kept."""
    indexes = []
    for index, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                                   "AND sql IS NOT NULL", (name,)).fetchall():
        if all(col in kept for (_seq, _cid, col) in conn.execute(f"PRAGMA index_info([{index}])")):
            indexes.append(sql)
    conn.execute(f"DROP TABLE [{name}]")
    conn.execute(f"ALTER TABLE [{rebuilt}] RENAME TO [{name}]")
    for sql in indexes:
        conn.execute(sql)


# Steps from one store version to the next, each run inside the upgrade's transaction
# after the tables above are made: STEPS[n] brings a store from version n - 1 to n.
STEPS: dict[int, Callable[[Store], object]] = {
    1: publishdb.carry_page_views,  # what publish writes lives in publish.db, beside the store
    2: rowid_layout,  # record tables: rowid tables, the blind key in a UNIQUE index
    3: compact_bearings,  # the checks' bearings a third of their size; indexes for the checks' look-ups
    # 4: reconcile_seals below (a table made by an earlier release seals its rows anew).
    # 5: the history's indexes (audit.ledger_by_time, store.rejected_by_origin, store.applied_sums), made by the DDL above.
}


def statements(ddl: str) -> list[str]:
    return [s.strip() for s in ddl.split(";") if s.strip()]


def open_upgraded(store_dir, secret: Secret | Keyring, domains: dict[str, Domain]) -> Store:
    """The store, open to write, brought up to this release and these schemas first."""
    def ready(store: Store) -> None:  # the keyring is checked before anything is written
        if store.behind() or store.unmade_tables():
            upgrade(store)
        elif (store.folder / OLD_COPIES).exists():  # an upgrade stopped (killed) before it cleared them
            _clear_old_copies(store)
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
        # ... and listed more columns in the row seals than this process read when it opened the store.
        for qualified, columns in read_sealed_columns(conn).items():
            store.seals.set_row_columns(qualified, columns)
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
        cleared = False  # values in the clear moved into the seals
        for table in store.tables.values():
            # Step 4 (a table made by an earlier release seals its rows anew), and any column the
            # schema has made sensitive or not since; after step 2, which makes the tables rowid tables.
            cleared |= reconcile_seals(store, table)
        # The columns the checks look records up by (checks.py); after the steps: step 2 would build them twice.
        try:
            wanted = checks.registered()
            checks.lookup_indexes(store, wanted)  # what a plugin declares is read here
        except Exception as e:  # a check plugin's bug stops no upgrade nor merge; the checks' run reports it
            log.warning(_("the checks' look-up indexes were not made ({problem}); the merge goes on, and the "
                          "checks' report names the check at fault").format(problem=e))
            wanted = []
        checks.make_lookup_indexes(store, wanted)
        conn.execute("INSERT OR IGNORE INTO keyring_check VALUES (1, ?, ?)", store.keyring_check)
        conn.execute(f"PRAGMA user_version = {STORE_VERSION}")
        if cleared:  # before the commit: a process killed in the VACUUM, which takes minutes on a big
            # store, leaves the next merge to finish it (the store, upgraded, is not upgraded again)
            (store.folder / OLD_COPIES).touch()
            fsync_dir(store.folder)
    if cleared:
        _clear_old_copies(store)
    return backup


OLD_COPIES = "store.db-old-copies"  # in the store folder while values in the clear may be left in free space


def _clear_old_copies(store: Store) -> None:
    """After values in the clear were made sensitive: store.db written anew (VACUUM), so that no copy of
    them is left in its free space (from the merges that wrote them when they were not sensitive), and
    the WAL emptied. The backup copied before the upgrade keeps them, as the schema had them then."""
    try:
        store.conn.execute("VACUUM")
        # Another process reading the store (publish building or refreshing) lets the VACUUM run into the
        # WAL but not back into store.db, whose old pages stay: the checkpoint waits the busy timeout for it,
        # then gives up without raising.
        busy, _frames, _copied = store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise sqlite3.OperationalError(_("another process was reading it"))
        (store.folder / OLD_COPIES).unlink(missing_ok=True)
    except sqlite3.Error as e:  # another process reading or writing the store: it is the operator's to do
        log.warning(_("a column made sensitive: old copies of its values in the clear may be left in the free "
                      "space of {path} ({problem}); stop publish and serve, then run `syncdb merge {store}` "
                      "again to clear them").format(path=store.folder / "store.db", problem=e, store=store.folder))


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
    for c in (c for c in clear_columns(table) if c not in present):
        conn.execute(f"ALTER TABLE [{name}] ADD COLUMN [{c}]")
    # Rows written under another column list: their shared version ("*") never
    # covered a column new since, so mark such columns unset, once.
    non_key = table.non_key
    known = conn.execute("SELECT columns FROM store_columns WHERE tbl = ?", (table.qualified,)).fetchone()
    if known and json.loads(known[0]) != non_key:
        before = [c for c in non_key if c in json.loads(known[0])]
        rows = conn.execute(f"SELECT _key, _versions FROM [{name}]").fetchall()
        conn.executemany(f"UPDATE [{name}] SET _versions = ? WHERE _key = ?", [
            (pack_row_versions(unpack_row_versions(text, before), non_key), key) for key, text in rows])
    conn.execute("INSERT OR REPLACE INTO store_columns VALUES (?, ?)", (table.qualified, json.dumps(non_key)))
    for col in id_columns(table):
        if f"{col}__bi" not in present:
            conn.execute(f"ALTER TABLE [{name}] ADD COLUMN [{col}__bi] BLOB")

