"""``syncdb publish``: the store, read-only, for the office's staff, in Datasette.

This module starts and serves the site; the other parts of publishing are:

    projection.py        the store decrypted into memory: a masked database for
                         every member of staff, a plaintext one for ``view-pii``
    pages.py             the office pages' data: sync status, open conflicts
    staff.py             staff accounts (``syncdb users``)
    signin.py            sessions held at the server, the sign-in throttle
    publishdb.py         STORE/publish.db: everything publish writes (accounts,
                         sessions, the sign-in and page-view logs), never store.db
    datasette_plugin.py  the Datasette hooks: who is asking, which page shows
                         plaintext (logged before a byte is sent), the pages

Staff sign in with a name and password (``syncdb users add``); sessions are
held at the server, end at sign-out and expire, and repeated wrong passwords
lock the account name and the address out for a while. Every page that shows
plaintext is written to the page-view log in publish.db, chained by HMAC like
the audit ledger, with filter values replaced by their blind index so the log
itself holds no plaintext.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from pathlib import Path

import uvicorn
from datasette.app import Datasette
from datasette.plugins import pm
from markupsafe import escape

from . import datasette_plugin, i18n, office, projection, staff
from .crypto import Secret
from .errors import SyncdbError
from .i18n import _, ngettext
from .signin import SignIn
from .store import open_store

SESSION_HOURS = datasette_plugin.SESSION_HOURS

# Pages over tables of a million residents (issue 14). A facet staff ask for reads an index
# (projection.facet_columns) and is given time to finish rather than a "timed out" note; a
# suggested facet is a guess Datasette makes for every column of every page, so each guess
# gives up after 5 ms: on a big table the unindexed ones time out anyway, and at 20 ms each
# their waits were two thirds of a persons page at 50,000 residents (bench/city.py at 10 x 5,000:
# masked table page p95 1,169 ms at 20 ms, 391 ms at 5 ms, plain Datasette 814-945 ms); on a
# community's filtered rows they still come. Counts are count(*), which SQLite answers from the
# narrowest index.
PAGE_SETTINGS = {"facet_time_limit_ms": 1000, "facet_suggest_time_limit_ms": 5}


def make_datasette(store_dir, secret: Secret, domains, refresh_seconds: float = 30.0, title: str | None = None,
                   session_hours: float = SESSION_HOURS) -> Datasette:
    """A Datasette instance publishing the store; its startup decrypts into memory."""
    if pm.get_plugin("syncdb") is None:
        pm.register(datasette_plugin, name="syncdb")
    stamp = datasette_plugin.keyring_stamp(store_dir)  # before reading: a change meanwhile is seen later
    keyring = office.load_keyring(store_dir, secret)
    open_store(store_dir, keyring, domains).close()  # an office store, up to date, sealed under this keyring
    if not staff.read_users(store_dir):
        raise SyncdbError(_("{store} has no staff account yet: add one with "
                            "`syncdb users add {store} NAME --role view-pii`, then publish").format(store=store_dir))
    ds = Datasette(
        memory=False,
        metadata=projection.metadata(domains, title or _("Street office population data")),
        template_dir=str(Path(__file__).parent / "templates"),
        settings={"allow_download": False, "default_allow_sql": False, "default_page_size": 50, **PAGE_SETTINGS},
        # A new signing key at each start: sessions end when publishing restarts, and no key is kept on disk.
        secret=os.urandom(32).hex(),
    )
    ds._syncdb = datasette_plugin.Context(Path(store_dir), keyring, domains, refresh_seconds,
                                          session_hours=session_hours, signin=SignIn(store_dir, keyring),
                                          secret=secret, keyring_stamp=stamp)
    return ds


# Windows sockets' own numbers for a port in use and a port refused (WinError 10048, 10013): a socket
# error there keeps them as its ``winerror``; its ``errno`` is 10048 (errno.EADDRINUSE is 10048 there too)
# and 13 (errno.EACCES, which alone would be read as "needs administrator rights").
WSAEADDRINUSE, WSAEACCES = 10048, 10013


def bind(host: str, port: int, listen: bool = False) -> socket.socket:
    """A socket bound to host:port as uvicorn would bind it, or one line saying why it cannot be.
    ``listen``: listening already (connections wait in its backlog until uvicorn takes the socket): on
    Linux a socket bound but not listening does not keep the port from another program that binds with
    SO_REUSEADDR (any asyncio server) and listens first, which uvicorn would meet as a bare OSError."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    if os.name == "posix":
        # A restart binds past the last run's connections still in TIME_WAIT. Not on Windows, as asyncio
        # does: there SO_REUSEADDR would let this socket take a port another program listens on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        if listen:
            sock.listen()
    except OSError as e:
        sock.close()
        raise not_bound(e, host, port) from None
    except (socket.gaierror, UnicodeError, OverflowError) as e:
        sock.close()
        raise SyncdbError(_("cannot listen on {host}:{port} ({why}); give --host an address of this machine "
                            "and --port a number from 1 to 65535").format(host=host, port=port, why=e)) from None
    return sock


