"""The Datasette plugin behind ``syncdb publish`` (see publish.py for the parts and the why).

Only hooks that Datasette 1.0 keeps are used: ``startup``, ``prepare_connection``,
``register_routes``, ``render_cell`` and ``asgi_wrapper``. Datasette's own words are put in the
user's language by the template overrides in syncdb/templates and by chrome.py (see there). The publishing context (store folder,
keyring, schemas) is handed over as ``datasette._syncdb`` by ``publish.make_datasette()``,
never through metadata, which Datasette shows at ``/-/metadata``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode

from datasette import hookimpl
from datasette.utils import baseconv, tilde_decode, tilde_encode
from datasette.utils.asgi import Request, Response
from itsdangerous import BadSignature
from markupsafe import Markup, escape

from . import checks_pages, dashboard, chrome, i18n, office, pages, projection, publishdb, signin, site_csv, staff
from .excel import register_output_renderer  # noqa: F401 (a hook: 导出 Excel on every table page)
from .crypto import Keyring, Secret
from .errors import SyncdbError
from .i18n import _, ngettext
from .store import Store, open_store

log = logging.getLogger("syncdb.publish")

SESSION_HOURS = 8
PUBLIC_PATHS = ("/-/login", "/-/static/", "/-/static-plugins/", "/favicon.ico")


class Gate:
    """Pages read while no schema change is under way; a schema change waits for the pages in flight.

    Lives on the event loop; the thread that fills the databases takes it
    through ``exclusive()``. A page that never finishes (a client that stops
    reading) must not freeze the site: the schema change waits at most
    ``patience`` seconds, then gives up until the next refresh, and the
    pages go on with the data they have.
    """

    patience = 5.0

    def __init__(self):
        self.readers = 0
        self.writer = False
        self.changed = asyncio.Condition()
        self.loop = None

    @contextlib.asynccontextmanager
    async def reading(self):
        async with self.changed:
            await self.changed.wait_for(lambda: not self.writer)
            self.readers += 1
        try:
            yield
        finally:
            async with self.changed:
                self.readers -= 1
                self.changed.notify_all()

    def serving(self) -> bool:
        """Are pages being served? Asked by the thread that fills the databases, which then gives way
        (projection.Published._give_way): a glance at the count, without the event loop's lock."""
        return self.readers > 0

    async def _take(self):
        async with self.changed:
            await self.changed.wait_for(lambda: not self.writer)
            self.writer = True  # from here no new page starts
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.readers == 0), self.patience)
            except asyncio.TimeoutError:
                self.writer = False
                self.changed.notify_all()
                raise TimeoutError(_("pages still open after {seconds} s; the new data waits for the next "
                                     "refresh").format(seconds=f"{self.patience:g}")) from None

    async def _give(self):
        async with self.changed:
            self.writer = False
            self.changed.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        """For a worker thread: hold the databases alone for a moment."""
        asyncio.run_coroutine_threadsafe(self._take(), self.loop).result()
        try:
            yield
        finally:
            asyncio.run_coroutine_threadsafe(self._give(), self.loop).result()


@dataclass
class Context:
    store_dir: Path
    keyring: Keyring
    domains: dict
    refresh_seconds: float = 30.0
    session_hours: float = SESSION_HOURS
    signature: tuple | None = None
    loaded_at: str = ""
    tasks: set = field(default_factory=set)
    writers: list = field(default_factory=list)  # connections that fill the in-memory databases
    published: projection.Published | None = None  # what they hold, and what a refresh needs
    gate: Gate = field(default_factory=Gate)
    filling: threading.Lock = field(default_factory=threading.Lock)
    signin: signin.SignIn | None = None  # sessions and the sign-in throttle (publish.db)
    secret: Secret | None = None  # to read keyring.json again when it changes
    keyring_stamp: tuple | None = None
    keyring_lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)  # publish is ending: a fill stops (Stopped)
    misses: pages.Misses = field(default_factory=pages.Misses)  # masked clerks' look-ups that found nobody
    _address_columns: set | None = None
    _household_columns: set | None = None

    def address_columns(self) -> set[tuple[str, str]]:
        """(published table, column label) of every cell holding an address code: linked to its address page."""
        if self._address_columns is None:
            self._address_columns = {(t, c) for t, c, __ in self._naming(pages.ADDRESSES)}
        return self._address_columns

    def household_columns(self) -> set[tuple[str, str]]:
        """(published table, column label) of every cell holding a 户号: linked to its household page (never a
        sensitive one: the household page is addressed by the 户号 itself)."""
        if self._household_columns is None:
            self._household_columns = {(t, c) for t, c, sensitive in self._naming(pages.HOUSEHOLDS) if not sensitive}
        return self._household_columns

    def _naming(self, target: str) -> set[tuple[str, str, bool]]:
        """(published table, column label, sensitive) of the columns naming a record of ``target``, its own
        key included."""
        return {(projection.published_name(self.domains[t.domain], t), c.label, c.sensitive)
                for t in (t for d in self.domains.values() for t in d.tables.values())
                for c in t.columns.values()
                if c.references == target or (t.qualified == target and c.name in t.key)}

    def stop_here(self) -> None:
        """Raise Stopped once publish is ending (``stopping``): a build or refresh asks between its steps."""
        if self.stopping.is_set():
            raise Stopped()

    def store(self) -> Store:
        """The store, read-only, on a connection of its own for the calling thread."""
        return open_store(self.store_dir, self.current_keyring(), self.domains)

    def current_keyring(self) -> Keyring:
        """The keyring as keyring.json holds it now: `keys rotate` adds a data key while publish runs,
        and the values it re-seals can only be opened with the keyring read again."""
        stamp = keyring_stamp(self.store_dir)
        if self.secret is None or stamp is None or stamp == self.keyring_stamp:
            return self.keyring
        with self.keyring_lock:
            if stamp != self.keyring_stamp:
                self.keyring_stamp = stamp  # tried once per change of the file, not at every page
                try:
                    ring = office.load_keyring(self.store_dir, self.secret)
                    if ring.public.id != self.keyring.public.id or ring.index_key != self.keyring.index_key:
                        raise SyncdbError(_("it is office {code}'s keyring (key {key}), not this store's "
                                            "(key {own})").format(code=ring.public.code, key=ring.public.id,
                                                                  own=self.keyring.public.id))
                except SyncdbError as e:
                    log.error(_("keyring.json in {store} changed but cannot be used ({why}); publishing goes on "
                                "with the keyring read before: put back the store's own keyring.json")
                              .format(store=self.store_dir, why=e))
                else:
                    self.keyring = ring
                    log.info(_("keyring.json changed: read it again (current data key {key})")
                             .format(key=ring.data_key_id))
        return self.keyring


