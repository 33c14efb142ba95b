"""``syncdb status``: one screen of what needs a person, at the office or at a community.

For an office store: the enrolled communities (code and name) with their
last bundle and its lag; what is held and why (bundles.py); the quarantine's
refusals; the open conflicts per kind; the key-rotation state; and the
records the merge refused (the ``rejected`` table). For a community folder:
the bundles waiting in the outbox, the records held back and why, the cells
whose value the office did not keep (``superseded``), and when the office
last acknowledged a bundle.

``needs_person`` is true when someone has to act; the CLI exits 1 then, so
a scheduled task can alert. Refusals and rejected records are history as
well as alarms: they need a person until someone has read them and said so
with ``syncdb status STORE --ack`` (kept in STORE/status-ack.json, the only
thing status ever writes, and only then). Held bundles, open conflicts and
an unfinished rotation need a person until they are dealt with.

The store and the community's state database are opened read-only and
nothing is made beside them: with no ``-wal`` file there (a database closed
cleanly, or copied), SQLite is told the file will not change
(``immutable=1``), since a read-only open of a WAL database would otherwise
create its ``-wal`` and ``-shm`` files. Should a writer start while status
reads (a ``-wal`` appears), status reads everything again the ordinary
read-only way, which may then use the ``-shm`` the writer made.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import bundles, community, conflicts, holds, integrity, office
from .crypto import Keyring
from .errors import SyncdbError
from .files import write_atomic
from .i18n import N_, _
from .schema import Domain
from .store import Cells, Store, table_name

ACK_FILE = "status-ack.json"
MAX_LAG_HOURS = 48.0  # a community's unacknowledged bundle older than this: its pushes are not getting through
SHOWN = 5  # latest refusals and rejections shown in full, per community
_STAMP = re.compile(r"^([0-9]{8}T[0-9]{6}\.[0-9]{6})-")


@dataclass
class Report:
    """What one `syncdb status` shows: sections of lines, and the alerts among them."""

    title: str
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # the same, for machines (--format json)

    @property
    def needs_person(self) -> bool:
        return bool(self.alerts)

    def lines(self) -> list[str]:
        out = [self.title]
        for heading, lines in self.sections:
            # Headings are kept in English (N_): they are the keys of --format json's sections.
            out.append("\n" + _("{heading}:").format(heading=_(heading)))
            out += [f"  {line}" for line in lines] or ["  " + _("none")]
        out.append("")
        if self.alerts:
            out.append(_("Needs a person ({n}):").format(n=len(self.alerts)))
            out += [f"  - {alert}" for alert in self.alerts]
        else:
            out.append(_("Nothing needs a person."))
        return out

    def as_dict(self) -> dict:
        return {"title": self.title, "needs_person": self.needs_person, "alerts": self.alerts,
                "sections": {heading: lines for heading, lines in self.sections}, **self.facts}


def status(path, domains: dict[str, Domain], keyring: Keyring | None = None,
           max_lag_hours: float = MAX_LAG_HOURS) -> Report:
    """The status of an office store folder or a community folder, whichever ``path`` is."""
    folder = Path(path)
    if (folder / "store.db").exists() or office.keyring_path(folder).exists():
        return _steady(folder / "store.db", lambda: office_status(folder, domains, keyring))
    if (community.state_dir(folder) / "config.json").exists():
        return _steady(community.state_dir(folder) / "state.db",
                       lambda: community_status(folder, max_lag_hours, domains=domains))
    raise SyncdbError(_("{folder} is neither an office store (`syncdb office init`) nor a community folder "
                        "(`syncdb community init`); give the folder one of them made").format(folder=folder))


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def open_read_only(path: Path) -> sqlite3.Connection:
    """``path`` opened so that nothing is written to it, nor made beside it (see the module's text)."""
    uri = path.resolve().as_uri() + "?mode=ro"
    if not _wal(path).exists():
        uri += "&immutable=1"  # all of it is in the file: read it without making -wal and -shm
    return sqlite3.connect(uri, uri=True, timeout=30)


def _steady(path: Path, read: Callable[[], Report]) -> Report:
    """``read()``, again if a writer began while it ran: an immutable read may then have been torn."""
    quiet = not _wal(path).exists()
    report = read()
    if quiet and _wal(path).exists():
        report = read()
    return report


# ---------------------------------------------------------------- the office

def _store_read_only(store_dir: Path) -> sqlite3.Connection:
    """The store, read-only; the tables the first merge has not made yet read as empty."""
    path = store_dir / "store.db"
    if not path.is_file() or not office.keyring_path(store_dir).exists():
        raise SyncdbError(_("{store} is not an office store (no store.db and keyring.json there); "
                            "give the folder `syncdb office init` made").format(store=store_dir))
    try:
        conn = open_read_only(path)
        conn.execute("SELECT count(*) FROM communities").fetchone()
        bundles.stand_ins(conn)
        conn.execute("PRAGMA query_only = 1")
    except sqlite3.Error as e:
        raise SyncdbError(_("{path} cannot be read as an office store ({problem}); restore it from a backup "
                            "of the store folder").format(path=path, problem=e)) from None
    return conn


def office_status(store_dir, domains: dict[str, Domain], keyring: Keyring | None = None,
                  now: float | None = None) -> Report:
    store_dir = Path(store_dir)
    now = time.time() if now is None else now
    conn = _store_read_only(store_dir)
    try:
        names = office.names(conn)
        ack = _read_ack(store_dir)
        report = Report(_("Office store {store}").format(store=store_dir))
        keyring = _keyring_fits(conn, store_dir, domains, keyring, report)
        _communities(conn, names, now, report)
        _held(conn, store_dir, domains, keyring, names, now, report)
        _quarantine(store_dir, names, ack, report)
        _conflicts(conn, store_dir, report)
        _rotation(conn, store_dir, domains, keyring, report)
        _rejected(conn, store_dir, names, ack, report)
        _record_rules(conn, domains, keyring, report)
        return report
    except sqlite3.Error as e:
        raise SyncdbError(_("{path} cannot be read ({problem}); restore it from a backup of the "
                            "store folder").format(path=store_dir / 'store.db', problem=e)) from None
    finally:
        conn.close()


def _keyring_fits(conn, store_dir: Path, domains, keyring: Keyring | None, report: Report) -> Keyring | None:
    """The keyring if it is this store's (the check every command that opens the store makes),
    else None, with an alert: the checks that use it would say only misleading things."""
    if keyring is None:
        return None
    try:
        Store(conn, keyring, domains, read_only=True)
    except SyncdbError as e:
        report.alerts.append(str(e))
        report.facts["keyring_mismatch"] = str(e)
        return None
    return keyring


def _hours(stamp: str | None, now: float) -> str:
    try:
        hours = (now - time.mktime(time.strptime(stamp or "", "%Y-%m-%dT%H:%M:%S"))) / 3600
    except ValueError:
        return "?"
    return (_("{hours:.0f} h") if hours >= 10 else _("{hours:.1f} h")).format(hours=hours)


def _communities(conn, names, now, report: Report) -> None:
    lines, facts = [], []
    for code, enrolled in conn.execute("SELECT code, enrolled FROM communities ORDER BY code"):
        # The last bundles applied and received by the primary key, not an aggregate over all the years' bundles.
        applied = office.last_bundle(conn, "applied", code)
        received = office.last_bundle(conn, "received", code)[0]
        if applied[0]:
            line = _("{community}: last bundle {sequence} applied {at} ({hours} ago)").format(
                community=office.label(code, names), sequence=applied[0], at=applied[1], hours=_hours(applied[1], now))
            if received and received > applied[0]:
                line += _("; received up to {sequence}").format(sequence=received)
        elif received:
            line = _("{community}: received up to bundle {sequence}, none applied yet").format(
                community=office.label(code, names), sequence=received)
        else:
            line = _("{community}: enrolled {at}, nothing received yet").format(
                community=office.label(code, names), at=enrolled)
        lines.append(line)
        facts.append({"code": code, "name": names.get(code), "last_applied": applied[0] or 0,
                      "applied_at": applied[1], "last_received": received or 0})
    report.sections.append((N_("Communities enrolled"), lines))
    report.facts["communities"] = facts


def _held(conn, store_dir, domains, keyring, names, now, report: Report) -> None:
    entries = bundles.held(conn, store_dir, domains, keyring, now)
    lines = []
    for e in entries:
        who = office.label(e.origin, names)
        lines.append(_("{community} bundle {sequence} ({state}): {why}").format(
            community=who, sequence=e.sequence, state=e.state_shown, why=e.why))
        if e.needs_person:
            report.alerts.append(_("bundle {sequence} of {community} is {state}: {why}").format(
                sequence=e.sequence, community=who, state=e.state_shown, why=e.why))
    report.sections.append((N_("Bundles not applied"), lines))
    report.facts["not_applied"] = [e.as_dict() for e in entries]


def _read_ack(store_dir: Path) -> dict:
    try:
        ack = json.loads((store_dir / ACK_FILE).read_text(encoding="utf-8"))
        return ack if isinstance(ack, dict) else {}
    except (OSError, ValueError):
        return {}


def refusals(store_dir: Path) -> list[dict]:
    """The quarantine's refusal records, oldest first, each with its sortable ``stamp``.

    A damaged inbox copy (``inbox-NAME``) is not a refusal: it is shown with
    the bundle it holds back; bundles skipped or forgotten are not either.
    """
    out = []
    for path in office.quarantine_dir(store_dir).glob("*.reason.json"):
        stamp = _STAMP.match(path.name)
        if not stamp:
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {"reason": "unreadable", "message": _("the record {name} cannot be read").format(name=path.name)}
        out.append(dict(record, stamp=stamp[1], file=path.name))
    out.sort(key=lambda r: r["stamp"])
    return out


def _quarantine(store_dir: Path, names, ack: dict, report: Report) -> None:
    seen = str(ack.get("quarantine", ""))
    by_sender: dict[str, list[dict]] = {}
    for record in refusals(store_dir):
        by_sender.setdefault(str(record.get("origin") or "unknown"), []).append(record)
    lines = []
    for sender, records in sorted(by_sender.items()):
        new = [r for r in records if r["stamp"] > seen]
        reasons = sorted({str(r.get("reason")) for r in records})
        who = _("senders not verified") if sender == "unknown" else office.label(sender, names)
        lines.append(_("{community}: {n} refused ({reasons}), {new} since the last --ack").format(
            community=who, n=len(records), reasons=', '.join(reasons), new=len(new)))
        for r in records[-SHOWN:]:
            seq = " " + _("bundle {sequence}").format(sequence=r['sequence']) if r.get("sequence") is not None else ""
            lines.append(f"    {r.get('refused', r['stamp'])}{seq} [{r.get('reason')}]: {_short(r.get('message'))}")
        if new:
            report.alerts.append(_(
                "{n} bundle(s) from {community} refused since the last acknowledgement ({reasons}): see above; "
                "once dealt with, `syncdb status {store} --ack`").format(
                n=len(new), community=who, reasons=', '.join(sorted({str(r.get('reason')) for r in new})),
                store=store_dir))
    report.sections.append((N_("Refused at receipt (quarantine)"), lines))


def _short(text, limit: int = 240) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _conflicts(conn, store_dir: Path, report: Report) -> None:
    rows = conflicts.open_by_kind(conn)  # a store fresh from office init: its stand-in, empty
    lines = [_("{kind}: {n} open (oldest opened {oldest})").format(kind=kind, n=n, oldest=oldest)
             for kind, n, oldest in rows]
    total = sum(n for _kind, n, _oldest in rows)
    report.facts["open_conflicts"] = {kind: n for kind, n, _oldest in rows}
    if total:
        report.alerts.append(_("{n} open conflict(s): settle them with `syncdb conflicts review {store}`").format(
            n=total, store=store_dir))
    report.sections.append((N_("Open conflicts"), lines))


def key_ids_in_use(conn, domains: dict[str, Domain]) -> set[int]:
    """The data keys the store's sealed values are sealed under (the key id is each value's second byte)."""
    used: set[int] = set()
    sensitive: dict[str, set[str]] = {}
    for domain in domains.values():
        for table in domain.tables.values():
            sensitive[table.qualified] = set(table.sensitive_columns)
            name = table_name(table)
            if not bundles.has_table(conn, name):
                continue
            held = {row[1] for row in conn.execute(f"PRAGMA table_info([{name}])")}
            # A row's values sealed together (store version 4), or each alone (a store not upgraded yet).
            for column in ["_sealed"] if "_sealed" in held else [c for c in table.sensitive_columns if c in held]:
                used |= {b[0] for (b,) in conn.execute(
                    f"SELECT DISTINCT substr([{column}], 2, 1) FROM [{name}] WHERE typeof([{column}]) = 'blob'")
                    if b}
    if bundles.has_table(conn, "frontier"):
        used |= {b[0] for (b,) in conn.execute(
            "SELECT DISTINCT substr(value, 2, 1) FROM frontier WHERE typeof(value) = 'blob'") if b}
    used |= conflicts.data_keys_used(conn, sensitive)
    return used


def _rotation(conn, store_dir: Path, domains, keyring: Keyring | None, report: Report) -> None:
    used = sorted(key_ids_in_use(conn, domains))
    current = int(keyring.data_key_id) if keyring else None
    shown = ", ".join(map(str, used)) or _("none yet")
    line = _("values sealed under data key(s): {keys}").format(keys=shown)
    if current is not None:
        line += _("; the keyring's current key is {key}").format(key=current)
    else:
        line += _(" (set SYNCDB_KEY_FILE or SYNCDB_PASSPHRASE to compare with the keyring's current key)")
    unfinished = len(used) > 1 or (current is not None and used and used != [current])
    report.facts["keys"] = {"in_use": used, "current": current, "rotation_unfinished": bool(unfinished)}
    if unfinished:
        report.alerts.append(_("a key rotation is unfinished (values under data keys {keys}): run "
                               "`syncdb keys rotate {store}` again to finish it").format(keys=shown, store=store_dir))
    report.sections.append((N_("Keys"), [line]))


def _rejected(conn, store_dir: Path, names, ack: dict, report: Report) -> None:
    seen = int(ack.get("rejected", 0) or 0)
    lines = []
    for origin, n, new, last in conn.execute(
            "SELECT origin, count(*), sum(id > ?), max(at) FROM rejected GROUP BY origin ORDER BY origin", (seen,)):
        who = office.label(origin, names)
        lines.append(_("{community}: {n} record(s) refused by the merge, {new} since the last --ack "
                       "(latest {last})").format(community=who, n=n, new=new, last=last))
        for sequence, tbl, shown, col, why in reversed(conn.execute(
                "SELECT sequence, tbl, shown_key, field, why FROM rejected WHERE origin = ? ORDER BY id DESC "
                f"LIMIT {SHOWN}", (origin,)).fetchall()):
            lines.append("    " + _("bundle {sequence} / {table} / {key} / {column}: {why}").format(
                sequence=sequence, table=tbl, key=shown, column=col, why=_short(why)))
        if new:
            report.alerts.append(_("{n} record(s) from {community} refused by the merge since the last "
                                   "acknowledgement: the community corrects them and pushes again; once told, "
                                   "`syncdb status {store} --ack`").format(n=new, community=who, store=store_dir))
    report.sections.append((N_("Refused by the merge (rejected records)"), lines))


RULES_SHOWN = 20  # broken record rules listed in full; the rest are counted


def _record_rules(conn, domains, keyring: Keyring | None, report: Report) -> None:
    """Records that break a record rule (references, implies, one_per): warnings, never refusals.

    The merge accepts them, since whether a reference holds may depend on which
    bundle came first; here they are listed for the communities to correct.
    Checking needs the keyring (the values are decrypted in memory only).
    """
    heading = N_("Record rules broken (warnings: references, implies, one_per)")
    if keyring is None:
        report.sections.append((heading, [_("not checked: the keyring is needed (SYNCDB_KEY_FILE or "
                                            "SYNCDB_PASSPHRASE)")]))
        return
    store = Store(conn, keyring, domains, read_only=True)

    def live_records(table):
        cells = Cells(table, integrity.read_columns(table, domains))
        for key, *values in conn.execute(f"SELECT _key, {cells.sql} FROM [{table_name(table)}] WHERE _exists = 1"):
            yield dict(zip(cells.columns, cells.values(store.seals, key, values)))

    lines = integrity.office_warnings(live_records, domains)
    shown = lines[:RULES_SHOWN]
    if len(lines) > RULES_SHOWN:
        shown.append(_("… and {n} more").format(n=len(lines) - RULES_SHOWN))
    report.sections.append((heading, shown))
    report.facts["record_rules"] = lines


def acknowledge(store_dir) -> dict:
    """Mark every refusal and rejected record so far as seen: they stop making status exit 1."""
    store_dir = Path(store_dir)
    conn = bundles.read_only(store_dir)
    try:
        (rejected,) = conn.execute("SELECT coalesce(max(id), 0) FROM rejected").fetchone()
    finally:
        conn.close()
    records = refusals(store_dir)
    ack = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "rejected": rejected,
           "quarantine": records[-1]["stamp"] if records else str(_read_ack(store_dir).get("quarantine", ""))}
    write_atomic(store_dir / ACK_FILE, json.dumps(ack, indent=2).encode())
    return ack