def not_bound(e: OSError, host: str, port: int) -> SyncdbError:
    """The one line that says why ``host:port`` could not be bound, and what to do."""
    windows = getattr(e, "winerror", None)
    if e.errno == errno.EADDRINUSE or windows == WSAEADDRINUSE:
        return SyncdbError(_("port {port} on {host} is already in use (another syncdb serve or publish, or "
                             "another program): stop that program, or choose a free port with --port")
                           .format(port=port, host=host))
    if windows == WSAEACCES:
        # Windows: a port another program holds for itself alone, or one Windows keeps back (Hyper-V and
        # WSL reserve ranges of ports); no port there needs administrator rights.
        return SyncdbError(_("port {port} on {host} is reserved by Windows or held by another program; choose "
                             "another port with --port (`netsh interface ipv4 show excludedportrange "
                             "protocol=tcp` lists the reserved ones)").format(port=port, host=host))
    if e.errno == errno.EACCES:
        return SyncdbError(_("port {port} needs administrator rights on this machine; "
                             "choose a port above 1024 with --port").format(port=port))
    return SyncdbError(_("cannot listen on {host}:{port} ({why}); give --host an address of this "
                         "machine, e.g. 127.0.0.1 or 0.0.0.0").format(host=host, port=port, why=e.strerror or e))


def serve(store_dir, secret: Secret, domains, host: str = "127.0.0.1", port: int = 8001,
          refresh_seconds: float = 30.0, title: str | None = None, session_hours: float = SESSION_HOURS,
          ready=None) -> None:
    """Serve until interrupted: at once a page saying the data is being prepared (``Starting``), and
    the site once the store is decrypted into memory; ``ready(url)`` then."""
    sock = bind(host, port, listen=True)  # a port in use is said in one line, before any work; and kept
    try:
        ds = make_datasette(store_dir, secret, domains, refresh_seconds, title, session_hours)
        ctx = ds._syncdb
        site = Starting(ds.app())

        async def main():
            url = f"http://{host}:{port}/"
            # No access log: a query string can carry an ID number, and logs end up on disk.
            # No proxy headers: the sign-in throttle counts by the socket's peer, which a
            # client cannot choose the way it chooses an X-Forwarded-For header.
            # No lifespan: Datasette's app would take its start-up event for its first request and
            # build there, before the server listens; it has nothing else to do at that event.
            server = uvicorn.Server(uvicorn.Config(site, host=host, port=port, log_level="info", lifespan="off",
                                                   access_log=False, proxy_headers=False))
            i18n.translate_server_log()
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            datasette_plugin.log.info(_("decrypting the store into memory; until it is done, every page of the "
                                        "site at {url} says that the data is being prepared").format(url=url))
            starting = asyncio.create_task(ds.invoke_startup())  # the first build, before any page of data
            try:
                await asyncio.wait({serving, starting}, return_when=asyncio.FIRST_COMPLETED)
                if starting.done():
                    starting.result()  # a build that failed: the site stops, and the error is said
                    site.ready = True
                    # Say where only once it answers: a browser or script told the address must not be refused.
                    while not server.started and not serving.done():
                        await asyncio.sleep(0.02)
                    # Told to stop meanwhile (the server ends up to a tenth of a second after a signal): say nothing.
                    if server.started and not server.should_exit and ready:
                        ready(url)
                await serving
            finally:
                # Interrupted, or the start-up failed: a build or refresh under way stops at its next step
                # (Context.stop_here), where the process would otherwise wait minutes for its thread.
                ctx.stopping.set()
                server.should_exit = True
                await asyncio.gather(serving, starting, return_exceptions=True)
        asyncio.run(main())
    finally:
        sock.close()


class Starting:
    """The site as uvicorn serves it: until ``ready``, every page is a 503 saying, in the user's
    language, that the data is being prepared, which reloads itself; from then on, ``app``.

    At 1.8 million records the first build takes about two minutes. Until this, a member of staff
    opening the site then met the browser's "connection refused". The note shows no data and no
    count, and needs no sign-in; nothing reaches Datasette before the build is whole.
    """

    RELOAD_SECONDS = 5

    def __init__(self, app):
        self.app, self.ready, self.began = app, False, time.monotonic()

    async def __call__(self, scope, receive, send):
        if self.ready:
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # a websocket: Datasette has none, and nothing is served yet
            return await send({"type": "websocket.close", "code": 1013})
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"retry-after", str(self.RELOAD_SECONDS).encode())]})
        await send({"type": "http.response.body", "body": self.page().encode("utf-8")})

    def page(self) -> str:
        title, elapsed = _("The data is being prepared"), round(time.monotonic() - self.began)
        lines = [_("The site is decrypting the store into memory: about a minute for each million records."),
                 _("This page reloads itself every {seconds} seconds and shows the site once it is ready.")
                 .format(seconds=self.RELOAD_SECONDS),
                 ngettext("Started {seconds} second ago.", "Started {seconds} seconds ago.", elapsed)
                 .format(seconds=elapsed)]
        language = "zh-CN" if i18n.language() == i18n.CHINESE else "en"
        body = "".join(f"<p>{escape(line)}</p>" for line in lines)
        return (f'<!DOCTYPE html><html lang="{language}"><head><meta charset="utf-8">'
                f'<meta http-equiv="refresh" content="{self.RELOAD_SECONDS}">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{escape(title)}</title></head>"
                f'<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto; padding: 0 1em">'
                f"<h1>{escape(title)}</h1>{body}</body></html>")
