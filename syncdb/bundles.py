"""The office's bundles as a person sees them, and what to do with one that cannot apply.

A community's bundles apply in sequence. When one of them cannot be applied
(its inbox copy was damaged, it was taken in under caps the office has
lowered since, a rule fails on it), the merge holds it and every later
bundle of that community behind it, so nothing is applied out of order.
This module says what is held and why (``held``, ``listing``), and gives
the data administrator two ways on:

- ``resend``: the office forgets the bundle (its ``received`` row, and its
  inbox file, moved to quarantine) so that the community's next push sends
  it again. Only a community that still holds the bundle can: one that
  pushes over the network deletes each bundle once the office has
  acknowledged it, so for such a community this leaves a gap that only
  ``skip`` closes; one that carries bundles on a USB stick keeps them in its
  outbox until the office's acknowledgement reaches it, and that counts only
  bundles applied (or skipped), never one held here.
- ``skip``: the bundle is given up, with a reason. In one transaction the
  skip is recorded in the ``skipped`` table (who, when, why), appended to the
  audit ledger, and the bundle is entered in ``applied`` with no changes, so
  the merge moves on to the community's later bundles. What the bundle
  carried is not lost: the office's acknowledgement to that community then
  asks for every record again (header ``resend``), and the community's next
  push after its next pull sends every record whole.
"""

from __future__ import annotations

import getpass
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from . import audit, bundle, conflicts, limits, office
from .crypto import Keyring, PublicKey, Secret
from .errors import SyncdbError
from .files import storage_error, write_atomic
from .i18n import N_, _
from .schema import Domain
from .store import STORE_TABLES, open_store

SKIPPED_TABLE = """
CREATE TABLE IF NOT EXISTS skipped (
    origin TEXT NOT NULL, sequence INTEGER NOT NULL, sha256 TEXT, file TEXT, who TEXT NOT NULL,
    at TEXT NOT NULL, why TEXT NOT NULL, PRIMARY KEY (origin, sequence))
"""
# A bundle received this long ago and still not applied has been passed over by a
# merge (serve merges within seconds, a scheduled `syncdb merge` nightly).
UNMERGED_GRACE = 3600.0
MAX_REASON = 500


@dataclass
class Entry:
    """One bundle of a community as the office holds it."""

    origin: str
    sequence: int
    state: str  # applied | skipped | held | waiting | unmerged | missing
    file: str | None = None
    received: str | None = None
    applied: str | None = None
    changes: int | None = None
    why: str = ""
    needs_person: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @property
    def state_shown(self) -> str:
        """The state as a person reads it (``state`` stays the word machines read)."""
        return _(STATES.get(self.state, self.state))


STATES = {"applied": N_("applied"), "skipped": N_("skipped"), "held": N_("held"), "waiting": N_("waiting"),
          "unmerged": N_("unmerged"), "missing": N_("missing")}


def read_only(store_dir) -> sqlite3.Connection:
    """The store database opened so that nothing can be written through it."""
    path = Path(store_dir) / "store.db"
    if not path.is_file() or not office.keyring_path(store_dir).exists():
        raise SyncdbError(_("{store} is not an office store (no store.db and keyring.json there); "
                            "give the folder `syncdb office init` made").format(store=store_dir))
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
        conn.execute("SELECT count(*) FROM communities").fetchone()
        stand_ins(conn)
        conn.execute("PRAGMA query_only = 1")
    except sqlite3.Error as e:
        raise SyncdbError(_("{path} cannot be read as an office store ({problem}); restore it from a backup "
                            "of the store folder").format(path=path, problem=e)) from None
    return conn


