"""Pushing bundles to the office: over HTTP to a real `syncdb serve`, or to a folder."""

import hashlib
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import requests

from syncdb import community, office, transport

SYNCDB = str(Path(sys.executable).with_name("syncdb"))


def received(store):
    """(origin, sequence, sha256) of every bundle the office holds."""
    conn = sqlite3.connect(store / "store.db")
    try:
        return conn.execute("SELECT origin, sequence, sha256 FROM received ORDER BY origin, sequence").fetchall()
    finally:
        conn.close()


def inbox(store):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (store / "inbox").glob("*.bundle")}


def copies(paths):
    """The bytes of outbox bundles, kept before a push removes them."""
    return {p.name: p.read_bytes() for p in paths}


def assert_office_holds_exactly(store, code, kept):
    """Every kept bundle is in the inbox once, with its exact bytes, and recorded once."""
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in kept.items()}
    assert inbox(store) == digests
    assert received(store) == [(code, i + 1, digests[name]) for i, name in enumerate(sorted(kept))]


def nothing_listening_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_push_over_http_end_to_end(office_server, office_store, make_community):
    c = make_community()
    kept = copies(c.make_bundles(2))
    server = office_server()
    lines = []

    report = transport.push_to_url(c.path, server.url, echo=lines.append)
    assert report.ok and report.error is None
    assert (report.sent, report.duplicates, report.pending) == ([1, 2], [], [])
    assert lines == [f"sent {c.code}-00000001.bundle (1 KB): accepted",
                     f"sent {c.code}-00000002.bundle (1 KB): accepted"]
    assert "2 bundle(s) sent" in report.summary() and "outbox is empty" in report.summary()
    assert_office_holds_exactly(office_store, c.code, kept)
    assert list(community.outbox_dir(c.path).iterdir()) == []

    # Nothing left: the second push sends nothing.
    again = transport.push_to_url(c.path, server.url, echo=lines.append)
    assert again.ok and (again.sent, again.duplicates) == ([], [])
    assert again.summary().startswith("Nothing to send")
    assert len(lines) == 2

    # The same bytes again, by hand: the office says it already has them.
    r = requests.post(f"{server.url}/v1/bundles", data=kept[f"{c.code}-00000001.bundle"],
                      headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and r.json()["status"] == "duplicate"
    assert_office_holds_exactly(office_store, c.code, kept)


def test_a_lost_answer_is_acknowledged_on_the_next_push(office_server, office_store, make_community):
    """The office kept bundle 1 but its answer never reached the community."""
    c = make_community()
    kept = copies(c.make_bundles(2))
    server = office_server()
    requests.post(f"{server.url}/v1/bundles", data=kept[f"{c.code}-00000001.bundle"])
    lines = []
    report = transport.push_to_url(c.path, server.url, echo=lines.append)
    assert report.ok and (report.duplicates, report.sent) == ([1], [2])
    assert lines[0].endswith("already at the office")
    assert c.pending() == []
    assert_office_holds_exactly(office_store, c.code, kept)


def test_server_killed_mid_push_then_restarted(office_server, office_store, make_community):
    c = make_community()
    kept = copies(c.make_bundles(5))
    server = office_server()

    def echo(line):
        # SIGKILL the office right after the 2nd bundle was acknowledged.
        if line.startswith(f"sent {c.code}-00000002"):
            server.kill()

    started = time.monotonic()
    report = transport.push_to_url(c.path, server.url, retries=2, backoff=0.05, echo=echo)
    assert time.monotonic() - started < 5
    assert not report.ok
    assert report.sent == [1, 2]
    assert [p.name for p in report.pending] == [f"{c.code}-0000000{i}.bundle" for i in (3, 4, 5)]
    assert "did not answer after 3 tries" in report.error
    assert "the 3 bundle(s) stay in the outbox" in report.error
    assert all(p.exists() for p in report.pending)

    server.start()
    report = transport.push_to_url(c.path, server.url, echo=lambda line: None)
    assert report.ok and report.sent == [3, 4, 5] and report.duplicates == []
    assert c.pending() == []
    assert_office_holds_exactly(office_store, c.code, kept)


def test_server_killed_and_back_while_the_push_retries(office_server, office_store, make_community):
    c = make_community()
    kept = copies(c.make_bundles(4))
    server = office_server()
    lines = []

    def echo(line):
        lines.append(line)
        if line.startswith(f"sent {c.code}-00000001"):
            server.kill()
        elif line.startswith("the office did not answer") and server.process.poll() is not None:
            server.start()  # back before the next try

    report = transport.push_to_url(c.path, server.url, retries=3, backoff=0.05, echo=echo)
    assert report.ok, report.error
    assert report.sent == [1, 2, 3, 4]
    assert any("connection refused" in line and "try 2 of 4" in line for line in lines)
    assert_office_holds_exactly(office_store, c.code, kept)


def test_office_unreachable(make_community):
    c = make_community()
    c.make_bundles(2)
    url = nothing_listening_url()
    lines = []
    started = time.monotonic()
    report = transport.push_to_url(c.path, url, retries=2, backoff=0.01, echo=lines.append)
    assert time.monotonic() - started < 2
    assert not report.ok and report.sent == []
    assert report.error == (f"the office at {url} did not answer after 3 tries (connection refused); "
                            "the 2 bundle(s) stay in the outbox for the next run, or carry them with --outbox")
    assert report.summary().startswith("Push stopped (0 bundle(s) sent): the office at")
    assert len(lines) == 2 and all("trying again" in line for line in lines)
    assert len(c.pending()) == 2 and all(p.exists() for p in c.pending())


def test_a_failing_office_is_retried_then_left_for_later(office_server, office_store, make_community):
    c = make_community()
    c.make_bundles(2)
    server = office_server()
    # Damage the store behind the service's back: every receive fails with a 500.
    conn = sqlite3.connect(office_store / "store.db")
    conn.execute("ALTER TABLE received RENAME TO received_away")
    conn.close()
    lines = []
    report = transport.push_to_url(c.path, server.url, retries=2, backoff=0.01, echo=lines.append)
    assert not report.ok and report.sent == []
    assert [line.split(";")[0] for line in lines] == ["the office answered HTTP 500: the office could not "
                                                      "finish this request because of an error on its side"] * 2
    assert f"the office at {server.url} failed to take the bundle 3 time(s) (HTTP 500" in report.error
    assert "the 2 bundle(s) stay in the outbox" in report.error and "office log" in report.error
    assert len(c.pending()) == 2

    conn = sqlite3.connect(office_store / "store.db")
    conn.execute("ALTER TABLE received_away RENAME TO received")
    conn.close()
    report = transport.push_to_url(c.path, server.url, echo=lambda line: None)
    assert report.ok and report.sent == [1, 2]


def test_a_refusal_stops_the_push_and_keeps_the_outbox(office_server, office_store, make_community):
    c = make_community(enroll=False)
    c.make_bundles(2)
    server = office_server()
    report = transport.push_to_url(c.path, server.url, echo=lambda line: None)
    assert not report.ok and report.sent == []
    assert "the office refused 441900003001-00000001.bundle (unenrolled, HTTP 403)" in report.error
    assert "not enrolled" in report.error  # the office's own words
    assert "ask the street office to enrol this community" in report.error  # what to do here
    assert len(report.pending) == 2 and received(office_store) == []
    # Only the first was tried: later ones would wait behind it anyway.
    assert len(list((office_store / "quarantine").glob("*.reason.json"))) == 1

    office.enroll(office_store, c.code, c.path / f"{c.code}.pub.json")
    report = transport.push_to_url(c.path, server.url, echo=lambda line: None)
    assert report.ok and report.sent == [1, 2]


def test_a_url_that_is_not_the_office(office_server, make_community):
    c = make_community()
    c.make_bundles(1)
    server = office_server()
    # Not the ingest service's base URL: the office answers 404 JSON, but no refusal word.
    report = transport.push_to_url(c.path, f"{server.url}/datasette", echo=lambda line: None)
    assert not report.ok
    assert "404" in report.error and "check the --to URL" in report.error
    assert len(c.pending()) == 1


def test_push_to_folder_then_receive_files(office_server, office_store, make_community, tmp_path):
    c = make_community()
    kept = copies(c.make_bundles(2))
    stick = tmp_path / "usb" / "outbox"

    copied = transport.push_to_folder(c.path, stick)
    assert [p.name for p in copied] == sorted(kept)
    assert {p.name: p.read_bytes() for p in stick.iterdir()} == kept
    # A folder acknowledges nothing: the bundles stay pending, and are not copied twice.
    assert len(c.pending()) == 2
    assert transport.push_to_folder(c.path, stick) == []

    results = office.receive_files(office_store, [stick])
    assert [(r.status, r.sequence) for _, r in results] == [("accepted", 1), ("accepted", 2)]
    assert_office_holds_exactly(office_store, c.code, kept)

    # The next push over the line finds the office has them, and empties the outbox: sent again and
    # answered "duplicate", or, once serve has merged its inbox, covered by the office's acknowledgement
    # and cleared unsent (which comes first is serve's timing). Either way none is sent anew.
    server = office_server()
    report = transport.push_to_url(c.path, server.url, echo=lambda line: None)
    assert report.ok and report.sent == [] and sorted(report.duplicates + report.cleared) == [1, 2]
    assert c.pending() == []
    assert_office_holds_exactly(office_store, c.code, kept)


def syncdb(*args, env, timeout=60):
    return subprocess.run([SYNCDB, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_push(office_server, office_store, make_community, syncdb_env, tmp_path):
    c = make_community()
    c.add_persons(3)
    server = office_server()

    result = syncdb("push", c.path, "--to", server.url, env=syncdb_env)
    assert result.returncode == 0, result.stderr
    assert "Bundle 1: 3 change(s)" in result.stdout
    assert f"sent {c.code}-00000001.bundle" in result.stdout and ": accepted" in result.stdout
    assert [r[:2] for r in received(office_store)] == [(c.code, 1)]

    # The office is gone: exit 1 with the message, and the bundle stays.
    c.add_persons(1)
    url = nothing_listening_url()
    started = time.monotonic()
    result = syncdb("push", c.path, "--to", url, "--retries", "1", env=syncdb_env)
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert f"the office at {url} did not answer after 2 tries" in result.stdout + result.stderr
    assert [p.name for p in c.pending()] == [f"{c.code}-00000002.bundle"]

    # Sneakernet: copied, not acknowledged.
    stick = tmp_path / "stick"
    result = syncdb("push", c.path, "--outbox", stick, env=syncdb_env)
    assert result.returncode == 0, result.stderr
    assert "No new changes" in result.stdout
    assert [p.name for p in stick.iterdir()] == [f"{c.code}-00000002.bundle"]
    assert len(c.pending()) == 1

    # The line is back: the bundle left behind goes now.
    result = syncdb("push", c.path, "--to", server.url, env=syncdb_env)
    assert result.returncode == 0, result.stderr
    assert [r[:2] for r in received(office_store)] == [(c.code, 1), (c.code, 2)]
    assert c.pending() == []


def test_cli_push_usage_errors(make_community, syncdb_env, tmp_path):
    c = make_community()
    neither = syncdb("push", c.path, env=syncdb_env)
    both = syncdb("push", c.path, "--to", "http://127.0.0.1:9", "--outbox", tmp_path / "x", env=syncdb_env)
    for result in (neither, both):
        assert result.returncode == 2
        assert "exactly one of --to URL or --outbox DIR" in result.stderr
    assert not (tmp_path / "x").exists()


def test_serve_merges_what_it_accepts(office_server, office_store, make_community):
    import sqlite3
    import time

    c = make_community()
    c.make_bundles(2, persons=3)
    server = office_server()
    assert transport.push_to_url(c.path, server.url, echo=lambda m: None).ok
    deadline = time.monotonic() + 20
    applied = []
    while time.monotonic() < deadline:
        conn = sqlite3.connect(office_store / "store.db")
        try:
            applied = conn.execute("SELECT sequence FROM applied ORDER BY sequence").fetchall()
            persons = conn.execute("SELECT count(*) FROM huji__persons").fetchone()[0] if applied else 0
        except sqlite3.OperationalError:  # the store's tables appear with the first merge
            applied = []
        finally:
            conn.close()
        if len(applied) == 2:
            break
        time.sleep(0.2)
    assert applied == [(1,), (2,)], server.log()
    assert persons == 6
    assert "merge: bundles:" in server.log()