# ---------------------------------------------------------------- a community

def _state_read_only(folder: Path) -> sqlite3.Connection:
    path = community.state_dir(folder) / "state.db"
    if not path.is_file():
        raise SyncdbError(_("{path} is missing: {folder} was set up for sync but its state is gone; restore the "
                            "folder's .syncdb from a backup, or call the street office's data administrator").format(
            path=path, folder=folder))
    try:
        conn = open_read_only(path)
        conn.execute("SELECT count(*) FROM bundles").fetchone()
    except sqlite3.Error as e:
        raise SyncdbError(_("{path} cannot be read ({problem}); restore the folder's .syncdb from a backup").format(
            path=path, problem=e)) from None
    return conn


def community_status(workdir, max_lag_hours: float = MAX_LAG_HOURS, now: float | None = None,
                     domains: dict[str, Domain] | None = None) -> Report:
    """A community folder's status; with ``domains``, the tables the next push would hold whole."""
    folder = Path(workdir)
    now = time.time() if now is None else now
    code = community.read_config(folder).get("code", "?")
    conn = _state_read_only(folder)
    try:
        report = Report(_("Community {code} in {folder}").format(code=code, folder=folder))
        _outbox(conn, folder, max_lag_hours, now, report)
        _held_back(conn, report, _whole_tables(folder, domains, conn))
        _superseded(conn, report)
        return report
    finally:
        conn.close()