def keyring_stamp(store_dir) -> tuple | None:
    """What changes whenever keyring.json is written (it is replaced whole, see files.write_atomic)."""
    try:
        st = office.keyring_path(store_dir).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _context(datasette) -> Context:
    return datasette._syncdb


# ---------------------------------------------------------------- loading the in-memory databases

def _fill(ctx: Context) -> tuple[tuple, int, bool]:
    """Bring the in-memory databases up to the store (in a worker thread, one at a time):
    (signature, records decrypted, whether it was a full build)."""
    with ctx.filling:
        if ctx.published is None:
            # Kept open for the life of the process: a shared in-memory database
            # lives only while some connection to it is open.
            writers = [sqlite3.connect(projection.memory_uri(name), uri=True, isolation_level=None,
                                       check_same_thread=False)
                       for name in (projection.MASKED_DB, projection.PLAIN_DB)]
            for conn in writers:
                projection.prepare_database(conn)
                # A build ends by indexing its tables, statements of seconds each at a million records
                # with no chunk between them: publish stopped then gives up the statement under way
                # ("interrupted") rather than waiting for every index (Stopped below).
                conn.set_progress_handler(ctx.stopping.is_set, STOP_STEPS)
            ctx.writers, ctx.published = writers, projection.Published(*writers, serving=ctx.gate.serving)
        with ctx.store() as store, _pages_first():
            signature = projection.signature(store)
            # Whole also when the store was put back from a backup: every record is published again, and
            # "refreshed N changed records" would count them all as changed by a night.
            try:
                records = ctx.published.update(store, exclusive=ctx.gate.exclusive,
                                               progress=FillProgress(PROGRESS_SECONDS), stop=ctx.stop_here)
            except sqlite3.OperationalError:
                if ctx.stopping.is_set():
                    raise Stopped() from None
                raise
            return signature, records, ctx.published.built


STOP_STEPS = 1_000_000  # SQLite steps between two looks at whether publish is stopping (tens of milliseconds)


PROGRESS_SECONDS = 10.0  # a build's or a refresh's progress is logged at most this often


class Stopped(Exception):
    """Publish is ending (interrupted, or its start-up failed): the build or refresh under way stops at its
    next step (a chunk, a batch, a ledger entry read: ``Context.stop_here``) or within the statement under
    way (``STOP_STEPS``), rolled back as any fault of it is (``projection.Published.update``). Its worker
    thread cannot be killed, and the process waits for it before exiting: at 1.8 million records a
    build takes minutes."""


class FillProgress:
    """A build's or a refresh's progress in the log (``projection.Published.update``'s ``progress``),
    at most every ``seconds``, and the indexing at the end of a build always. At 1.8 million records
    a build takes minutes, and until the first is done every page says the data is being prepared
    (publish.Starting); a refresh after communities' first loads re-reads as many records, while its
    pages answer. A fill shorter than ``seconds`` logs nothing of its progress."""

    def __init__(self, seconds: float):
        self.seconds, self.last = seconds, time.monotonic()

    def __call__(self, records: int, table: str | None, total: int | None = None) -> None:
        now = time.monotonic()
        if table is not None and now - self.last < self.seconds:
            return
        self.last = now
        if table is None:
            log.info(ngettext("decrypted {count} record; indexing it", "decrypted {count} records; indexing them",
                              records).format(count=records))
        elif total is None:
            log.info(ngettext("decrypting the store for publishing: {count} record so far, now {table}",
                              "decrypting the store for publishing: {count} records so far, now {table}",
                              records).format(count=records, table=table))
        else:
            log.info(ngettext("refreshing the published data: {count} of {total} changed record so far, now {table}",
                              "refreshing the published data: {count} of {total} changed records so far, now {table}",
                              total).format(count=records, total=total, table=table))


