"""Staff accounts for ``syncdb publish``: ``syncdb users add|list|remove``, and the password check.

Accounts live in the ``staff`` table of publish.db (publishdb.py): a name,
the scrypt hash of the password with its salt, the roles, and an epoch that
changes with every new password or roles, so sessions signed in before end
at their next page. An earlier release kept them in
``STORE/publish-users.json``: that file is read into the table once, then
renamed aside (``publish-users.json.imported``), never deleted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import time
from pathlib import Path

from . import office, publishdb
from .errors import SyncdbError
from .files import fsync_dir
from .i18n import _

ROLES = ("view-pii", "admin")
USERS_FILE = "publish-users.json"  # where an earlier release kept the accounts


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def _connect(store_dir) -> sqlite3.Connection:
    """publish.db, with the accounts of an earlier release's users file in it."""
    office.store_file(store_dir)  # an office store, or say so, before publish.db is made beside it
    conn = publishdb.connect(store_dir)
    try:
        if Path(store_dir, USERS_FILE).exists():
            _import_users_file(conn, Path(store_dir))
    except BaseException:
        conn.close()
        raise
    return conn


def _import_users_file(conn: sqlite3.Connection, store_dir: Path) -> None:
    """Read publish-users.json into the table once, then rename it aside.

    ``meta`` remembers the import in the same transaction, so an account
    removed since is never brought back by a file that could not be renamed.
    """
    path = store_dir / USERS_FILE
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not conn.execute("SELECT 1 FROM meta WHERE name = 'users file imported'").fetchone():
            for name, user in _read_users_file(path).items():
                conn.execute("INSERT OR IGNORE INTO staff (name, salt, hash, roles, epoch, added) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (name, user["salt"], user["hash"], json.dumps(sorted(user["roles"])),
                              user.get("epoch", ""), user.get("added", "")))
            conn.execute("INSERT INTO meta (name, value) VALUES ('users file imported', ?)",
                         (time.strftime("%Y-%m-%dT%H:%M:%S"),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    aside = path.with_name(path.name + ".imported")
    try:
        if path.exists():
            os.replace(path, aside if not aside.exists() else path.with_name(
                f"{path.name}.imported-{time.strftime('%Y%m%d-%H%M%S')}"))
            fsync_dir(store_dir)
    except OSError as e:
        raise SyncdbError(_("the staff accounts of {file} are now in {db}, but the file could not be renamed "
                            "aside ({why}); move it out of the store folder by hand").format(
                                file=path, db=publishdb.db_path(store_dir), why=e.strerror or e)) from None


def _read_users_file(path: Path) -> dict:
    try:
        users = json.loads(path.read_text(encoding="utf-8"))["users"]
        for user in users.values():
            bytes.fromhex(user["salt"]), bytes.fromhex(user["hash"]), list(user["roles"])
        return users
    except FileNotFoundError:
        return {}  # renamed aside meanwhile by another process
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SyncdbError(_("{file} is damaged, so its staff accounts cannot be carried into {db}; restore it "
                            "from a backup, or move it out of the store folder and add the staff accounts again "
                            "with `syncdb users add`").format(file=path, db=publishdb.db_path(path.parent))) from None


def read_users(store_dir) -> dict[str, dict]:
    """Every account: name -> {"roles", "epoch", "added"} (the hashes stay in the database)."""
    conn = _connect(store_dir)
    try:
        return {name: {"roles": json.loads(roles), "epoch": epoch, "added": added}
                for name, roles, epoch, added in conn.execute(
                    "SELECT name, roles, epoch, added FROM staff ORDER BY name")}
    finally:
        conn.close()


def account(store_dir, name: str) -> dict | None:
    """One account's roles and epoch, or None: what every page checks its session against."""
    conn = _connect(store_dir)
    try:
        row = conn.execute("SELECT roles, epoch FROM staff WHERE name = ?", (name,)).fetchone()
    finally:
        conn.close()
    return None if row is None else {"roles": json.loads(row[0]), "epoch": row[1]}


def add_user(store_dir, name: str, password: str, roles=()) -> None:
    """Add a member of staff, or set a new password and roles for one."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SyncdbError(_("'{name}' is not a usable sign-in name: letters, digits, - and _ only").format(name=name))
    if len(password) < 8:
        raise SyncdbError(_("the password must be at least 8 characters"))
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise SyncdbError(_("unknown role {unknown}; roles are {roles}").format(
            unknown=", ".join(sorted(unknown)), roles=", ".join(ROLES)))
    salt = os.urandom(16)
    conn = _connect(store_dir)
    try:
        # A new epoch with every new password or roles: sessions signed in before end at their next page.
        conn.execute("INSERT OR REPLACE INTO staff (name, salt, hash, roles, epoch, added) VALUES (?, ?, ?, ?, ?, ?)",
                     (name, salt.hex(), _hash(password, salt).hex(), json.dumps(sorted(set(roles))),
                      os.urandom(8).hex(), time.strftime("%Y-%m-%dT%H:%M:%S")))
    finally:
        conn.close()


def remove_user(store_dir, name: str) -> None:
    conn = _connect(store_dir)
    try:
        if not conn.execute("DELETE FROM staff WHERE name = ?", (name,)).rowcount:
            raise SyncdbError(_("there is no account '{name}'; see `syncdb users list`").format(name=name))
    finally:
        conn.close()


def check_password(store_dir, name: str, password: str) -> dict | None:
    """The actor for a correct name and password, else None."""
    conn = _connect(store_dir)
    try:
        row = conn.execute("SELECT salt, hash, roles, epoch FROM staff WHERE name = ?", (name,)).fetchone()
    finally:
        conn.close()
    if row is None:
        _hash(password, b"\0" * 16)  # take as long as for a real account
        return None
    salt, hashed, roles, epoch = row
    if not hmac.compare_digest(_hash(password, bytes.fromhex(salt)), bytes.fromhex(hashed)):
        return None
    return {"id": name, "roles": json.loads(roles), "epoch": epoch}