def _outbox(conn, folder: Path, max_lag_hours: float, now: float, report: Report) -> None:
    pending = conn.execute("SELECT sequence, file, changes, created FROM bundles WHERE acknowledged IS NULL "
                           "ORDER BY sequence").fetchall()
    lines = []
    for sequence, name, changes, created in pending:
        missing = not (community.outbox_dir(folder) / name).is_file()
        lines.append(_("bundle {sequence}: {n} change(s), made {at}").format(sequence=sequence, n=changes, at=created)
                     + (_(" — its file is missing") if missing else ""))
        if missing:
            report.alerts.append(_("bundle {sequence} is missing from the outbox ({name}) although the office never "
                                   "acknowledged it: call the street office's data administrator").format(
                sequence=sequence, name=name))
    if pending:
        age = bundles.age_seconds(pending[0][3], now) / 3600
        if age > max_lag_hours:
            report.alerts.append(_("bundle {sequence} has waited {age:.0f} h for the office to acknowledge it "
                                   "(more than {most:g} h): check that `syncdb push` runs and reaches the "
                                   "office (its log says why not)").format(
                sequence=pending[0][0], age=age, most=max_lag_hours))
    report.sections.append((_("Outbox: {n} bundle(s) the office has not acknowledged").format(n=len(pending)), lines))
    last = conn.execute("SELECT sequence, acknowledged FROM bundles WHERE acknowledged IS NOT NULL "
                        "ORDER BY acknowledged DESC, sequence DESC LIMIT 1").fetchone()
    report.sections.append((N_("Office"), [_("last acknowledged bundle {sequence} at {at}").format(
        sequence=last[0], at=last[1]) if last else _("the office has acknowledged no bundle yet")]))


