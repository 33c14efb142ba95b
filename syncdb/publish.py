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
from pathlib import Path

import uvicorn
from datasette.app import Datasette
from datasette.plugins import pm

from . import datasette_plugin, office, projection, staff
from .crypto import Secret
from .errors import SyncdbError
from .i18n import _
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


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port as uvicorn would bind it, or one line saying why it cannot be."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise SyncdbError(_("port {port} on {host} is already in use (another syncdb serve or publish, or "
                                "another program): stop that program, or choose a free port with --port")
                              .format(port=port, host=host)) from None
        if e.errno == errno.EACCES:
            raise SyncdbError(_("port {port} needs administrator rights on this machine; "
                                "choose a port above 1024 with --port").format(port=port)) from None
        raise SyncdbError(_("cannot listen on {host}:{port} ({why}); give --host an address of this "
                            "machine, e.g. 127.0.0.1 or 0.0.0.0").format(host=host, port=port,
                                                                         why=e.strerror or e)) from None
    except (socket.gaierror, UnicodeError, OverflowError) as e:
        sock.close()
        raise SyncdbError(_("cannot listen on {host}:{port} ({why}); give --host an address of this machine "
                            "and --port a number from 1 to 65535").format(host=host, port=port, why=e)) from None
    return sock


def serve(store_dir, secret: Secret, domains, host: str = "127.0.0.1", port: int = 8001,
          refresh_seconds: float = 30.0, title: str | None = None, session_hours: float = SESSION_HOURS,
          ready=None) -> None:
    """Decrypt into memory, then serve until interrupted; ``ready(url)`` once the socket listens."""
    sock = bind(host, port)  # a port in use is said in one line, before any work
    try:
        ds = make_datasette(store_dir, secret, domains, refresh_seconds, title, session_hours)

        async def main():
            datasette_plugin.log.info(_("decrypting the store into memory; the site answers once it is done"))
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