FILL_SWITCH_SECONDS = 0.0005  # the interpreter's switch interval while a build or refresh runs


@contextlib.contextmanager
def _pages_first():
    """While the databases are filled, hand the interpreter lock to a waiting page thread sooner.

    The filling thread decrypts and masks in Python; a page's thread that comes back from SQLite
    (a count, a facet, each template) waits for the lock up to the switch interval, 5 ms by
    default, at each of its many returns (bench/refresh_pages.py at 10 x 5,000: the slowest page during a
    refresh 1.54x its time outside at 5 ms, 1.38x at 0.5 ms). The interval is the process's: it is put
    back when the fill ends.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, FILL_SWITCH_SECONDS))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


async def reload(datasette) -> None:
    ctx = _context(datasette)
    ctx.gate.loop = asyncio.get_running_loop()
    for name in (projection.MASKED_DB, projection.PLAIN_DB):
        if name not in datasette.databases:
            datasette.add_memory_database(name)
    signature, records, whole = await asyncio.to_thread(_fill, ctx)
    ctx.signature = signature
    ctx.loaded_at = time.strftime("%Y-%m-%d %H:%M:%S")
    if whole:
        log.info(ngettext("published {count} record from {store}", "published {count} records from {store}",
                          records).format(count=records, store=ctx.store_dir))
    else:
        log.info(ngettext("refreshed {count} changed record from {store}",
                          "refreshed {count} changed records from {store}", records)
                 .format(count=records, store=ctx.store_dir))


async def _follow_merges(datasette) -> None:
    """Reload after each merge; a failure is logged and tried again at the next tick."""
    ctx = _context(datasette)
    while True:
        await asyncio.sleep(ctx.refresh_seconds)
        try:
            signature = await asyncio.to_thread(_signature, ctx)
            if signature != ctx.signature:
                await reload(datasette)
        except Exception:
            if ctx.stopping.is_set():
                return  # publish is ending: the refresh was stopped, not failed
            log.exception(_("reloading the published data failed; the pages show the data loaded at {time}")
                          .format(time=ctx.loaded_at))


def _signature(ctx: Context) -> tuple:
    with ctx.store() as store:
        return projection.signature(store)


def speak_the_users_language(datasette) -> None:
    """Templates say `{{ _("Sign in") }}` (and `{% trans %}`) through syncdb's own catalogue (i18n.py)."""
    env = datasette.jinja_env
    if "jinja2.ext.InternationalizationExtension" not in env.extensions:
        env.add_extension("jinja2.ext.i18n")
    env.install_gettext_callables(i18n._, i18n.ngettext, newstyle=True)
    env.globals["syncdb_language"] = i18n.language()
    # Datasette's own words: its blocks' HTML (chrome.translate), the table's description line, its errors.
    env.filters["syncdb_chrome"] = chrome.translate
    env.globals["syncdb_describe_table"] = chrome.describe_table
    env.globals["syncdb_error_text"] = chrome.error_text
    env.globals["syncdb_person_column"] = projection.PERSON_COLUMN


@hookimpl
def startup(datasette):
    if getattr(datasette, "_syncdb", None) is None:
        return None
    speak_the_users_language(datasette)
    projection.limit_heaps()  # before the threads that fill and read the databases start

    async def inner():
        if "_memory" in datasette.databases:
            datasette.remove_database("_memory")  # Datasette's empty default: nothing to publish there
        await reload(datasette)
        task = asyncio.get_running_loop().create_task(_follow_merges(datasette))
        _context(datasette).tasks.add(task)
    return inner


# ---------------------------------------------------------------- who is asking

def _session(datasette, request: Request) -> tuple[dict, str] | None:
    """(actor, session id) from the signed ds_actor cookie, honouring its expiry, as Datasette does."""
    cookie = request.cookies.get("ds_actor")
    if not cookie:
        return None
    try:
        decoded = datasette.unsign(cookie, "actor")
    except BadSignature:
        return None
    if not isinstance(decoded, dict) or not isinstance(decoded.get("a"), dict) or not decoded.get("s"):
        return None
    expires = decoded.get("e")
    if not expires or time.time() > baseconv.base62.decode(expires):
        return None  # our sessions always carry an expiry
    return decoded["a"], str(decoded["s"])


def actor_of(datasette, request: Request) -> dict | None:
    """The signed-in actor: a valid cookie whose session is still open at the server."""
    found = _session(datasette, request)
    if found is None:
        return None
    actor, sid = found
    # A copied cookie is worth nothing once its session is signed out.
    if _context(datasette).signin.session_account(sid) != actor.get("id"):
        return None
    # An account removed (or its roles changed) counts from the next page on, not the next sign-in.
    user = staff.account(_context(datasette).store_dir, str(actor.get("id")))
    if user is None or user["roles"] != actor.get("roles") or user.get("epoch", "") != actor.get("epoch"):
        return None
    return actor


def sees_plaintext(actor: dict | None) -> bool:
    return bool(actor) and "view-pii" in (actor.get("roles") or [])


MASKED_PAGES = ("/-/login", "/-/logout", "/-/sync", "/-/dashboard", "/-/static/", "/-/static-plugins/", "/-/actor",
                "/-/databases", "/-/metadata", "/-/versions", "/-/plugins", "/-/settings", "/favicon.ico",
                "/-/lookup")  # the look-up logs itself, for every role, with what was looked up


