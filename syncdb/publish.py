"""``syncdb publish``: the store, read-only, for the office's staff.

Nothing decrypted ever reaches a disk. At start-up (and again after each
merge) the store is decrypted into two named in-memory databases:

    renkou          every sensitive value masked (441900********123X, 张*明,
                    138****0000): what any signed-in member of staff sees
    renkou_mingwen  the plaintext, for the ``view-pii`` role only

Keeping the masked values in a database of their own, rather than masking
cells as they are drawn, means no sort, facet, filter, CSV or JSON path can
reveal what a mask hides: permissions decide which database a person may
open at all. Tables and columns carry their Chinese labels from the schemas.

Staff sign in with a name and password (``syncdb users add``); sessions
are held at the server (signin.py), end at sign-out and expire, and repeated
wrong passwords lock the account name and the address out for a while. Every page that shows plaintext is written to the ``page_views`` log
in the store, chained by HMAC like the audit ledger, with filter values
replaced by their blind index so the log itself holds no plaintext.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import re
import socket
import time
from pathlib import Path

from . import office
from .crypto import Secret
from .errors import SyncdbError
from .files import write_atomic
from .schema import Column, Domain, Table
from .store import Store, mask, table_name

MASKED_DB = "renkou"
PLAIN_DB = "renkou_mingwen"
PERSON_COLUMN = "档案"  # the blind index of the record's ID number, shown as a link to the person page
ROLES = ("view-pii", "admin")
SESSION_HOURS = 8


# ---------------------------------------------------------------- masking

def mask_value(column: Column, value):
    """What staff without ``view-pii`` see of a sensitive value."""
    if value is None or value == "":
        return value
    text = str(value)
    if column.validator == "id_number":
        return mask(text)
    if column.validator == "phone" and len(text) >= 7:
        return text[:3] + "*" * (len(text) - 7) + text[-4:]
    if column.name.endswith("name"):
        # 张三 → 张*, 张小明 → 张*明, 欧阳小明 → 欧**明
        return text[0] + "*" if len(text) <= 2 else text[0] + "*" * (len(text) - 2) + text[-1]
    if column.name.endswith("address"):
        # Keep the district-level part a member of staff needs to route work.
        keep = min(6, len(text) // 2)
        return text[:keep] + "*" * (len(text) - keep)
    return mask(text)


# ---------------------------------------------------------------- the published tables

def published_name(domain: Domain, table: Table) -> str:
    return f"{domain.label}_{table.label}"


def person_column(table: Table) -> str | None:
    """The ID-number column whose blind index links a record to the person page."""
    ids = table.id_columns
    return ids[0] if ids else None


def birth_date_columns(table: Table) -> set[str]:
    """Columns holding the birth date an ID number carries: masked to the year.

    The ID mask hides exactly the eight birth-date digits, so a full date
    beside it would give the whole number back.
    """
    return {c.matches["birth_date"] for c in table.columns.values()
            if c.sensitive and c.validator == "id_number" and c.matches.get("birth_date")}


def memory_uri(name: str) -> str:
    """The URI Datasette opens a named in-memory database with (shared by every connection of the process)."""
    return f"file:{name}?mode=memory&cache=shared"


CHUNK = 2000


def fill(store: Store, masked, plain, exclusive=contextlib.nullcontext) -> int:
    """Decrypt every live record into the two in-memory databases; return how many.

    ``masked`` and ``plain`` are connections (isolation_level=None) to them.
    ``exclusive()`` is held while the schema changes: an in-memory database's
    connections share one cache, where a page reading during a CREATE, DROP or
    RENAME would fail with "table is locked" instead of waiting.

    Streams in chunks, so memory holds the published databases and one chunk,
    never a Python copy of the store. Each table is built under a new name and
    swapped in at the end, so pages keep the old data until the new is whole.
    """
    records = 0
    built = []
    for domain in store.domains.values():
        for table in domain.tables.values():
            name = published_name(domain, table)
            names = list(table.columns)
            linked = person_column(table)
            born = birth_date_columns(table)
            labels = [table.columns[c].label for c in names] + ([PERSON_COLUMN] if linked else [])
            select = ", ".join(f"[{c}]" for c in names) + (f", [{linked}__bi]" if linked else "")
            with exclusive():
                for conn in (masked, plain):
                    conn.execute(f"DROP TABLE IF EXISTS [_new_{name}]")
                    conn.execute(f"CREATE TABLE [_new_{name}] ({', '.join(f'[{c}]' for c in labels)})")
            insert = f"INSERT INTO [_new_{name}] VALUES ({', '.join('?' * len(labels))})"
            cursor = store.conn.execute(f"SELECT _key, {select} FROM [{table_name(table)}] WHERE _exists = 1")
            while True:
                chunk = cursor.fetchmany(CHUNK)
                if not chunk:
                    break
                shown, hidden = [], []
                for key, *values in chunk:
                    row = [store.plain(table, c, v, key) for c, v in zip(names, values)]
                    masked_row = [mask_value(table.columns[c], v) if table.columns[c].sensitive
                                  else (v[:4] if c in born and isinstance(v, str) else v)
                                  for c, v in zip(names, row)]
                    if linked:
                        token = bytes(values[-1]).hex() if values[-1] is not None else None
                        row.append(token)
                        masked_row.append(token)
                    shown.append(row)
                    hidden.append(masked_row)
                for conn, rows in ((plain, shown), (masked, hidden)):
                    conn.execute("BEGIN")
                    conn.executemany(insert, rows)
                    conn.execute("COMMIT")
                records += len(chunk)
            built.append((name, linked))
    generation = os.urandom(4).hex()  # an index keeps its name through the RENAME: one name per build
    with exclusive():
        for conn in (masked, plain):
            for name, linked in built:
                if linked:
                    conn.execute(f"CREATE INDEX [{name}_{PERSON_COLUMN}_{generation}] ON [_new_{name}] "
                                 f"([{PERSON_COLUMN}])")
            conn.execute("BEGIN IMMEDIATE")
            for name, linked in built:
                conn.execute(f"DROP TABLE IF EXISTS [{name}]")
                conn.execute(f"ALTER TABLE [_new_{name}] RENAME TO [{name}]")
            conn.execute("COMMIT")
    return records


def metadata(domains: dict[str, Domain], title: str) -> dict:
    """Datasette metadata: who may see what, and the Chinese descriptions."""
    tables = {}
    for domain in domains.values():
        for table in domain.tables.values():
            tables[published_name(domain, table)] = {
                "description": table.description or f"{domain.label} · {table.label}",
                "columns": {c.label: c.description for c in table.columns.values() if c.description}
                | ({PERSON_COLUMN: "该人员在各业务库中的全部记录"} if person_column(table) else {}),
            }
    return {
        "title": title,
        "description_html": (
            "只读发布：数据由各社区每晚同步，经街道办合并。"
            f'<ul><li><a href="/{MASKED_DB}">人口数据（脱敏）</a></li>'
            '<li><a href="/-/conflicts">待处理冲突</a></li><li><a href="/-/sync">同步状态</a></li>'
            '<li><a href="/-/logout">退出登录</a></li></ul>'),
        # Signed-in staff only; the plaintext database for view-pii; SQL for admins.
        "allow": {"id": "*"},
        "databases": {
            MASKED_DB: {"title": "人口数据（脱敏）", "allow_sql": {"roles": ["admin"]}, "tables": tables},
            PLAIN_DB: {"title": "人口数据（明文，访问留痕）", "allow": {"roles": ["view-pii"]},
                       "allow_sql": {"roles": ["admin"]}, "tables": tables},
        },
    }


# ---------------------------------------------------------------- staff accounts

def users_path(store_dir) -> Path:
    return Path(store_dir) / "publish-users.json"


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def read_users(store_dir) -> dict:
    try:
        return json.loads(users_path(store_dir).read_text(encoding="utf-8"))["users"]
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError):
        raise SyncdbError(f"{users_path(store_dir)} is damaged; restore it from a backup or "
                          "delete it and add the staff accounts again with `syncdb users add`") from None


def add_user(store_dir, name: str, password: str, roles=()) -> None:
    """Add a member of staff, or set a new password and roles for one."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SyncdbError(f"'{name}' is not a usable sign-in name: letters, digits, - and _ only")
    if len(password) < 8:
        raise SyncdbError("the password must be at least 8 characters")
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise SyncdbError(f"unknown role {', '.join(sorted(unknown))}; roles are {', '.join(ROLES)}")
    office.connect(store_dir).close()  # an office store, or say so
    users = read_users(store_dir)
    salt = os.urandom(16)
    # A new epoch with every new password or roles: sessions signed in before end at their next page.
    users[name] = {"salt": salt.hex(), "hash": _hash(password, salt).hex(), "roles": sorted(set(roles)),
                   "epoch": os.urandom(8).hex(), "added": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_atomic(users_path(store_dir), json.dumps({"users": users}, ensure_ascii=False, indent=2).encode(), 0o600)


def remove_user(store_dir, name: str) -> None:
    users = read_users(store_dir)
    if name not in users:
        raise SyncdbError(f"there is no account '{name}'; see `syncdb users list`")
    del users[name]
    write_atomic(users_path(store_dir), json.dumps({"users": users}, ensure_ascii=False, indent=2).encode(), 0o600)


def check_password(store_dir, name: str, password: str) -> dict | None:
    """The actor for a correct name and password, else None."""
    user = read_users(store_dir).get(name)
    if user is None:
        _hash(password, b"\0" * 16)  # take as long as for a real account
        return None
    if not hmac.compare_digest(_hash(password, bytes.fromhex(user["salt"])), bytes.fromhex(user["hash"])):
        return None
    return {"id": name, "roles": user["roles"], "epoch": user.get("epoch", "")}


# ---------------------------------------------------------------- the page-view log

PAGE_VIEWS = """
CREATE TABLE IF NOT EXISTS page_views (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, page TEXT NOT NULL, mac BLOB NOT NULL)
"""


def log_view(store: Store, actor: str, page: str) -> None:
    """Record that ``actor`` was shown plaintext on ``page``; chained like the audit ledger."""
    conn = store.conn
    key = store.suite.derive(store.keyring.index_key, b"", b"syncdb page views")
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(PAGE_VIEWS)
        last = conn.execute("SELECT mac FROM page_views ORDER BY id DESC LIMIT 1").fetchone()
        at = time.strftime("%Y-%m-%dT%H:%M:%S")
        mac = store.suite.mac(key, (bytes(last[0]) if last else b"\0" * 32)
                              + json.dumps([at, actor, page], ensure_ascii=False).encode())
        conn.execute("INSERT INTO page_views (at, actor, page, mac) VALUES (?, ?, ?, ?)", (at, actor, page, mac))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def verify_views(store: Store) -> int:
    """Walk the page-view chain; return its length or raise naming the first bad entry.

    The sign-in lock-outs publish records beside the store are walked too, so
    ``syncdb audit verify`` vouches for everything publish logs.
    """
    from .signin import verify_lockouts

    main = store.conn.execute("PRAGMA database_list").fetchone()[2]
    if main:
        verify_lockouts(Path(main).parent, store.keyring)
    key = store.suite.derive(store.keyring.index_key, b"", b"syncdb page views")
    store.conn.execute(PAGE_VIEWS)
    previous = b"\0" * 32
    n = 0
    for entry_id, at, actor, page, mac in store.conn.execute("SELECT id, at, actor, page, mac FROM page_views ORDER BY id"):
        n += 1
        expected = store.suite.mac(key, previous + json.dumps([at, actor, page], ensure_ascii=False).encode())
        if entry_id != n or not hmac.compare_digest(expected, bytes(mac)):
            raise SyncdbError(f"page-view log entry {entry_id} was edited, deleted or reordered by hand")
        previous = bytes(mac)
    return n


# Query parameters that only shape a page; every other value (a filter, a search,
# a _where clause, _next: the sort value to continue from) may quote a sensitive
# value and is logged as its blind index.
SHAPING = {"_shape", "_size", "_sort", "_sort_desc", "_facet", "_col", "_nocol", "_labels", "_nofacet"}


def shown_page(store: Store, path: str, query: str) -> str:
    """The page as logged: the path, and each query value that could be data as its blind index."""
    from urllib.parse import parse_qsl, unquote

    from datasette.utils import tilde_decode

    parts = [f"{name}={value}" if name in SHAPING else f"{name}=#{store.blind_id(value).hex()[:12]}"
             for name, value in parse_qsl(query, keep_blank_values=True)]
    def readable(part):
        try:
            return tilde_decode(part)
        except Exception:  # not tilde-encoded after all: keep it as it came
            return part
    shown = "/".join(readable(part) for part in unquote(path).split("/"))
    return shown + ("?" + "&".join(parts) if parts else "")


# ---------------------------------------------------------------- office pages

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
    from .conflicts import _record_label

    out = []
    names = office.names(store.conn)
    for cid, tbl, key, col, kind, candidates, rule, opened in store.conn.execute(
            "SELECT id, tbl, key, col, kind, candidates, rule, opened FROM conflicts "
            "WHERE status = 'open' ORDER BY id"):
        table = store.tables.get(tbl)
        if table is None:
            continue
        column = table.columns[col]
        items = []
        for c in json.loads(candidates):
            value = c["value"]
            if column.sensitive and value is not None:
                value = store.plain(table, col, bytes.fromhex(value), key)
                value = value if plaintext else mask_value(column, value)
            items.append({"origin": office.label(c["origin"], names), "version": c["version"], "deleted": c["deleted"],
                          "value": value})
        domain = store.domains[table.domain]
        out.append({"id": cid, "table": published_name(domain, table), "record": _record_label(store, table, key),
                    "column": column.label, "kind": kind, "rule": rule, "opened": opened, "candidates": items})
    return out


def signature(store: Store) -> tuple:
    """Changes whenever a merge applied something or the queue moved: time to reload."""
    return (store.conn.execute("SELECT count(*) FROM applied").fetchone()[0],
            store.conn.execute("SELECT count(*), coalesce(max(id), 0) FROM conflicts WHERE status = 'open'").fetchone())


# ---------------------------------------------------------------- serving

def make_datasette(store_dir, secret: Secret, domains, refresh_seconds: float = 30.0, title: str | None = None,
                   session_hours: float = SESSION_HOURS):
    """A Datasette instance publishing the store; its startup decrypts into memory."""
    from datasette.app import Datasette
    from datasette.plugins import pm

    from . import datasette_plugin
    from .signin import SignIn

    if pm.get_plugin("syncdb") is None:
        pm.register(datasette_plugin, name="syncdb")
    office.connect(store_dir).close()
    if not read_users(store_dir):
        raise SyncdbError(f"{store_dir} has no staff account yet: add one with "
                          f"`syncdb users add {store_dir} NAME --role view-pii`, then publish")
    stamp = datasette_plugin.keyring_stamp(store_dir)  # before reading: a change meanwhile is seen later
    keyring = office.load_keyring(store_dir, secret)
    ds = Datasette(
        memory=False,
        metadata=metadata(domains, title or "街道办人口数据"),
        template_dir=str(Path(__file__).parent / "templates"),
        settings={"allow_download": False, "default_allow_sql": False, "default_page_size": 50},
        # A new signing key at each start: sessions end when publishing restarts, and no key is kept on disk.
        secret=os.urandom(32).hex(),
    )
    ds._syncdb = datasette_plugin.Context(Path(store_dir), keyring, domains, refresh_seconds,
                                          session_hours=session_hours, signin=SignIn(store_dir, keyring),
                                          secret=secret, keyring_stamp=stamp)
    return ds


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port as uvicorn would bind it, or one line saying why it cannot be."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise SyncdbError(f"port {port} on {host} is already in use (another syncdb serve or publish, or "
                              "another program): stop that program, or choose a free port with --port") from None
        if e.errno == errno.EACCES:
            raise SyncdbError(f"port {port} needs administrator rights on this machine; "
                              "choose a port above 1024 with --port") from None
        raise SyncdbError(f"cannot listen on {host}:{port} ({e.strerror or e}); give --host an address of this "
                          "machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    except (socket.gaierror, UnicodeError, OverflowError) as e:
        sock.close()
        raise SyncdbError(f"cannot listen on {host}:{port} ({e}); give --host an address of this machine "
                          "and --port a number from 1 to 65535") from None
    return sock


def serve(store_dir, secret: Secret, domains, host: str = "127.0.0.1", port: int = 8001,
          refresh_seconds: float = 30.0, title: str | None = None, session_hours: float = SESSION_HOURS,
          ready=None) -> None:
    """Decrypt into memory, then serve until interrupted; ``ready(url)`` once the socket listens."""
    import asyncio

    import uvicorn

    sock = bind(host, port)  # a port in use is said in one line, before any work
    try:
        ds = make_datasette(store_dir, secret, domains, refresh_seconds, title, session_hours)

        async def main():
            await ds.invoke_startup()  # decrypt before the first page, not during it
            # No access log: a query string can carry an ID number, and logs end up on disk.
            # No proxy headers: the sign-in throttle counts by the socket's peer, which a
            # client cannot choose the way it chooses an X-Forwarded-For header.
            server = uvicorn.Server(uvicorn.Config(ds.app(), host=host, port=port, log_level="info",
                                                   access_log=False, proxy_headers=False))
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            # Say where only once it answers: a browser or script told the address must not be refused.
            while not server.started and not serving.done():
                await asyncio.sleep(0.02)
            if server.started and ready:
                ready(f"http://{host}:{port}/")
            await serving
        asyncio.run(main())
    finally:
        sock.close()
