"""The office ingest service: where `syncdb push --to URL` sends its bundles.

A plain ASGI application, run by uvicorn (which does all of HTTP):

    POST /v1/bundles                           body: the bundle file's bytes
    GET  /v1/limits                            the office's caps on one bundle (limits.py), and
                                               max_bundle, the largest upload it takes, in bytes
    GET  /v1/communities/{code}/acknowledged   the highest N such that 1..N are held
    GET  /v1/communities/{code}/outbound       {"bundles": [1, 2, …]}: the office's resolutions for it
    GET  /v1/communities/{code}/outbound/{n}   one of them, the bundle file's bytes (`syncdb pull`)
    GET  /v1/communities/{code}/acknowledgement  the office's signed acknowledgement for it
                                               (outbound.write_acknowledgements), 404 until there is one
    GET  /health                               {"status": "ok"}

Every answer is JSON. A bundle is answered 201 when it is new, 200 when the
office already holds the same bytes (so a push that lost its answer can
simply send again), and a refusal names its reason with a status the
community side can act on: 4xx means "do not send this again as it is", 5xx
means "try again later" — 507 (the office's disk is full) at the next push,
not within this one.

With a merger (``syncdb serve`` has one unless ``--no-merge``), every
accepted bundle is merged into the store soon after it is acknowledged, one
merge at a time; the acknowledgment itself only waits for the bundle to be
safe in the inbox.

Only the bundle's header fields (community, sequence number), refusal
reasons and merge summaries (keys masked) are logged; request bodies never are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import tempfile
from pathlib import Path

from . import bundle, i18n, limits, office, outbound
from .errors import DiskFull, SyncdbError
from .files import is_disk_full
from .i18n import _

log = logging.getLogger("syncdb.server")

# The status for each refusal reason (bundle.BundleError / office.Refused .reason).
STATUS_FOR_REASON = {
    "unenrolled": 403,
    "bad-signature": 403,
    "wrong-recipient": 403,
    "truncated": 400,
    "garbled": 400,
    "tampered": 400,
    "unsupported": 400,
    "wrong-kind": 400,
    "invalid": 400,
    "replay": 409,
    "too-large": 413,
}
# Uploads up to this size are held in memory; larger ones are spooled to the store's disk.
SPOOL_IN_MEMORY = 1 << 20

ACKNOWLEDGED_PATH = re.compile(r"^/v1/communities/([^/]+)/acknowledged$")
# The office's resolutions for a community (`syncdb pull`): signed by the office and
# encrypted to that community, so they are safe to hand to whoever asks.
OUTBOUND_PATH = re.compile(r"^/v1/communities/([0-9A-Za-z_-]+)/outbound(?:/([0-9]{1,9}))?$")
ACKNOWLEDGEMENT_PATH = re.compile(r"^/v1/communities/([0-9A-Za-z_-]+)/acknowledgement$")


def app(store, max_body: int = 256 * 2**20, merger=None):
    """The ingest service for the office store at ``store``, as an ASGI callable.

    ``merger``, if given, is called (in a worker thread, never two at once)
    after each accepted bundle and once at start-up, to merge the inbox.
    """
    store = Path(store)
    # Fail at start-up, not at the first push, when STORE is not an office store
    # or its limits.json is wrong.
    office.connect(store).close()
    limits.load(store)
    # One bundle at a time: office.receive checks "already received?" and then
    # writes, so two uploads of one sequence number must not interleave.
    receiving = asyncio.Lock()
    merging = asyncio.Lock()
    tasks = set()

    async def merge_inbox():
        async with merging:
            try:
                await asyncio.to_thread(merger)
            except Exception:
                # The bundles stay in the inbox; the next bundle or `syncdb merge` retries.
                log.exception(_("merging the inbox failed; the bundles wait in the inbox"))

    def merge_soon():
        if merger is None:
            return
        task = asyncio.get_running_loop().create_task(merge_inbox())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def application(scope, receive, send):
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, on_startup=merge_soon)
            return
        if scope["type"] != "http":
            return
        started = False

        async def tracked_send(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await _route(scope, receive, tracked_send)
        except Exception:
            log.exception(_("unexpected error answering {method} {path} from {client}").format(
                method=scope["method"], path=scope["path"], client=_client(scope)))
            if not started:
                await _server_error(send)

    async def _route(scope, receive, send):
        path, method = scope["path"], scope["method"]

        if path == "/health":
            if method not in ("GET", "HEAD"):
                return await _method_not_allowed(send, "GET")
            return await _json(send, 200, {"status": "ok"})

        match = ACKNOWLEDGED_PATH.match(path)
        if match:
            if method not in ("GET", "HEAD"):
                return await _method_not_allowed(send, "GET")
            code = match.group(1)
            held = await asyncio.to_thread(office.acknowledged, store, code)
            return await _json(send, 200, {"code": code, "acknowledged": held})

        match = OUTBOUND_PATH.match(path)
        if match:
            if method not in ("GET", "HEAD"):
                return await _method_not_allowed(send, "GET")
            code, sequence = match.group(1), match.group(2)
            if sequence is None:
                waiting = await asyncio.to_thread(outbound.available, store, code)
                return await _json(send, 200, {"code": code, "bundles": waiting})
            found = await asyncio.to_thread(outbound.path_of, store, code, int(sequence))
            if found is None or not found.exists():
                return await _json(send, 404, {"error": "not-found",
                                               "message": _("no resolutions bundle {sequence} for {code}").format(
                                                   sequence=sequence, code=code)})
            return await _file(send, found)

        match = ACKNOWLEDGEMENT_PATH.match(path)
        if match:
            if method not in ("GET", "HEAD"):
                return await _method_not_allowed(send, "GET")
            found = await asyncio.to_thread(outbound.acknowledgement_path, store, match.group(1))
            if found is None:
                return await _json(send, 404, {"error": "not-found", "message": _(
                    "no acknowledgement for {code} yet: the office holds none of its bundles").format(
                    code=match.group(1))})
            return await _file(send, found)

        if path == "/v1/limits":
            if method not in ("GET", "HEAD"):
                return await _method_not_allowed(send, "GET")
            caps = await asyncio.to_thread(limits.load, store)
            return await _json(send, 200, dict(caps.as_dict(), max_bundle=max_body))

        if path == "/v1/bundles":
            if method != "POST":
                return await _method_not_allowed(send, "POST")
            return await _post_bundle(scope, receive, send)

        await _json(send, 404, {"error": "not-found",
                                "message": _("no such address {path} at this office ingest service; "
                                             "push to the service's base URL, e.g. http://office:8765").format(
                                    path=repr(path))})

    async def _post_bundle(scope, receive, send):
        client = _client(scope)
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _json(send, 400, {"error": "bad-request",
                                               "message": _("the Content-Length header is not a number")})
            if int(length) > max_body:
                log.warning(_("refused an upload of {size} bytes from {client}: over the {limit} limit").format(
                    size=length, client=client, limit=_size(max_body)))
                return await _too_large(send)

        # Spooled: a small bundle stays in memory, a large one goes to an anonymous file in the
        # store folder, so memory holds at most a megabyte of each upload whatever max_body is.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=store, prefix=".upload-") as body:
            size = 0
            try:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        log.info(_("{client} went away in the middle of an upload; nothing was kept").format(
                            client=client))
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > max_body:
                        # Stop here: uvicorn discards what the client still sends.
                        log.warning(_("refused an upload from {client}: over the {limit} limit").format(
                            client=client, limit=_size(max_body)))
                        return await _too_large(send)
                    body.write(chunk)
                    if not message.get("more_body", False):
                        break
                async with receiving:
                    receipt = await asyncio.to_thread(office.receive_file, store, body,
                                                      source=f"http from {client}")
            except bundle.BundleError as e:
                status = STATUS_FOR_REASON.get(e.reason, 400)
                log.warning(_("refused a bundle from {client} ({reason}): {problem}").format(
                    client=client, reason=e.reason, problem=e))
                return await _json(send, status, {"error": e.reason, "message": str(e)})
            except (DiskFull, OSError) as e:
                if isinstance(e, OSError) and not is_disk_full(e):
                    raise
                log.error(_("could not keep a bundle from {client}: {problem}").format(client=client, problem=e))
                return await _json(send, 507, {
                    "error": "disk-full",
                    "message": _("the office's disk is full, so it could not keep the bundle; "
                                 "nothing was acknowledged")})
            except SyncdbError as e:
                log.error(_("could not keep a bundle from {client}: {problem}").format(client=client, problem=e))
                return await _server_error(send)

        logged = (_("duplicate bundle {code} #{sequence} from {client}") if receipt.status == "duplicate"
                  else _("accepted bundle {code} #{sequence} from {client}"))
        log.info(logged.format(code=receipt.origin, sequence=receipt.sequence, client=client))
        answer = receipt.as_dict()
        if receipt.status == "duplicate":
            answer["message"] = _("already have it")
            return await _json(send, 200, answer)
        answer["message"] = _("received; it will be merged into the store")
        await _json(send, 201, answer)
        merge_soon()

    return application


def serve(store, host: str = "127.0.0.1", port: int = 8765, max_body: int = 256 * 2**20,
          secret=None, domains=None) -> None:
    """Run the ingest service with uvicorn until interrupted; logs go to stderr.

    With ``secret`` and ``domains`` it also merges what it accepts.
    """
    import uvicorn

    merger = None
    if secret is not None:
        from . import merge as merge_lib
        from .migrations import open_upgraded

        open_upgraded(store, secret, domains).close()  # a wrong key fails now, not later; the store is upgraded

        def merger():
            summary = merge_lib.merge(store, [], secret, domains)
            if summary.applied or summary.held:
                for line in summary.lines():
                    log.info(_("merge: {line}").format(line=line))

    application = app(store, max_body=max_body, merger=merger)
    log_config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                                "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "syncdb": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }
    print(_("Serving the office store {store} on http://{host}:{port} (bundles up to {limit})").format(
        store=store, host=host, port=port, limit=_size(max_body)), file=sys.stderr, flush=True)
    # Our own log line per bundle replaces the access log; bodies are never logged.
    # limit_concurrency bounds the uploads in flight (each holds at most SPOOL_IN_MEMORY
    # in memory, the rest spooled to disk); past the limit clients get 503 and retry later.
    i18n.translate_server_log()
    uvicorn.run(application, host=host, port=port, log_config=log_config, access_log=False,
                limit_concurrency=32, server_header=False)


async def _lifespan(receive, send, on_startup=None):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if on_startup:
                on_startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _json(send, status: int, doc: dict, headers=()):
    body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _file(send, path: Path):
    """A bundle file's bytes (signed and encrypted to its community: safe to hand to whoever asks)."""
    data = await asyncio.to_thread(path.read_bytes)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _method_not_allowed(send, allowed: str):
    await _json(send, 405, {"error": "method-not-allowed", "message": _("use {method} here").format(method=allowed)},
                headers=[(b"allow", allowed.encode())])


async def _too_large(send):
    await _json(send, 413, {"error": "too-large",
                            "message": _("the bundle is larger than this office accepts; ask the data "
                                         "administrator to raise `syncdb serve --max-bundle-mb`, or carry "
                                         "it on a USB stick with `syncdb push --outbox`")})


async def _server_error(send):
    await _json(send, 500, {"error": "server-error",
                            "message": _("the office could not finish this request because of an error on "
                                         "its side; nothing was acknowledged, so push again later, and ask "
                                         "the data administrator to look at the office log")})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _client(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


def _size(n: int) -> str:
    return f"{n / 2**20:g} MB" if n >= 2**20 else f"{n} bytes"