def _shows_plaintext(path: str, actor) -> bool:
    """Fail closed: for someone who may see plaintext, every page is logged unless it is
    known to show none — however its address is spelled (Datasette tilde-decodes names)."""
    if not sees_plaintext(actor):
        return False  # permissions keep the plaintext database from them
    if path == "/" or path.startswith(MASKED_PAGES):
        return False
    first = re.sub(r"\.\w+$", "", path.split("/")[1])
    try:
        first = tilde_decode(first)
    except Exception:
        return True
    return first != projection.MASKED_DB


@hookimpl
def asgi_wrapper(datasette):
    def wrap(app):
        async def guarded(scope, receive, send):
            if scope["type"] != "http" or getattr(datasette, "_syncdb", None) is None:
                return await app(scope, receive, send)
            if _too_big(scope):  # before anyone reads it (Datasette's CSRF check reads a whole body)
                return await Response.text(_("This request is too large: the site's forms take at most {size} KB.")
                                           .format(size=MOST_BODY // 1024), status=413).asgi_send(send)
            scope = _tilde_path(scope)
            path = scope["path"]
            request = Request(scope, receive)
            actor = actor_of(datasette, request)
            if path == TABLE_JS:
                return await _table_js().asgi_send(send)
            if actor is None and not path.startswith(PUBLIC_PATHS):
                target = path + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
                response = Response.redirect("/-/login?" + urlencode({"next": target}))
                return await response.asgi_send(send)
            if path.rstrip("/") in DEBUG_PAGES:
                return await _not_found(datasette, request, send)
            csv_of = site_csv.table_of(path)
            if csv_of is not None:  # a published table's CSV leaves as `syncdb export` writes it, for Excel
                scope, send = site_csv.for_excel(scope, send, datasette._syncdb.domains, *csv_of)
            if not _reads_published(path):
                return await _serve(datasette, app, scope, receive, send, path, actor)
            async with _context(datasette).gate.reading():
                return await _serve(datasette, app, scope, receive, send, path, actor)
        return guarded
    return wrap


TABLE_JS = "/-/static/table.js"
# The site's forms (sign-in, look-up, sign-out) are a few hundred bytes. Datasette reads a request's body
# whole into memory, the sign-in form's before anyone is signed in: a bigger one is refused unread.
MOST_BODY = 64 * 1024


def _too_big(scope: dict) -> bool:
    """A body longer than MOST_BODY, or one sent without saying how long (chunked): refused unread."""
    headers = dict(scope.get("headers") or ())
    length = headers.get(b"content-length")
    if length is None:
        return b"transfer-encoding" in headers
    return not length.strip().isdigit() or int(length) > MOST_BODY
# Datasette's pages for developers: nothing a member of staff needs (and /-/messages would let anyone
# put words on someone else's next page), so they are not served.
DEBUG_PAGES = ("/-/patterns", "/-/messages", "/-/allow-debug")
_script: Response | None = None


def _table_js() -> Response:
    """Datasette's table.js (the column menu) with its words in the user's language, made once."""
    global _script
    if _script is None:
        source, missing = chrome.table_js(chrome.datasette_static("table.js").read_text(encoding="utf-8"))
        if missing:
            log.warning(_("Datasette's table.js no longer has {pieces}: those words stay in English")
                        .format(pieces=", ".join(missing)))
        _script = Response(source, content_type="application/javascript; charset=utf-8")
    return _script


async def _not_found(datasette, request: Request, send) -> None:
    html = await datasette.render_template("error.html", {"status": 404, "error": "404", "title": None},
                                           request=request)
    await Response.html(html, status=404).asgi_send(send)


def _tilde_path(scope: dict) -> dict:
    """``/renkou/户籍_人员.json`` as Datasette's own ``/renkou/~E6~88~B7…~98.json``.

    Datasette answers a table name typed plainly (a browser sends it %-encoded)
    with a redirect to its tilde-encoded form, but takes a ".json" or ".csv"
    for part of the name, so the data of every Chinese-named table would be a
    404 at the address a person writes. Names with a dot are not published.
    """
    raw = (scope.get("raw_path") or scope["path"].encode("utf-8")).partition(b"?")[0].decode("latin-1")
    if "%" not in raw or raw.startswith("/-/"):
        return scope
    segments = raw.split("/")
    for i, segment in enumerate(segments):
        if "%" not in segment:
            continue
        name, ext = unquote(segment), ""
        found = re.fullmatch(r"(.+)(\.(?:json|csv|xlsx))", name) if i == len(segments) - 1 else None
        if found:
            name, ext = found.groups()
        segments[i] = tilde_encode(name) + ext
    path = "/".join(segments)
    return dict(scope, path=path, raw_path=path.encode("ascii"))


def _reads_published(path: str) -> bool:
    """Does this page query the in-memory databases? (Sign-in, sync status and conflicts read none.)"""
    return not path.startswith("/-/") or path.startswith(("/-/person/", "/-/address/", "/-/dashboard",
                                                          "/-/household/", "/-/lookup"))


async def _serve(datasette, app, scope, receive, send, path, actor):
    """Serve a signed-in request; a page showing plaintext goes on record before a byte is sent."""
    if not _shows_plaintext(path, actor):
        return await app(scope, receive, send)
    refused = False

    async def logged_first(message):
        # If the view cannot be recorded, it is not shown.
        nonlocal refused
        if refused:
            return
        if message["type"] == "http.response.start" and message["status"] == 200:
            try:
                await asyncio.to_thread(_log_view, _context(datasette), actor["id"], path,
                                        scope.get("query_string", b"").decode("latin-1"))
            except Exception:
                log.exception(_("could not record a view of plaintext by {account}; the page was not shown")
                              .format(account=actor["id"]))
                refused = True
                response = Response.text(_("This view could not be written to the page-view log, so it was "
                                           "not shown. Please contact the data administrator."), status=503)
                return await response.asgi_send(send)
        await send(message)
    await app(scope, receive, logged_first)


def _log_view(ctx: Context, actor: str, path: str, query: str) -> None:
    with ctx.store() as store:
        page = shown_page(store, path, query)
    publishdb.log_view(ctx.store_dir, store.keyring, actor, page)


# Query parameters that only shape a page; every other value (a filter, a search,
# a _where clause, _next: the sort value to continue from) may quote a sensitive
# value and is logged as its blind index.
SHAPING = {"_shape", "_size", "_sort", "_sort_desc", "_facet", "_col", "_nocol", "_labels", "_nofacet"}


def shown_page(store: Store, path: str, query: str) -> str:
    """The page as logged: the path, and each query value that could be data as its blind index."""
    parts = [f"{name}={value}" if name in SHAPING else f"{name}=#{store.blind_id(value).hex()[:12]}"
             for name, value in parse_qsl(query, keep_blank_values=True)]

    def readable(part):
        try:
            return tilde_decode(part)
        except Exception:  # not tilde-encoded after all: keep it as it came
            return part
    shown = "/".join(readable(part) for part in unquote(path).split("/"))
    return shown + ("?" + "&".join(parts) if parts else "")


# ---------------------------------------------------------------- pages

def _safe_next(value: str | None) -> str:
    # Only a path on this site: never an open redirect (browsers read /\host and //host as another site).
    if not value or not value.startswith("/") or value.startswith("//"):
        return "/"
    if any(c == "\\" or ord(c) < 32 or c.isspace() for c in value):
        return "/"
    return value


def _peer(request: Request) -> str:
    """The client's address as the socket has it (publish trusts no proxy header)."""
    client = request.scope.get("client")
    return str(client[0]) if client else ""


async def login(datasette, request):
    ctx = _context(datasette)
    error = None
    status = 200
    headers = {}
    next_path = _safe_next(request.args.get("next"))
    if request.method == "POST":
        if "ds_csrftoken" not in request.cookies:
            # Datasette checks the form's token only against a cookie; a cross-site form
            # sends none, so without one the sign-in is refused.
            return Response.html(escape(_("Open the sign-in page again, then sign in.")), status=403)
        form = await request.post_vars()
        next_path = _safe_next(form.get("next"))
        name = form.get("username", "")
        attempt = await asyncio.to_thread(ctx.signin.admit, name, _peer(request))
        if attempt.wait:
            # The same words whether the account exists or not; the password is not even checked.
            error = _("Too many failed sign-ins: try again in {wait}.").format(wait=signin.wait_text(attempt.wait))
            status, headers = 429, {"Retry-After": str(math.ceil(attempt.wait))}
        else:
            actor = await asyncio.to_thread(staff.check_password, ctx.store_dir, name, form.get("password", ""))
            if actor:
                return await _signed_in(datasette, ctx, attempt, actor, next_path)
            error, status = await _failed(ctx, attempt, name), 403
    html = await datasette.render_template("syncdb_login.html", {
        "error": error, "next": next_path, "hours": f"{ctx.session_hours:g}"}, request=request)
    return Response.html(html, status=status, headers=headers)


async def _signed_in(datasette, ctx: Context, attempt, actor: dict, next_path: str) -> Response:
    expires = time.time() + ctx.session_hours * 3600

    def record():
        ctx.signin.succeeded(attempt)
        return ctx.signin.start_session(actor["id"], expires)
    sid = await asyncio.to_thread(record)
    response = Response.redirect(next_path)
    cookie = {"a": actor, "e": baseconv.base62.encode(int(expires)), "s": sid}
    response.set_cookie("ds_actor", datasette.sign(cookie, "actor"), httponly=True, samesite="lax")
    log.info(_("{account} signed in").format(account=actor["id"]))
    return response


async def _failed(ctx: Context, attempt, name: str) -> str:
    """Record a wrong password; log any lock-out it causes; the words for the page."""
    # Only a real account's name is written: a name typed by mistake may be anything.
    known = name if await asyncio.to_thread(staff.account, ctx.store_dir, name) else ""
    lockouts = await asyncio.to_thread(ctx.signin.failed, attempt, known)
    for lockout in lockouts:
        log.warning(_lockout_line(lockout))
    await asyncio.sleep(1)  # slow down guessing, without holding up anyone else's page
    if lockouts:
        return _("Wrong name or password. Too many failed tries: try again in {wait}.").format(
            wait=signin.wait_text(max(lockout.seconds for lockout in lockouts)))
    return _("Wrong name or password.")


def _lockout_line(lockout) -> str:
    """The log's line for a lock-out: whom it locks, for how long, after how many tries."""
    if lockout.kind == "account" and lockout.account:
        who = _("account {name}").format(name=lockout.account)
    elif lockout.kind == "account":
        who = _("an unknown account name")
    else:
        who = _("address {address}").format(address=lockout.address)
    return _("sign-in locked for {seconds} s: {who} after {failures} failed tries (the last from {address})").format(
        seconds=lockout.seconds, who=who, failures=lockout.failures,
        address=lockout.address or _("an unknown address"))


async def logout(datasette, request):
    """Sign out: the session ends at the server, so a copy of the cookie is worthless from now on."""
    if request.method == "POST":
        found = _session(datasette, request)
        if found is not None:
            await asyncio.to_thread(_context(datasette).signin.end_session, found[1])
            log.info(_("{account} signed out").format(account=found[0].get("id")))
        response = Response.redirect("/-/login")
        response.set_cookie("ds_actor", "", expires=0, max_age=0)
        return response
    html = await datasette.render_template("syncdb_logout.html", {
        "actor": actor_of(datasette, request)}, request=request)
    return Response.html(html)


async def person(datasette, request):
    """Everything about one person: each domain's records, where they live, their household with its
    members, the open conflicts on their records, and (once the checks exist) their open cases."""
    token = projection.read_person_token(request.url_vars["token"])
    actor = actor_of(datasette, request)
    plain = sees_plaintext(actor)
    ctx = _context(datasette)
    db = datasette.get_database(projection.PLAIN_DB if plain else projection.MASKED_DB)
    sections = []
    for name in await db.table_names() if token is not None else ():
        columns = [c for c in await db.table_columns(name)]
        if projection.PERSON_COLUMN not in columns:
            continue
        result = await db.execute(f"SELECT * FROM [{name}] WHERE [{projection.PERSON_COLUMN}] = ?", [token])
        rows = [dict(r) for r in result.rows]
        if rows:
            shown = [c for c in columns if c != projection.PERSON_COLUMN]
            # Codes read as words here as on the table pages (2 女性, 10 住宅); code_cell knows the masked database.
            cells = [[projection.code_cell(ctx.domains, db.name, name, c, r[c]) or r[c] for c in shown] for r in rows]
            sections.append({"table": name, "columns": shown, "rows": cells,
                             "url": datasette.urls.table(db.name, name) + "?"
                             + urlencode({projection.PERSON_COLUMN: token})})
    about = {"places": [], "households": [], "conflicts": [], "cases": None}
    if sections:
        about = await _about_person(datasette, ctx, db, token, plain)
    html = await datasette.render_template("syncdb_person.html", dict(
        about, sections=sections, plaintext=plain, token=token, **_printed(datasette, actor, plain)),
        request=request)
    return Response.html(html, status=200 if sections else 404, headers=PRIVATE)


async def person_by_index(datasette, request):
    """The person page's address of earlier releases, the blind index of the ID number as 32 hex
    characters (in bookmarks, and in the page-view log's entries from before): sent on to the
    person's number it gives, whose first 63 bits it is (projection.person_token)."""
    token = projection.person_token(bytes.fromhex(request.url_vars["index"]))
    return Response.redirect(f"/-/person/{token}", status=301)


async def _about_person(datasette, ctx: Context, db, token: int, plain: bool) -> dict:
    """The person page beyond each domain's records: places, households, open conflicts and cases."""
    places = await db.execute_fn(lambda conn: pages.person_places(conn, ctx.domains, token))
    households = await db.execute_fn(lambda conn: pages.person_households(conn, ctx.domains, token))
    # The records' natural keys stay in memory: the store finds conflicts by their blind keys.
    keys = await datasette.get_database(projection.PLAIN_DB).execute_fn(
        lambda conn: pages.person_keys(conn, ctx.domains, token))

    def read():
        with ctx.store() as store:
            return pages.person_conflicts(store, keys, plain), pages.person_cases(store, keys, plain)
    conflicts_found, cases = await asyncio.to_thread(read)
    return {"places": places, "households": households, "conflicts": conflicts_found, "cases": cases}


def _printed(datasette, actor, plain: bool) -> dict:
    """What a printed page carries on every sheet: the office, when, and masked or whose plaintext it is."""
    office_name = datasette.metadata("title") or ""
    printed_at = time.strftime("%Y-%m-%d %H:%M")
    viewer = str((actor or {}).get("id", ""))
    mark = i18n._("Plaintext, viewed by {viewer}").format(viewer=viewer) if plain else \
        i18n._("Masked, printed by {viewer}").format(viewer=viewer)
    when = i18n._("Printed {time}").format(time=printed_at)
    return {"office": office_name, "printed_at": printed_at, "viewer": viewer, "print_mark": mark,
            # Escaped by css_string for a <style> element, where HTML escaping would not be undone.
            "print_marks": {"office": Markup(pages.css_string(office_name)), "mark": Markup(pages.css_string(mark)),
                            "time": Markup(pages.css_string(when))}}


# The person, household and look-up pages may hold plaintext: no browser keeps them in its cache on disk.
PRIVATE = {"Cache-Control": "no-store"}


async def household(datasette, request):
    """One household (户): its record, its address, its members with the head marked."""
    number = request.url_vars["number"]
    actor = actor_of(datasette, request)
    plain = sees_plaintext(actor)
    ctx = _context(datasette)
    db = datasette.get_database(projection.PLAIN_DB if plain else projection.MASKED_DB)
    found = await db.execute_fn(lambda conn: pages.household_page(conn, ctx.domains, number))
    html = await datasette.render_template("syncdb_household.html", dict(
        household=found, plaintext=plain, number=number, **_printed(datasette, actor, plain)), request=request)
    return Response.html(html, status=200 if found else 404, headers=PRIVATE)


async def lookup(datasette, request):
    """The search box's answer: a full ID number goes to the person page, a full name lists the people
    of that name; part of either only for view-pii. Every look-up, by any role, is in the page-view log
    (as its blind index) before the answer is sent. The form posts, so no ID number or name is ever in
    an address the browser keeps in its history."""
    actor = actor_of(datasette, request)
    plain = sees_plaintext(actor)
    if request.method != "POST":
        return await _lookup_answer(datasette, request, plain, pages.Query("empty", ""), [], 200)
    query = pages.read_query((await request.post_vars()).get("q", ""), plaintext=plain)
    if query.kind == "empty":
        return await _lookup_answer(datasette, request, plain, query, [], 200)
    ctx = _context(datasette)
    try:
        token = await asyncio.to_thread(_log_lookup, ctx, actor["id"], query)
    except Exception:
        log.exception("could not record a look-up by %s; it was not answered", actor["id"])
        return Response.text(i18n._("This look-up could not be written to the page-view log, so it was not "
                                    "answered. Please contact the data administrator."), status=503)
    if query.kind == "refused":
        return await _lookup_answer(datasette, request, plain, query, [], 403)
    # Checked before anything is found: an answer, even "found", would confirm a guess.
    wait = 0.0 if plain else ctx.misses.wait(actor["id"])
    if wait:
        return await _lookup_answer(datasette, request, plain, pages.Query("refused", query.text, "guessing"),
                                    [], 429, wait=signin.wait_text(wait))
    db = datasette.get_database(projection.PLAIN_DB if plain else projection.MASKED_DB)
    if query.kind == "id":
        if await db.execute_fn(lambda conn: pages.person_known(conn, ctx.domains, token)):
            return Response.redirect(f"/-/person/{token}", status=303)
        _missed(ctx, actor, plain)
        return await _lookup_answer(datasette, request, plain, query, [], 404)
    tokens = await datasette.get_database(projection.PLAIN_DB).execute_fn(
        lambda conn: pages.find_people(conn, ctx.domains, query))
    groups = await db.execute_fn(lambda conn: pages.found_people(conn, ctx.domains, tokens)) if tokens else []
    if not groups:
        _missed(ctx, actor, plain)
    return await _lookup_answer(datasette, request, plain, query, groups, 200 if groups else 404,
                                more=len(tokens) > pages.MOST_FOUND)


def _missed(ctx: Context, actor: dict, plain: bool) -> None:
    """A masked clerk's look-up found nobody: counted, and the log says so when it is one too many."""
    if plain:
        return  # view-pii sees the plaintext anyway: nothing to guess
    count = ctx.misses.missed(actor["id"])
    if count >= ctx.misses.most:
        log.warning(_("{count} look-ups by {account} found nobody within {minutes} minutes: their look-ups wait "
                      "(someone may be guessing ID numbers or names that are masked)").format(
                          count=count, account=actor["id"], minutes=f"{ctx.misses.window / 60:g}"))


def _log_lookup(ctx: Context, actor: str, query) -> int:
    """Write the look-up to the page-view log as its blind index; return the person's number it gives."""
    with ctx.store() as store:
        page = shown_page(store, "/-/lookup", urlencode({query.kind: query.text}))
        token = projection.person_token(store.blind_id(query.text))
    publishdb.log_view(ctx.store_dir, store.keyring, actor, page)
    return token


async def _lookup_answer(datasette, request, plain: bool, query, groups: list, status: int, more=False, wait=""):
    # Only what the clerk may see of the query is shown back: a name or part of one is plaintext.
    html = await datasette.render_template("syncdb_lookup.html", {
        "query": query, "groups": groups, "plaintext": plain, "more": more, "most": pages.MOST_FOUND, "wait": wait,
        "syncdb_typed": query.text if plain or query.kind == "name" else ""}, request=request)
    return Response.html(html, status=status, headers=PRIVATE)


async def address(datasette, request):
    """One standard address: its grid, the houses on it and who lives there, each linked to their person page."""
    code = request.url_vars["code"]
    plain = sees_plaintext(actor_of(datasette, request))
    db = datasette.get_database(projection.PLAIN_DB if plain else projection.MASKED_DB)
    place = await db.execute_fn(lambda conn: pages.address_page(conn, _context(datasette).domains, code))
    html = await datasette.render_template("syncdb_address.html", {
        "place": place, "plaintext": plain, "code": code}, request=request)
    return Response.html(html, status=200 if place else 404)


async def sync(datasette, request):
    ctx = _context(datasette)

    def read():
        with ctx.store() as store:
            return pages.sync_status(store, ctx.store_dir), pages.refusals(ctx.store_dir)
    rows, refused = await asyncio.to_thread(read)
    html = await datasette.render_template("syncdb_sync.html", {
        "rows": rows, "refused": refused, "unverified": [r for r in refused if not r["origin"]],
        "loaded_at": ctx.loaded_at}, request=request)
    return Response.html(html)


async def conflicts(datasette, request):
    ctx = _context(datasette)
    plain = sees_plaintext(actor_of(datasette, request))

    def read():
        with ctx.store() as store:
            return pages.open_conflicts(store, plaintext=plain)
    items = await asyncio.to_thread(read)
    html = await datasette.render_template("syncdb_conflicts.html", {
        "items": items, "plaintext": plain}, request=request)
    return Response.html(html)


async def dashboard_page(datasette, request):
    """看板: counts per community for every role (no person's values on it), from the masked database."""
    ctx = _context(datasette)
    board = await dashboard.board(datasette, datasette.get_database(projection.MASKED_DB), ctx.store,
                                  ctx.store_dir, ctx.domains, (ctx.signature, ctx.loaded_at))
    html = await datasette.render_template("syncdb_dashboard.html", {
        "board": board, "loaded_at": ctx.loaded_at, "days": dashboard.RECENT_DAYS}, request=request)
    return Response.html(html)


async def checks_index(datasette, request):
    """核查: every check with its open and confirmed cases per community (counts only)."""
    ctx = _context(datasette)

    def read():
        with ctx.store() as store:
            return checks_pages.overview(store)
    found = await asyncio.to_thread(read)
    html = await datasette.render_template("syncdb_checks.html", {"overview": found}, request=request)
    return Response.html(html)


async def check_cases(datasette, request):
    """One check's cases, masked or plaintext by role (view-pii's view logged by _serve before it is sent);
    read-only: the state of a case is changed with `syncdb checks confirm|dismiss`."""
    ctx = _context(datasette)
    plain = sees_plaintext(actor_of(datasette, request))
    state = request.args.get("state") or "active"
    state = state if state in checks_pages.STATES else "active"
    community = request.args.get("community") or None
    number = request.args.get("page") or ""
    page = int(number) if number.isascii() and number.isdigit() else 1  # "²" is a digit int() refuses

    def read():
        with ctx.store() as store:
            return checks_pages.check_page(store, request.url_vars["name"], plain, state, community, page)
    found = await asyncio.to_thread(read)
    html = await datasette.render_template("syncdb_check.html", {
        "check": found, "name": request.url_vars["name"], "plaintext": plain, "state": state,
        "states": {k: _(v) for k, v in checks_pages.STATES.items()}, "community": community or ""}, request=request)
    return Response.html(html, status=200 if found else 404, headers=PRIVATE)


@hookimpl
def register_routes(datasette):
    if getattr(datasette, "_syncdb", None) is None:
        return []
    return [
        (r"^/-/login$", login),
        (r"^/-/logout$", logout),
        (r"^/-/person/(?P<token>[0-9]{1,19})$", person),
        (r"^/-/person/(?P<index>[0-9a-f]{32})$", person_by_index),
        (r"^/-/address/(?P<code>[0-9A-Za-z]{1,40})$", address),
        (r"^/-/household/(?P<number>[0-9A-Za-z_-]{1,40})$", household),
        (r"^/-/lookup$", lookup),
        (r"^/-/sync$", sync),
        (r"^/-/conflicts$", conflicts),
        (r"^/-/dashboard$", dashboard_page),
        (r"^/-/checks$", checks_index),
        (r"^/-/checks/(?P<name>[0-9A-Za-z_]{1,60})$", check_cases),
    ]


@hookimpl
def prepare_connection(conn, database, datasette):
    if getattr(datasette, "_syncdb", None) is not None and database in (projection.MASKED_DB, projection.PLAIN_DB):
        # A big sort spills to temporary files unless told otherwise: plaintext on a disk.
        conn.execute("PRAGMA temp_store = MEMORY")
        # A refresh writes the tables in place in short transactions; in a shared cache a page
        # would otherwise fail with "table is locked" meanwhile (it sees the old or new row).
        conn.execute("PRAGMA read_uncommitted = 1")


@hookimpl
def render_cell(value, column, table, database, datasette):
    if column == projection.PERSON_COLUMN and value.__class__ is int:
        words = _("View")  # (not inside the f-string, where the catalogue's extraction cannot see it)
        return Markup(f'<a href="/-/person/{escape(value)}">{escape(words)}</a>')
    ctx = getattr(datasette, "_syncdb", None)
    if ctx is not None and (word := projection.code_cell(ctx.domains, database, table, column, value)):
        return word  # a code as a person reads it: 2 女性, 正常
    if ctx is not None and database in (projection.MASKED_DB, projection.PLAIN_DB) and value \
            and (table, column) in ctx.address_columns() and re.fullmatch(r"[0-9A-Za-z]{1,40}", str(value)):
        return Markup(f'<a href="/-/address/{escape(value)}">{escape(value)}</a>')
    if ctx is not None and database in (projection.MASKED_DB, projection.PLAIN_DB) and value \
            and (table, column) in ctx.household_columns() and re.fullmatch(r"[0-9A-Za-z_-]{1,40}", str(value)):
        return Markup(f'<a href="/-/household/{escape(value)}">{escape(value)}</a>')
    return None
