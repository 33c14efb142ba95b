"""The office ingest service (`syncdb serve`), run as a real process on 127.0.0.1."""

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import requests

from syncdb import bundle, community, office
from syncdb.crypto import Keyring, PublicKey

OCTETS = {"Content-Type": "application/octet-stream"}
SYNCDB = str(Path(sys.executable).with_name("syncdb"))


def post(server, data, **kwargs):
    return requests.post(f"{server.url}/v1/bundles", data=data, headers=OCTETS, timeout=30, **kwargs)


def snapshot(store):
    """Everything a refusal must leave alone: the office tables and the inbox."""
    conn = sqlite3.connect(store / "store.db")
    try:
        tables = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in ("communities", "received")}
    finally:
        conn.close()
    inbox = {p.name: p.read_bytes() for p in (store / "inbox").iterdir()}
    return tables, inbox


def quarantined_reasons(store):
    return [json.loads(p.read_text())["reason"] for p in (store / "quarantine").glob("*.reason.json")]


def assert_refused(server, store, data, status, error, *words):
    before = snapshot(store)
    response = post(server, data)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    answer = response.json()
    assert answer["error"] == error
    for word in words:
        assert word in answer["message"]
    assert snapshot(store) == before
    return answer


def test_health_unknown_paths_and_methods(office_server):
    server = office_server()
    r = requests.get(f"{server.url}/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})

    r = requests.get(f"{server.url}/nothing/here")
    assert r.status_code == 404 and r.json()["error"] == "not-found"

    r = requests.get(f"{server.url}/v1/bundles")
    assert r.status_code == 405 and r.json()["error"] == "method-not-allowed"
    assert r.headers["Allow"] == "POST"
    r = requests.post(f"{server.url}/health")
    assert r.status_code == 405 and r.headers["Allow"] == "GET"
    r = requests.delete(f"{server.url}/v1/communities/441900003001/acknowledged")
    assert r.status_code == 405


def test_accepted_then_duplicate_then_acknowledged(office_server, office_store, make_community):
    c = make_community()
    first, second, third = c.make_bundles(3)
    server = office_server()

    def acknowledged():
        r = requests.get(f"{server.url}/v1/communities/{c.code}/acknowledged")
        assert r.status_code == 200
        return r.json()

    assert acknowledged() == {"code": c.code, "acknowledged": 0}

    r = post(server, first.read_bytes())
    assert r.status_code == 201
    assert r.json()["status"] == "accepted"
    assert (r.json()["origin"], r.json()["sequence"]) == (c.code, 1)
    assert (office_store / "inbox" / first.name).read_bytes() == first.read_bytes()

    before = snapshot(office_store)
    r = post(server, first.read_bytes())
    assert r.status_code == 200
    assert r.json() == {"status": "duplicate", "origin": c.code, "sequence": 1, "message": "already have it"}
    assert snapshot(office_store) == before

    # Bundle 3 before 2: held, but the acknowledgment stops at the gap.
    assert post(server, third.read_bytes()).status_code == 201
    assert acknowledged()["acknowledged"] == 1
    assert post(server, second.read_bytes()).status_code == 201
    assert acknowledged()["acknowledged"] == 3
    assert requests.get(f"{server.url}/v1/communities/441900009999/acknowledged").json()["acknowledged"] == 0

    log = server.log()
    assert f"accepted bundle {c.code} #1" in log
    assert "居民" not in log  # no record contents in the log


def test_refuses_unenrolled_community(office_server, office_store, make_community):
    c = make_community(enroll=False)
    (path,) = c.make_bundles(1)
    server = office_server()
    assert_refused(server, office_store, path.read_bytes(), 403, "unenrolled", c.code, "not enrolled")
    assert quarantined_reasons(office_store) == ["unenrolled"]


def test_refuses_a_flipped_byte(office_server, office_store, make_community):
    c = make_community()
    (path,) = c.make_bundles(1)
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[8:12], "big")
    payload_start = 12 + header_len + 8
    data[payload_start + 20] ^= 0x01
    server = office_server()
    assert_refused(server, office_store, bytes(data), 403, "bad-signature", "signature does not match")
    # The genuine bundle still goes in afterwards.
    assert post(server, path.read_bytes()).status_code == 201


def test_refuses_a_bundle_signed_by_another_community(office_server, office_store, make_community, syncdb_secret):
    victim = make_community("441900003001")
    other = make_community("441900003002")
    other_ring = Keyring.load(community.state_dir(other.path) / "keyring.json", syncdb_secret)
    office_key = PublicKey.read(office_store / "office.pub.json")
    forged = other.path / "forged.bundle"
    bundle.write(forged, {"origin": victim.code, "sequence": 1},
                 [{"table": "huji.persons", "op": "delete", "key": {"id_number": "x"}, "cells": {},
                   "base": {}, "hlc": "0000000000001-0000-x"}],
                 other_ring, office_key)
    server = office_server()
    assert_refused(server, office_store, forged.read_bytes(), 403, "bad-signature", victim.code)


