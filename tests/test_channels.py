"""transport.push and transport.pull over each channel: a folder (a USB stick) and the office's HTTP service."""

import shutil
import sqlite3

import pytest

from syncdb import merge, outbound, resolve, transport
from syncdb.channels import FolderChannel
from syncdb.errors import SyncdbError
from syncdb.http_channel import HttpChannel


def persons(folder):
    conn = sqlite3.connect(folder / "huji.db")
    try:
        return conn.execute("SELECT * FROM persons ORDER BY id_number").fetchall()
    finally:
        conn.close()


def shadow(folder):
    """What the community last sent (or pulled), without the stamps, which differ between offices."""
    conn = sqlite3.connect(folder / ".syncdb" / "state.db")
    try:
        return (conn.execute("SELECT tbl, key, row FROM shadow ORDER BY tbl, key").fetchall(),
                conn.execute("SELECT value FROM meta WHERE name IN ('pulled', 'next_sequence') ORDER BY name")
                .fetchall())
    finally:
        conn.close()


def received(store):
    conn = sqlite3.connect(store / "store.db")
    try:
        return conn.execute("SELECT origin, sequence FROM received ORDER BY origin, sequence").fetchall()
    finally:
        conn.close()


def settle_phone(store, c, id_number, phone):
    """The office sets a resident's phone; the merge after it writes the acknowledgements."""
    resolve.office_edit(store, c.secret, c.domains, [
        {"table": "huji.persons", "key": {"id_number": id_number}, "cells": {"phone": phone}}])
    merge.merge(store, [], c.secret, c.domains)


def test_the_folder_channel_carries_a_push_to_the_office_and_its_resolutions_back(office_store, make_community,
                                                                                  tmp_path):
    c = make_community()
    c.add_persons(3)
    stick = FolderChannel(tmp_path / "usb")
    lines = []

    pushed = transport.push(c.path, stick, c.domains, c.secret, echo=lines.append)
    assert pushed.ok and [p.name for p in pushed.delivery.copied] == [f"{c.code}-00000001.bundle"]
    assert pushed.delivery.summary() == f"Copied 1 unacknowledged bundle(s) to {tmp_path / 'usb'}"
    assert len(c.pending()) == 1  # a folder acknowledges nothing by itself

    merge.merge(office_store, [stick.folder], c.secret, c.domains)
    assert received(office_store) == [(c.code, 1)]
    id_number = persons(c.path)[0][0]
    settle_phone(office_store, c, id_number, "13912345678")
    # The office's outbound folder for this community, carried back on the stick.
    shutil.copytree(outbound.outbound_dir(office_store, c.code), stick.folder / c.code)

    pulled = transport.pull(c.path, stick, c.domains, c.secret)
    assert pulled.applied == [1] and pulled.cells == 1
    assert pulled.cleared == [1] and c.pending() == []  # the office's acknowledgement came with it
    conn = sqlite3.connect(c.path / "huji.db")
    assert conn.execute("SELECT phone FROM persons WHERE id_number = ?", (id_number,)).fetchone() == ("13912345678",)
    conn.close()

    # The next push finds nothing new, and takes off the stick what the office holds.
    lines.clear()
    again = transport.push(c.path, stick, c.domains, c.secret, echo=lines.append)
    assert again.exported.sequence is None and again.delivery.copied == []
    assert lines == [f"removed {c.code}-00000001.bundle from {stick.folder}: the office holds it"]
    assert not (stick.folder / f"{c.code}-00000001.bundle").exists()


def test_push_and_pull_give_the_same_result_over_http_and_over_a_folder(office_server, office_store,
                                                                        make_community, tmp_path):
    c = make_community()
    c.add_persons(4)
    # Two copies of the same office and community: one syncs over the line, the other by stick.
    by_line, by_stick = c.path, tmp_path / "stick-world" / c.path.name
    stick_store = tmp_path / "stick-world" / "office"
    shutil.copytree(c.path, by_stick)
    shutil.copytree(office_store, stick_store)

    server = office_server()
    line = HttpChannel(server.url, backoff=0.05)
    pushed_line = transport.push(by_line, line, c.domains, c.secret, echo=lambda m: None)
    server.kill()
    stick = FolderChannel(tmp_path / "usb")
    pushed_stick = transport.push(by_stick, stick, c.domains, c.secret, echo=lambda m: None)
    assert pushed_line.ok and pushed_stick.ok
    assert pushed_line.delivery.sent == [1] and len(pushed_stick.delivery.copied) == 1
    assert pushed_line.exported.counts == pushed_stick.exported.counts
    merge.merge(office_store, [], c.secret, c.domains)
    merge.merge(stick_store, [stick.folder], c.secret, c.domains)
    assert received(office_store) == received(stick_store) == [(c.code, 1)]

    id_number = persons(by_line)[1][0]
    for store in (office_store, stick_store):
        settle_phone(store, c, id_number, "13800001111")
    server = office_server()
    pulled_line = transport.pull(by_line, HttpChannel(server.url), c.domains, c.secret)
    pulled_stick = transport.pull(by_stick, FolderChannel(outbound.outbound_dir(stick_store, c.code)),
                                  c.domains, c.secret)
    assert (pulled_line.applied, pulled_line.cells) == (pulled_stick.applied, pulled_stick.cells) == ([1], 1)
    assert persons(by_line) == persons(by_stick)
    assert shadow(by_line) == shadow(by_stick)
    assert c.pending() == [] and list((by_stick / ".syncdb" / "outbox").iterdir()) == []


def test_channel_for_takes_exactly_one_and_checks_the_address(tmp_path):
    assert isinstance(transport.channel_for(folder=tmp_path), FolderChannel)
    assert transport.channel_for("http://127.0.0.1:8765/").where == "http://127.0.0.1:8765"
    for url, folder in ((None, None), ("http://127.0.0.1:8765", tmp_path), ("127.0.0.1:8765", None)):
        with pytest.raises(SyncdbError):
            transport.channel_for(url, folder)
