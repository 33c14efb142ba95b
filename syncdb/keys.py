"""``syncdb keys rotate``: re-encrypt the store under a new data key.

The new key is added to the keyring (and made current) before any value is
touched; then every sealed row (a record's sensitive values, sealed together)
and sealed value still under an older key is re-sealed, in batches of one
transaction each. A sealed value names its key, so a rotation
that was interrupted simply continues where it stopped when run again.
Old keys stay in the keyring: backups made before the rotation need them.
The conflict queue's candidates and the checks' cases (findings and reasons)
are re-sealed after the records, so none of them needs the old key after it.
"""

from __future__ import annotations

import os

from . import cases, conflicts, migrations, office
from .crypto import Secret
from .i18n import _
from .store import table_name

BATCH = 2000


def rotate(store_dir, secret: Secret, domains, resume_only=False, progress=None) -> dict:
    # Open the store first: a keyring that is not this store's is refused before a key is added to it.
    store = migrations.open_upgraded(store_dir, secret, domains)
    counts = {}
    try:
        ring = store.keyring
        if not resume_only and not _unfinished(store, ring.data_key_id):
            new_id = str(max(int(k) for k in ring.data_keys) + 1)
            if int(new_id) > 255:
                raise ValueError(_("no more data key ids"))
            ring.data_keys[new_id] = os.urandom(ring.suite.key_size)
            ring.data_key_id = new_id
            ring.save(office.keyring_path(store_dir), secret)
        current = int(ring.data_key_id)
        for table in store.tables.values():
            # Every table: one no longer with a sensitive column may still hold seals of its values.
            name = table_name(table)
            done = 0
            while True:
                # Compare the key-id byte as bytes: unicode() of a lone byte >= 0xC0 is not its value.
                # Read inside the write transaction: a merge committing in between
                # would otherwise be overwritten with the values read before it.
                with store.transaction() as conn:
                    batch = conn.execute(f"SELECT _key, _sealed FROM [{name}] WHERE typeof(_sealed) = 'blob' "
                                         f"AND substr(_sealed, 2, 1) != x'{current:02x}' LIMIT {BATCH}").fetchall()
                    for key, sealed in batch:
                        key = bytes(key)
                        conn.execute(f"UPDATE [{name}] SET _sealed = ? WHERE _key = ?", (
                            store.seals.seal_row(table, store.seals.open_row(table, sealed, key), key), key))
                if not batch:
                    break
                done += len(batch)
                if progress:
                    progress(table.qualified, done)
            counts[table.qualified] = done
        counts["frontier"] = _reseal_frontier(store, current)
        counts["conflicts"] = _reseal_conflicts(store, current)
        # The checks' cases last: their findings and reasons are sealed under the data key too.
        counts["cases"] = cases.reseal(store, current)
    finally:
        store.close()
    return counts


def _unfinished(store, key_id) -> bool:
    """Is there a rotation to key_id still to finish? Then continue it, make no new key."""
    if key_id == "1":
        return False
    for table in store.tables.values():
        if store.conn.execute(
                f"SELECT 1 FROM [{table_name(table)}] WHERE typeof(_sealed) = 'blob' "
                f"AND substr(_sealed, 2, 1) != ? LIMIT 1", (bytes([int(key_id)]),)).fetchone():
            return True
    # The queue's side tables are re-sealed last: a rotation stopped there is unfinished too.
    current = bytes([int(key_id)])
    for tbl, col in store.conn.execute("SELECT DISTINCT tbl, col FROM frontier WHERE typeof(value) = 'blob' "
                                       "AND substr(value, 2, 1) != ?", (current,)).fetchall():
        if tbl in store.tables and store.table(tbl).columns[col].sensitive:
            return True
    return conflicts.needs_reseal(store, int(key_id)) or bool(cases.data_keys_used(store) - {int(key_id)})


def _reseal(store, sealed, table, column, key) -> bytes:
    """The same value, sealed again under the current data key."""
    return store.seal(store.open(sealed, table, column, key), table, column, key)


def _reseal_conflicts(store, current) -> int:
    return conflicts.reseal(store, current, lambda *cell: _reseal(store, *cell))


def _reseal_frontier(store, current) -> int:
    n = 0
    with store.transaction() as conn:
        rows = conn.execute("SELECT tbl, key, col, version, value FROM frontier WHERE typeof(value) = 'blob'").fetchall()
        for tbl, key, col, version, value in rows:
            table = store.table(tbl)
            if table.columns[col].sensitive and bytes(value)[1] != current:
                conn.execute("UPDATE frontier SET value = ? WHERE tbl = ? AND key = ? AND col = ? AND version = ?",
                             (_reseal(store, value, table, col, key), tbl, key, col, version))
                n += 1
    return n