def _key_text(key_json: str) -> str:
    try:
        return " / ".join(map(str, json.loads(key_json)))
    except ValueError:
        return key_json


def _whole_tables(folder: Path, domains, conn) -> list[str]:
    """The deletions of whole tables the next push would hold, each with what to do."""
    if not domains:
        return []
    try:
        found = community.deletions_to_hold(folder, domains, conn)
    except sqlite3.Error as e:
        raise SyncdbError(_("a working database in {folder} cannot be read ({problem}); check it with "
                            "`syncdb validate {folder}`").format(folder=folder, problem=e)) from None
    again = f"syncdb push {folder} --to URL (or --outbox DIR) --confirm-deletes"
    return [held.message(again) for held in found]


def _held_back(conn, report: Report, tables: list[str] = ()) -> None:
    rows = conn.execute("SELECT tbl, key, why FROM held ORDER BY tbl, key").fetchall() \
        if bundles.has_table(conn, "held") else []
    lines = [f"{tbl} / {_key_text(key)}: {holds.shown_why(why)}" for tbl, key, why in rows]
    for line in tables:  # the whole table, before its records
        report.alerts.append(_("the next push holds back deletions: {what}").format(what=line))
    lines = list(tables) + lines
    if rows:
        report.alerts.append(_("{n} record(s) are held back, not sent until fixed: correct them in the "
                               "working database as listed; the next push sends them").format(n=len(rows)))
    report.sections.append((N_("Held back (not sent until fixed)"), lines))


def _superseded(conn, report: Report) -> None:
    rows = conn.execute("SELECT tbl, key, col, owner, pulled FROM superseded ORDER BY tbl, key, col").fetchall() \
        if bundles.has_table(conn, "superseded") else []
    lines = [_("{table} / {key} / {column}: the record belongs to {owner} (pulled {at})").format(
        table=tbl, key=_key_text(key), column=col, owner=owner or _("another community"), at=pulled)
        for tbl, key, col, owner, pulled in rows]
    if rows:
        report.alerts.append(_("the office did not keep this community's value of {n} cell(s): if the "
                               "resident lives here, ask the community holding the record to transfer them; "
                               "otherwise correct or remove the record here").format(n=len(rows)))
    report.sections.append((N_("Superseded at the office"), lines))
