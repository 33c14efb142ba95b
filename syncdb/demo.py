"""``syncdb demo``: a sample street office and its communities, one nightly cycle.

Builds everything in one folder so it can be looked at and thrown away:

    DIR/office/             the office store (keys, store.db, inbox)
    DIR/communities/CODE/   each community's working databases and .syncdb/
    DIR/demo.key            the key file sealing every keyring in the demo

The sample's records are dated as of its own day (sample_people.TODAY), so the
demo tells the cross-domain checks to count from that day (``today`` in
STORE/checks.toml) before the first merge runs them, and says what they found.

A real office seals its keyring under a passphrase or a key file kept apart
from the data; the demo keeps one key file beside it so it can run unattended.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

from . import checks, community, i18n, merge, migrations, office, server, transport, workdir
from .channels import FolderChannel
from .conflicts import list_conflicts
from .outbound import outbound_dir
from .resolve import office_edit, resolve_conflict
from .crypto import Secret
from .errors import SyncdbError
from .http_channel import HttpChannel
from .i18n import _
from .sample import generate
from .sample_people import TODAY
from .store import open_store
from .staff import add_user
from .masks import mask

MARKER = ".syncdb-demo"
STREET = "441900003"  # a street office (街道) in 东莞市


def community_codes(count: int) -> list[str]:
    return [f"{STREET}{n:03d}" for n in range(1, count + 1)]


def _fresh_folder(directory: Path) -> None:
    """Reuse a folder only if an earlier demo made it; never wipe anything else."""
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise SyncdbError(_("{folder} is not empty and was not made by `syncdb demo`; give the demo a new folder")
                              .format(folder=directory))
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("made by syncdb demo; safe to delete\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """The ingest service on loopback in a thread, for the length of the demo."""

    def __init__(self, store: Path):
        import uvicorn

        self.port = _free_port()
        config = uvicorn.Config(server.app(store), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        i18n.translate_server_log()
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise SyncdbError(_("the demo ingest service did not start"))
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def run_demo(directory, communities: int, residents: int, domains: dict, echo=print) -> dict:
    directory = Path(directory)
    _fresh_folder(directory)
    key_file = directory / "demo.key"
    key_file.write_bytes(os.urandom(32))
    secret = Secret(key_file_bytes=key_file.read_bytes())
    store = directory / "office"

    echo(_("== Street office store in {store}").format(store=store))
    migrations.init(store, secret, domains=domains)
    # The checks count months and days up to "today": the sample's today, not the calendar's.
    (store / checks.SETTINGS_FILE).write_text(f"today = {TODAY.isoformat()}\n", encoding="utf-8")

    echo(_("== {communities} sample communities of {residents} residents").format(
        communities=communities, residents=residents))
    folders = {}
    for n, code in enumerate(community_codes(communities), start=1):
        folder = directory / "communities" / code
        counts = generate(folder, code, residents, seed=n, domains=domains)
        community.init(folder, code, office.public_key_path(store), domains, secret)
        office.enroll(store, code, folder / f"{code}.pub.json")
        folders[code] = folder
        made = ", ".join(f"{t} {c}" for t, c in counts.items())
        echo("   " + _("{code}: {counts}; enrolled").format(code=code, counts=made))

    with _Server(store) as ingest:
        echo(_("== Night 1: every community pushes over HTTP to the office ingest service"))
        _push_all(folders, domains, secret, ingest.url, echo)
        _merge(store, secret, domains, echo)

        echo(_("== Day 2: a resident moves from one community to another, and a third registers them too"))
        _stage_transfer(list(folders.values()), echo)
        echo(_("== Day 2: the office corrects a resident's name while the community changes it too"))
        _stage_concurrent_edit(store, secret, domains, list(folders.values())[0], echo)
        echo(_("== Night 2: push and merge again"))
        _push_all(folders, domains, secret, ingest.url, echo)
        _merge(store, secret, domains, echo)

    _cases_found(store, secret, domains, echo)

    open_conflicts = list_conflicts(store, secret, domains)
    echo(_("== {n} open conflict(s) for the data administrator (syncdb conflicts list):").format(
        n=len(open_conflicts)))
    for item in open_conflicts:
        sides = "; ".join(_("{origin} says {value}").format(origin=c["origin"], value=c["value"])
                          for c in item["candidates"])
        echo(f"   #{item['id']} {item['table']} {item['record']} {item['column']} ({item['kind']}): {sides}")
    codes = list(folders)
    for item in open_conflicts:
        if item["kind"] == "duplicate-registration" and len(codes) > 1:
            echo(_("== The data administrator settles #{id}: the resident lives in {code} now").format(
                id=item["id"], code=codes[1]))
            echo(f"   syncdb conflicts resolve {store} {item['id']} --keep {codes[1]}")
            summary = resolve_conflict(store, secret, domains, item["id"], keep=codes[1])
            echo(f"   {summary.lines()[1]}; {summary.lines()[2]}")
            for code in summary.sent_back:
                echo(_("== {code} holds the record and pulls the settlement (syncdb pull --inbox …)").format(
                    code=code))
                inbox = FolderChannel(outbound_dir(store, code))
                report = transport.pull(folders[code], inbox, domains, secret)
                for line in report.lines():
                    echo(f"   {line}")
    left = list_conflicts(store, secret, domains)
    echo(_("== {n} open conflict(s) left; the audit ledger records every change and the resolution").format(
        n=len(left)))
    staff = {"staff": ("", []), "pii": ("", ["view-pii"])}
    for name, (_unused, roles) in list(staff.items()):
        password = secrets.token_urlsafe(9)
        add_user(store, name, password, roles)
        staff[name] = (password, roles)
    echo(_("Look around: export SYNCDB_KEY_FILE={file}").format(file=key_file))
    echo(f"   syncdb conflicts list {store} --all")
    echo(f"   syncdb audit verify {store}")
    echo(f"   syncdb checks list {store}")
    echo(f"   syncdb export {store} huji.persons --where status=normal | head")
    echo(f"   syncdb publish {store}")
    echo(_("Staff accounts for the published site (syncdb users list):"))
    for name, (password, roles) in staff.items():
        echo(f"   {name} / {password}   (" + (", ".join(roles) or _("masked values only")) + ")")
    return {"store": store, "communities": folders, "secret": secret, "staff": staff}


def _cases_found(store, secret, domains, echo) -> None:
    """What the cross-domain checks found in the merges: the cases each check holds open."""
    with open_store(store, secret, domains) as opened:
        counts = checks.case_counts(opened)
        found = {c.name: (_(c.title), sum(n for states in counts.get(c.name, {}).values()
                                                     for state, n in states.items() if state in ("open", "confirmed")))
                 for c in checks.registered()}
    echo(_("== The cross-domain checks found {n} case(s) for the office to look into (syncdb checks list):").format(
        n=sum(n for __, n in found.values())))
    for title, n in found.values():
        echo("   " + _("{check}: {n}").format(check=title, n=n))


def _stage_concurrent_edit(store, secret, domains, folder: Path, echo) -> None:
    """A name (a manual column) changed at the office and at the community before either hears."""
    conn = workdir.connect(workdir.db_path(folder, "huji"))
    (id_number, name) = conn.execute(
        "SELECT id_number, name FROM persons WHERE status = 'normal' ORDER BY id_number DESC LIMIT 1").fetchone()
    office_edit(store, secret, domains, [
        {"table": "huji.persons", "key": {"id_number": id_number}, "cells": {"name": name + "华"}}])
    conn.execute("UPDATE persons SET name = ? WHERE id_number = ?", (name + "明", id_number))
    conn.close()
    echo("   " + _("{person}: the office writes {office_name}, {code} writes {community_name}").format(
        person=mask(id_number), office_name=mask(name + "华"), code=folder.name, community_name=mask(name + "明")))


def _push_all(folders, domains, secret, url, echo):
    channel = HttpChannel(url)
    for code, folder in folders.items():
        pushed = transport.push(folder, channel, domains, secret, echo=lambda m: None)
        result, report = pushed.exported, pushed.delivery
        made = (_("bundle {sequence} with {changes} changes").format(sequence=result.sequence, changes=result.changes)
                if result.sequence else _("no changes"))
        echo(f"   {code}: {made}; {report.summary()}")
        if not report.ok:
            raise SyncdbError(_("the demo push from {code} failed: {error}").format(code=code, error=report.error))


def _merge(store, secret, domains, echo):
    summary = merge.merge(store, [], secret, domains)
    for line in summary.lines():
        echo(f"   {line}")


def _stage_transfer(folders: list[Path], echo) -> None:
    """Community 1 marks a resident moved out; community 2 registers them; community 3 too."""
    first = workdir.connect(workdir.db_path(folders[0], "huji"))
    first.row_factory = sqlite3.Row
    resident = dict(first.execute(
        "SELECT * FROM persons WHERE status = 'normal' AND relationship != '02' ORDER BY id_number LIMIT 1").fetchone())
    first.execute("UPDATE persons SET status = 'moved_out' WHERE id_number = ?", (resident["id_number"],))
    first.close()
    shown = mask(resident["id_number"])
    echo("   " + _("{code}: {person} marked moved_out").format(code=folders[0].name, person=shown))
    for folder in folders[1:3]:
        row = dict(resident, community_code=folder.name, household_no=None, relationship=None, address_code=None)
        conn = workdir.connect(workdir.db_path(folder, "huji"))
        conn.execute(f"INSERT INTO persons ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
        conn.close()
        echo("   " + _("{code}: {person} registered").format(code=folder.name, person=shown))