def test_refuses_truncated_and_garbage(office_server, office_store, make_community):
    c = make_community()
    (path,) = c.make_bundles(1)
    data = path.read_bytes()
    server = office_server()
    assert_refused(server, office_store, data[: len(data) // 2], 400, "truncated", "copy it again")
    assert_refused(server, office_store, data[:-1], 400, "truncated")
    assert_refused(server, office_store, os.urandom(5000), 400, "garbled", "not a syncdb bundle")
    assert_refused(server, office_store, b"", 400, "garbled")
    assert sorted(quarantined_reasons(office_store)) == ["garbled", "garbled", "truncated", "truncated"]


def test_refuses_a_reused_sequence_number(office_server, office_store, make_community, syncdb_secret):
    c = make_community()
    (path,) = c.make_bundles(1)
    server = office_server()
    assert post(server, path.read_bytes()).status_code == 201

    # A different bundle numbered 1, signed with the community's own key: a fork.
    ring = Keyring.load(community.state_dir(c.path) / "keyring.json", syncdb_secret)
    fork = c.path / "fork.bundle"
    bundle.write(fork, {"origin": c.code, "sequence": 1},
                 [{"table": "huji.persons", "op": "delete", "key": {"id_number": "x"}, "cells": {},
                   "base": {}, "hlc": "0000000000001-0000-x"}],
                 ring, PublicKey.read(office_store / "office.pub.json"))
    assert_refused(server, office_store, fork.read_bytes(), 409, "replay", "replay or a fork")
    assert (office_store / "inbox" / path.name).read_bytes() == path.read_bytes()


def test_refuses_a_bundle_of_the_wrong_kind(office_server, office_store, make_community, syncdb_secret):
    c = make_community()
    ring = Keyring.load(community.state_dir(c.path) / "keyring.json", syncdb_secret)
    path = c.path / "resolutions.bundle"
    bundle.write(path, {"origin": c.code, "sequence": 1, "kind": "resolutions"}, [], ring,
                 PublicKey.read(office_store / "office.pub.json"))
    server = office_server()
    assert_refused(server, office_store, path.read_bytes(), 400, "wrong-kind")


def test_refuses_a_body_over_the_limit(office_server, office_store):
    server = office_server(max_bundle_mb=1)
    big = b"\0" * (2 * 2**20)
    # With Content-Length: refused before the body is read.
    assert_refused(server, office_store, big, 413, "too-large", "--max-bundle-mb", "--outbox")

    # Chunked, with no length up front: refused once the body passes the limit.
    def chunks():
        for i in range(0, len(big), 64 * 1024):
            yield big[i:i + 64 * 1024]

    assert_refused(server, office_store, chunks(), 413, "too-large")
    # Just under the limit is read and judged on its bytes.
    assert_refused(server, office_store, b"\0" * (2**20), 400, "garbled")
    assert requests.get(f"{server.url}/health").status_code == 200


def test_unexpected_error_is_500_and_logged(office_server, office_store, make_community):
    c = make_community()
    (path,) = c.make_bundles(1)
    server = office_server()
    # A store damaged behind the service's back: receive() fails in a way nobody planned for.
    conn = sqlite3.connect(office_store / "store.db")
    conn.execute("DROP TABLE received")
    conn.close()
    r = post(server, path.read_bytes())
    assert r.status_code == 500
    answer = r.json()
    assert answer["error"] == "server-error"
    assert "push again later" in answer["message"] and "office log" in answer["message"]
    r = requests.get(f"{server.url}/v1/communities/{c.code}/acknowledged")
    assert r.status_code == 500 and r.json()["error"] == "server-error"
    time.sleep(0.2)
    log = server.log()
    assert "Traceback" in log and "no such table: received" in log
    assert "居民" not in log


def test_serve_binds_only_where_told(office_server):
    server = office_server()
    # 127.0.0.2 is loopback too: a server on 0.0.0.0 would answer there.
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.2", server.port)) != 0
    assert requests.get(f"{server.url}/health").status_code == 200


def test_serve_refuses_a_folder_that_is_no_store(tmp_path, syncdb_env):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([SYNCDB, "serve", str(tmp_path / "empty"), "--port", "1"],
                            env=syncdb_env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "not an office store" in result.stderr


def test_app_works_under_any_asgi_server(office_store, make_community):
    """The library entry point: app() is a plain ASGI callable (driven here by httpx)."""
    import asyncio

    import httpx

    from syncdb import server

    c = make_community()
    (path,) = c.make_bundles(1)
    application = server.app(office_store, max_body=2**20)

    async def run():
        transport = httpx.ASGITransport(app=application, client=("192.0.2.7", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://office") as client:
            r1 = await client.post("/v1/bundles", content=path.read_bytes())
            r2 = await client.post("/v1/bundles", content=path.read_bytes())
            r3 = await client.get(f"/v1/communities/{c.code}/acknowledged")
            return r1, r2, r3

    r1, r2, r3 = asyncio.run(run())
    assert (r1.status_code, r2.status_code, r3.json()["acknowledged"]) == (201, 200, 1)
    conn = office.connect(office_store)
    assert conn.execute("SELECT origin, sequence, file FROM received").fetchall() == [(c.code, 1, path.name)]
    conn.close()
