"""``syncdb keys rotate``: re-encrypt the store under a new data key.

The new key is added to the keyring (and made current) before any value is
touched; then every sealed value still under an older key is re-sealed, in
batches of one transaction each. A sealed value names its key, so a rotation
that was interrupted simply continues where it stopped when run again.
Old keys stay in the keyring: backups made before the rotation need them.
"""

from __future__ import annotations

import json
import os

from . import office
from .crypto import Secret
from .merge import open_store
from .store import table_name

BATCH = 2000


def rotate(store_dir, secret: Secret, domains, resume_only=False, progress=None) -> dict:
    # Open the store first: a keyring that is not this store's is refused before a key is added to it.
    store = open_store(store_dir, secret, domains)
    counts = {}
    try:
        ring = store.keyring
        if not resume_only and not _unfinished(store, ring.data_key_id):
            new_id = str(max(int(k) for k in ring.data_keys) + 1)
            if int(new_id) > 255:
                raise ValueError("no more data key ids")
            ring.data_keys[new_id] = os.urandom(ring.suite.key_size)
            ring.data_key_id = new_id
            ring.save(office.keyring_path(store_dir), secret)
        current = int(ring.data_key_id)
        for table in store.tables.values():
            sensitive = table.sensitive_columns
            if not sensitive:
                continue
            name = table_name(table)
            done = 0
            while True:
                # Compare the key-id byte as bytes: unicode() of a lone byte >= 0xC0 is not its value.
                stale = " OR ".join(f"(typeof([{c}]) = 'blob' AND substr([{c}], 2, 1) != x'{current:02x}')"
                                    for c in sensitive)
                # Read inside the write transaction: a merge committing in between
                # would otherwise be overwritten with the values read before it.
                store.conn.execute("BEGIN IMMEDIATE")
                batch = store.conn.execute(
                    f"SELECT _key, {', '.join(f'[{c}]' for c in sensitive)} FROM [{name}] WHERE {stale} LIMIT {BATCH}"
                ).fetchall()
                if not batch:
                    store.conn.execute("COMMIT")
                    break
                for key, *values in batch:
                    sealed = [_reseal(store, v, table, c, key) for c, v in zip(sensitive, values)]
                    store.conn.execute(
                        f"UPDATE [{name}] SET {', '.join(f'[{c}] = ?' for c in sensitive)} WHERE _key = ?",
                        sealed + [key])
                store.conn.execute("COMMIT")
                done += len(batch)
                if progress:
                    progress(table.qualified, done)
            counts[table.qualified] = done
        counts["frontier"] = _reseal_frontier(store, current)
        counts["conflicts"] = _reseal_conflicts(store, current)
    finally:
        store.conn.close()
    return counts


def _unfinished(store, key_id) -> bool:
    """Is there a rotation to key_id still to finish? Then continue it, make no new key."""
    if key_id == "1":
        return False
    for table in store.tables.values():
        for c in table.sensitive_columns:
            if store.conn.execute(
                    f"SELECT 1 FROM [{table_name(table)}] WHERE typeof([{c}]) = 'blob' "
                    f"AND substr([{c}], 2, 1) != ? LIMIT 1", (bytes([int(key_id)]),)).fetchone():
                return True
    # The queue's side tables are re-sealed last: a rotation stopped there is unfinished too.
    current = bytes([int(key_id)])
    for tbl, col in store.conn.execute("SELECT DISTINCT tbl, col FROM frontier WHERE typeof(value) = 'blob' "
                                       "AND substr(value, 2, 1) != ?", (current,)).fetchall():
        if tbl in store.tables and store.table(tbl).columns[col].sensitive:
            return True
    for tbl, col, candidates in store.conn.execute("SELECT tbl, col, candidates FROM conflicts"):
        if tbl in store.tables and store.table(tbl).columns[col].sensitive and any(
                item["value"] is not None and bytes.fromhex(item["value"])[1:2] != current
                for item in json.loads(candidates)):
            return True
    return False


def _reseal(store, sealed, table, column, key) -> bytes:
    """The same value, sealed again under the current data key."""
    return store.seal(store.open(sealed, table, column, key), table, column, key)


def _reseal_frontier(store, current) -> int:
    store.conn.execute("BEGIN IMMEDIATE")
    rows = store.conn.execute("SELECT tbl, key, col, version, value FROM frontier WHERE typeof(value) = 'blob'").fetchall()
    n = 0
    for tbl, key, col, version, value in rows:
        table = store.table(tbl)
        if table.columns[col].sensitive and bytes(value)[1] != current:
            store.conn.execute("UPDATE frontier SET value = ? WHERE tbl = ? AND key = ? AND col = ? AND version = ?",
                               (_reseal(store, value, table, col, key), tbl, key, col, version))
            n += 1
    store.conn.execute("COMMIT")
    return n


def _reseal_conflicts(store, current) -> int:
    store.conn.execute("BEGIN IMMEDIATE")
    rows = store.conn.execute("SELECT id, tbl, key, col, candidates FROM conflicts").fetchall()
    n = 0
    for cid, tbl, key, col, candidates in rows:
        table = store.table(tbl)
        if not table.columns[col].sensitive:
            continue
        items = json.loads(candidates)
        for item in items:
            if item["value"] is not None and bytes.fromhex(item["value"])[1] != current:
                item["value"] = _reseal(store, bytes.fromhex(item["value"]), table, col, key).hex()
                n += 1
        store.conn.execute("UPDATE conflicts SET candidates = ? WHERE id = ?", (json.dumps(items), cid))
    store.conn.execute("COMMIT")
    return n