def stand_ins(conn: sqlite3.Connection) -> None:
    """Empty TEMP tables (in memory) for the store tables the first merge has not made yet,
    so a store fresh from `office init` reads as one with nothing in it; the file is untouched."""
    for statement in ";".join([STORE_TABLES, conflicts.TABLES, audit.LEDGER_TABLES, SKIPPED_TABLE]).split(";"):
        words = statement.split()
        if words[:5] == ["CREATE", "TABLE", "IF", "NOT", "EXISTS"] and not has_table(conn, words[5]):
            conn.execute("CREATE TEMP TABLE " + statement.strip()[len("CREATE TABLE "):])


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def age_seconds(stamp: str | None, now: float) -> float:
    """Seconds since a store time stamp (local time, as the store writes them); 0 if unreadable."""
    try:
        return now - time.mktime(time.strptime(stamp or "", "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0.0


def held(conn: sqlite3.Connection, store_dir, domains: dict[str, Domain], keyring: Keyring | None = None,
         now: float | None = None) -> list[Entry]:
    """Every received bundle not yet applied, and a missing one that holds others back, with why.

    Reads only. The reasons the merge itself would find from the files are
    found here too (a gap, a damaged or missing inbox copy, a schema the
    office does not have, and with ``keyring`` a payload that cannot be
    opened); a bundle with none of these waits for the next merge, which
    applies it or says why not.
    """
    now = time.time() if now is None else now
    last, queues = office.not_applied(conn, "sequence, file, received")
    keys = office.signer_keys(conn, PublicKey.read(office.public_key_path(store_dir)))
    out = []
    for origin, queue in sorted(queues.items()):
        expected = last.get(origin, 0) + 1
        first, name, received = queue[0]
        if first != expected:
            out.append(Entry(origin, expected, "missing", needs_person=True, why=_(
                "bundle {sequence} never reached the office (or was forgotten there), and {n} later "
                "bundle(s) wait for it: the community sends it with its next push if it still has it; "
                "if it does not, give it up with `syncdb bundles skip {store} {code} {sequence} --reason TEXT`").format(sequence=expected, n=len(queue), store=store_dir, code=origin)))
        else:
            why, cause = _diagnose(Path(store_dir), domains, keys, keyring, origin, first, name)
            if cause:
                out.append(Entry(origin, first, "held", name, received, why=why, needs_person=True))
            else:
                late = age_seconds(received, now) > UNMERGED_GRACE
                out.append(Entry(origin, first, "unmerged", name, received, needs_person=late, why=(
                    _("received {at} and not applied since: run `syncdb merge {store}`, which applies "
                      "it or says why it holds it") if late else _("received {at}; the next merge applies it")
                ).format(at=received, store=store_dir)))
            queue = queue[1:]
        for sequence, later, at in queue:
            out.append(Entry(origin, sequence, "waiting", later, at,
                             why=_("waits for bundle {sequence}").format(sequence=expected)))
    return out


def _diagnose(store_dir: Path, domains, keys, keyring, origin: str, sequence: int,
              name: str) -> tuple[str, bool]:
    """(why, True) when the next bundle of a community cannot be applied as it is, else ("", False)."""
    path = office.inbox_dir(store_dir) / name
    what_now = _("ask the community to send it again (`syncdb bundles resend {store} {code} {sequence}`) "
                 "or give it up (`syncdb bundles skip {store} {code} {sequence} --reason TEXT`)").format(
        store=store_dir, code=origin, sequence=sequence)
    if not path.is_file():
        return _("its inbox file {path} is missing: restore it from a backup of the store folder, or {what_now}").format(
            path=path, what_now=what_now), True
    try:
        with bundle.Reader(path) as reader:
            try:
                reader.verify(keys.get)
            except bundle.BundleError as e:
                return _("its inbox copy no longer verifies ({problem}): restore {path} from a backup of the store "
                         "folder, or {what_now}").format(problem=e, path=path, what_now=what_now), True
            mismatch = bundle.schema_mismatch(domains, reader.header)  # the merge's own test
            if mismatch:
                return mismatch, True
            if keyring is not None:
                try:
                    for _change in reader.changes(keyring, limits.load(store_dir)):
                        pass
                except bundle.BundleError as e:
                    return _("it cannot be applied as community {code} made it ({problem}); if the office's limits "
                             "were lowered since it arrived, raise them in {file} and merge "
                             "again, or {what_now}").format(code=origin, problem=e, file=store_dir / 'limits.json',
                                                            what_now=what_now), True
    except bundle.BundleError as e:  # the header itself
        return _("its inbox copy no longer verifies ({problem}): restore {path} from a backup of the store "
                 "folder, or {what_now}").format(problem=e, path=path, what_now=what_now), True
    return "", False


def listing(store_dir, domains: dict[str, Domain], keyring: Keyring | None = None, code: str | None = None,
            everything: bool = False) -> list[Entry]:
    """Each community's bundles: the applied and skipped (all, or the last of each community
    unless ``everything``), then what is held and why. Reads only."""
    conn = read_only(store_dir)
    try:
        out = []
        skipped = {}
        if has_table(conn, "skipped"):
            skipped = {(o, s): (who, at, why) for o, s, who, at, why in conn.execute(
                "SELECT origin, sequence, who, at, why FROM skipped")}
        columns = ("SELECT a.origin, a.sequence, r.file, r.received, a.applied, a.changes FROM applied a "
                   "LEFT JOIN received r ON r.origin = a.origin AND r.sequence = a.sequence ")
        if everything:
            where = "WHERE a.origin = ?" if code else ""
            rows = conn.execute(f"{columns}{where} ORDER BY a.origin, a.sequence", (code,) if code else ()).fetchall()
        else:
            # Each community's last bundle by the primary key, and the bundles skipped: never the years'
            # bundles between them.
            rows = [row for origin in ([code] if code else office.origins(conn, "applied"))
                    for row in conn.execute(f"{columns}WHERE a.origin = ? ORDER BY a.sequence DESC LIMIT 1",
                                            (origin,))]
            rows += [row for origin, sequence in skipped if not code or origin == code
                     for row in conn.execute(f"{columns}WHERE a.origin = ? AND a.sequence = ?", (origin, sequence))]
            rows = sorted(set(rows), key=lambda row: (row[0], row[1]))
        latest = {origin: sequence for origin, sequence, *_ in rows}
        for origin, sequence, name, received, applied, changes in rows:
            skip = skipped.get((origin, sequence))
            if not everything and not skip and latest[origin] != sequence:
                continue
            if skip:
                out.append(Entry(origin, sequence, "skipped", name, received, applied, 0,
                                 why=_("skipped by {who} at {at}: {why}").format(who=skip[0], at=skip[1], why=skip[2])))
            else:
                out.append(Entry(origin, sequence, "applied", name, received, applied, changes))
        out += [e for e in held(conn, store_dir, domains, keyring) if not code or e.origin == code]
        out.sort(key=lambda e: (e.origin, e.sequence))
        return out
    finally:
        conn.close()


@dataclass
class Skipped:
    origin: str
    sequence: int
    file: str | None  # where the bundle's bytes are now (quarantine), or None if it never arrived
    later: int  # bundles of the community received after it, now free to apply


def skip(store_dir, secret: Secret, domains: dict[str, Domain], code: str, sequence: int, reason: str,
         who: str | None = None) -> Skipped:
    """Give up the next bundle of a community for good, with a reason; its later bundles then apply."""
    reason = _checked_reason(reason)
    who = who or _user()
    store_dir = Path(store_dir)
    try:
        with open_store(store_dir, secret, domains, write=True) as store, store.transaction() as conn:
            digest, name = _next_in_line(conn, store_dir, code, sequence)
            at = time.strftime("%Y-%m-%dT%H:%M:%S")
            conn.execute("INSERT INTO skipped VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (code, sequence, digest, name, who, at, reason))
            ledger = audit.Ledger(store, name or bundle.file_name(code, sequence), code)
            ledger.append("", "-", b"", "skip", {"sequence": sequence, "sha256": digest, "by": who, "why": reason})
            ledger.commit()
            # No changes: the merge reads `applied` to know what comes next, and moves past it.
            conn.execute("INSERT INTO applied VALUES (?, ?, ?, ?, 0, 0)", (code, sequence, digest or "-", at))
            (later,) = conn.execute("SELECT count(*) FROM received WHERE origin = ? AND sequence > ?",
                                    (code, sequence)).fetchone()
    except sqlite3.Error as e:
        raise storage_error(e, store_dir) from None
    kept = _set_aside(store_dir, name, "skipped", {"origin": code, "sequence": sequence, "by": who, "at": at,
                                                   "why": reason}) if name else None
    return Skipped(code, sequence, kept, later)


def _next_in_line(conn, store_dir: Path, code: str, sequence: int) -> tuple[str | None, str | None]:
    """(sha256, inbox file name) of the bundle if it is the community's next to apply, else raise."""
    known = conn.execute("SELECT 1 FROM communities WHERE code = ? UNION "
                         "SELECT 1 FROM received WHERE origin = ?", (code, code)).fetchone()
    if known is None:
        raise SyncdbError(_("community {code} is not enrolled at {store} and sent nothing; check the code").format(
            code=code, store=store_dir))
    done = office.settled_in(conn, code)
    if sequence <= done:
        raise SyncdbError(_("bundle {sequence} of {code} is already applied or skipped (the office is at bundle "
                            "{done}); see `syncdb bundles list {store}`").format(
            sequence=sequence, code=code, done=done, store=store_dir))
    if sequence != done + 1:
        # Bundles apply in order: moving the mark past this one would pass over those before it.
        raise SyncdbError(_("bundle {sequence} of {code} is not next in line: bundle {next} is; deal with "
                            "that one first (`syncdb bundles list` says why it waits)").format(
            sequence=sequence, code=code, next=done + 1))
    row = conn.execute("SELECT sha256, file FROM received WHERE origin = ? AND sequence = ?",
                       (code, sequence)).fetchone()
    if row is None and not conn.execute("SELECT 1 FROM received WHERE origin = ? AND sequence > ?",
                                        (code, sequence)).fetchone():
        raise SyncdbError(_("bundle {sequence} of {code} has not arrived, and nothing after it has: nothing "
                            "waits for it, so there is nothing to skip").format(sequence=sequence, code=code))
    return (row[0], row[1]) if row else (None, None)


def _checked_reason(reason: str) -> str:
    text = (reason or "").strip()
    if not text:
        raise SyncdbError(_("say why the bundle is skipped (--reason TEXT): the audit ledger keeps it"))
    if len(text) > MAX_REASON or any(not ch.isprintable() for ch in text):
        raise SyncdbError(_("the reason must be one line of at most {most} printable characters").format(
            most=MAX_REASON))
    return text


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment (a service account): still recorded
        return "unknown"


@dataclass
class Forgotten:
    origin: str
    sequence: int
    file: str | None  # where the forgotten copy is kept (quarantine)


def resend(store_dir, code: str, sequence: int, who: str | None = None) -> Forgotten:
    """Forget a received, unapplied bundle, so that the community's next push sends it again.

    Only the community can send it again, and only if it still holds it (see
    the module's docstring); otherwise its later bundles wait until this one
    is skipped.
    """
    store_dir = Path(store_dir)
    conn = office.connect(store_dir)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT file FROM received WHERE origin = ? AND sequence = ?",
                               (code, sequence)).fetchone()
            if row is None:
                raise SyncdbError(_("the office holds no bundle {sequence} from {code}; "
                                    "see `syncdb bundles list {store}`").format(
                    sequence=sequence, code=code, store=store_dir))
            if conn.execute("SELECT 1 FROM applied WHERE origin = ? AND sequence = ?", (code, sequence)).fetchone():
                raise SyncdbError(_("bundle {sequence} of {code} is already applied (or skipped); the office keeps "
                                    "what it applied, so it cannot be sent again").format(sequence=sequence, code=code))
            conn.execute("DELETE FROM received WHERE origin = ? AND sequence = ?", (code, sequence))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as e:
        raise storage_error(e, store_dir) from None
    finally:
        conn.close()
    # Moved only once forgotten: the other way round a crash would leave a received bundle with no file.
    kept = _set_aside(store_dir, row[0], "forgotten", {"origin": code, "sequence": sequence, "by": who or _user(),
                                                       "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return Forgotten(code, sequence, kept)


def _set_aside(store_dir: Path, name: str, what: str, record: dict) -> str | None:
    """Move an inbox file to quarantine as ``WHAT-NAME`` with a small record beside it; its new path."""
    source = office.inbox_dir(store_dir) / name
    target = office.quarantine_dir(store_dir) / f"{what}-{name}"
    target.parent.mkdir(exist_ok=True)
    write_atomic(target.with_name(target.name + ".json"),
                 json.dumps(dict(record, state=what), ensure_ascii=False, indent=2).encode())
    try:
        source.replace(target)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise storage_error(e, source) from None
    return str(target)
