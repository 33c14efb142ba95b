"""The cases of the cross-domain checks: the one module that reads and writes their tables.

A case is one finding of one check about one subject (a person, a
household, a house), keyed by (check, subject, digest): the subject is
kept as a blind index and the digest is a keyed MAC of the data that shows
the problem, so neither can be read back. What the finding says (the
subject, the sentence, the figures, the records' keys) is sealed like every
sensitive value of the store; so is a dismissal's reason.

States: ``open`` → ``confirmed`` or ``dismissed`` (by a person, with a
reason) → ``fixed`` (by the engine, when the data no longer shows the
problem). A dismissed case stays dismissed while its data stays the same;
the same subject showing the problem with other data is a new case. Every
change of state is an entry in the audit ledger (audit.py): who, when, and
the reason sealed.

checks.py runs the checks and hands ``reconcile`` what they found; the CLI
and the office pages read ``listing``, ``counts`` and ``get``.
"""

from __future__ import annotations

import getpass
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from types import SimpleNamespace

from cryptography.exceptions import InvalidTag

from . import audit
from .errors import SyncdbError
from .i18n import N_, _
from .store import Store

log = logging.getLogger(__name__)

# case_records_by_case: a case's records are written again each time a check finds it (_case_for);
# without it each of those writes read the whole table, and a run's cost grew with the square of the cases.
TABLES = """
CREATE TABLE IF NOT EXISTS cases (
    id INTEGER PRIMARY KEY, check_name TEXT NOT NULL, subject_kind TEXT NOT NULL, subject BLOB NOT NULL,
    digest BLOB NOT NULL, community TEXT, severity TEXT NOT NULL, state TEXT NOT NULL, finding BLOB NOT NULL,
    opened TEXT NOT NULL, checked TEXT NOT NULL, changed TEXT NOT NULL, changed_by TEXT NOT NULL, reason BLOB);
CREATE UNIQUE INDEX IF NOT EXISTS cases_by_data ON cases (check_name, subject, digest);
CREATE INDEX IF NOT EXISTS cases_by_state ON cases (check_name, state, community);
CREATE TABLE IF NOT EXISTS case_records (
    tbl TEXT NOT NULL, key BLOB NOT NULL, case_id INTEGER NOT NULL, PRIMARY KEY (tbl, key, case_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS case_records_by_case ON case_records (case_id);
CREATE TABLE IF NOT EXISTS check_points (check_name TEXT PRIMARY KEY, point INTEGER NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS check_settings (check_name TEXT PRIMARY KEY, used TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS check_lookups (
    check_name TEXT NOT NULL, index_name TEXT NOT NULL, PRIMARY KEY (check_name, index_name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bearing_checks (
    bit INTEGER PRIMARY KEY CHECK (bit BETWEEN 0 AND 62), check_name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS bearing_tables (id INTEGER PRIMARY KEY, tbl TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS record_bearings (
    tbl_id INTEGER NOT NULL, key BLOB NOT NULL, subject NOT NULL, holders INTEGER NOT NULL,
    PRIMARY KEY (tbl_id, key, subject)) WITHOUT ROWID;
"""

STATES = {"open": N_("open"), "confirmed": N_("confirmed"), "dismissed": N_("dismissed"), "fixed": N_("fixed")}
ACTIVE = ("open", "confirmed")
ENGINE = "syncdb"  # who closes a case whose data no longer shows the problem
MAX_REASON = 500
# The sealing's associated data names the cell a sealed value belongs to; these are the cases' own.
_FINDING = SimpleNamespace(qualified="checks.cases")
LEDGER_BUNDLE = "checks"  # the ledger entries of case changes, apart from every bundle's


@dataclass
class Prepared:
    """A finding as the case table takes it: ``finding`` is sealed here, the rest is kept as it is."""
    subject: bytes  # blind index of the subject
    digest: bytes  # keyed MAC of the data that shows the problem
    community: str | None
    finding: dict  # subject, message, figures, records: sealed
    records: list[tuple[str, bytes]]  # (table, blind key) of the records concerned


def ensure(store: Store) -> None:
    """Make the cases' tables if this store has not got them yet (a store made before checks existed)."""
    for statement in (s.strip() for s in TABLES.split(";")):
        if statement:
            store.conn.execute(statement)


def present(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cases'").fetchone() is not None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def user() -> str:
    """Who is running the command, for the ledger when no --by is given."""
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment (a service account): still recorded
        return "unknown"


# ---------------------------------------------------------------- sealing

def digest(store: Store, evidence) -> bytes:
    """A keyed MAC of the data that shows a problem: equal for equal data, unreadable without the keys."""
    text = json.dumps(evidence, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return store.suite.mac(store.suite.derive(store.keyring.index_key, b"", b"syncdb check digest"),
                           text.encode())[:16]


def subject_index(store: Store, kind: str, value: str) -> bytes:
    """The blind index a case keeps for its subject: a person's is the store's own ``id_number__bi``,
    so a page can join a case to the person's records without any plaintext."""
    return store.blind_id(value if kind == "person" else f"{kind}|{value}")


def _seal(store: Store, column: str, value, cell: bytes) -> bytes:
    return store.seal(value, _FINDING, column, cell)


def _open(store: Store, column: str, sealed, cell: bytes):
    return store.open(sealed, _FINDING, column, cell)


def _finding_cell(check: str, subject: bytes, digest_: bytes) -> bytes:
    return check.encode() + b"|" + bytes(subject) + bytes(digest_)


def _reason_cell(case_id: int) -> bytes:
    return f"case {case_id}".encode()


def _bearing_cell(tbl: str, key: bytes) -> bytes:
    return f"bearing|{tbl}|".encode() + bytes(key)


# ---------------------------------------------------------------- the engine's side

def points(store: Store) -> dict[str, int]:
    """Check name -> the point in the store's history (store.change_point) it last checked up to."""
    if not present(store.conn):
        return {}
    return dict(store.conn.execute("SELECT check_name, point FROM check_points"))


def set_point(store: Store, check: str, point: int) -> None:
    store.conn.execute("INSERT OR REPLACE INTO check_points VALUES (?, ?, ?)", (check, point, _now()))


def set_lookups(store: Store, check: str, indexes: list[str]) -> None:
    """The look-up indexes a check declared at its last run (checks.stale_lookup_indexes)."""
    store.conn.execute("DELETE FROM check_lookups WHERE check_name = ?", (check,))
    store.conn.executemany("INSERT INTO check_lookups VALUES (?, ?)", [(check, name) for name in indexes])


def lookups_claimed(store: Store, since: str) -> set[str] | None:
    """The look-up indexes declared by the checks that ran at ``since`` or later (an ISO time, as
    check_points keeps it), whichever process ran them; None for a store that has not kept them yet."""
    conn = store.conn
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'check_lookups'").fetchone() is None:
        return None
    return {name for (name,) in conn.execute(
        "SELECT l.index_name FROM check_lookups l JOIN check_points p ON p.check_name = l.check_name "
        "WHERE p.at >= ?", (since,))}


def settings_used(store: Store) -> dict[str, dict]:
    """Check name -> the settings its last run used (checks.py decides from them whether to look at everything)."""
    conn = store.conn
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'check_settings'").fetchone() is None:
        return {}  # cases made before the settings were kept: every check looks at everything once
    return {name: json.loads(used) for name, used in conn.execute("SELECT check_name, used FROM check_settings")}


def set_settings_used(store: Store, check: str, used: dict) -> None:
    store.conn.execute("INSERT OR REPLACE INTO check_settings VALUES (?, ?)", (check, json.dumps(used, sort_keys=True)))


def subjects_on(store: Store, check: str, changed: dict[str, set[bytes]]) -> set[str]:
    """The subjects of the check's open and confirmed cases built on a changed record, decrypted:
    a person who moved out of an overfull house changes the house's case, not only their own."""
    if not present(store.conn):
        return set()
    found, opened = set(), set()
    for tbl, keys in changed.items():
        keys = list(keys)
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            for cid, subject, digest_, sealed in store.conn.execute(
                    f"SELECT c.id, c.subject, c.digest, c.finding FROM case_records r JOIN cases c ON c.id = r.case_id "
                    f"WHERE r.tbl = ? AND r.key IN ({', '.join('?' * len(part))}) AND c.check_name = ? "
                    f"AND c.state IN ('open', 'confirmed')", (tbl, *part, check)):
                if cid not in opened:
                    opened.add(cid)
                    found.add(_open(store, "finding", sealed, _finding_cell(check, subject, digest_))["subject"])
    return found


# ---------------------------------------------------------------- what each record bore on

# A record's subjects, as a check's subjects_of gives them, may come from values that change (a
# person's 户号, a migrant's house): once changed, the store keeps no old value to say which
# household or house the record left. Each check keeps them here, per record: one row per record
# and subject in ``record_bearings``, whose ``holders`` has a bit for each check that keeps it
# (``bearing_checks``; tables by a small id in ``bearing_tables``): the checks that read a
# person's household share one row. A subject that is the value of one of the record's own
# columns the schema does not mark sensitive (a 户号, a house code: the record's row holds it in
# clear already) is kept in clear, as TEXT; any other is sealed, bound to the table and record
# (a BLOB). Their blind index (to compare and to scope) is computed again when read: an HMAC costs
# less than the 16 bytes a row would keep it in. Subjects a record's key alone gives are never
# kept: the key does not change, and a deleted record keeps it. (Store version 3; before,
# ``check_bearings`` kept each subject sealed beside its blind index and the names, one row per
# check: 107 bytes a row against about 37, shared.)
MAX_BEARING_CHECKS = 63  # bits of ``holders``


def _bit(store: Store, check: str, make: bool = False) -> int | None:
    """The check's bit in ``holders`` (given one if ``make``), or None."""
    conn = store.conn
    found = conn.execute("SELECT bit FROM bearing_checks WHERE check_name = ?", (check,)).fetchone()
    if found is None and make:
        taken = {b for (b,) in conn.execute("SELECT bit FROM bearing_checks")}
        if len(taken) >= MAX_BEARING_CHECKS:
            raise SyncdbError(_("more than {n} checks keep what records bore on, and check {name} found no room: "
                                "remove the plugin of a check the office no longer uses (turning one off in "
                                "checks.toml keeps its room)").format(n=MAX_BEARING_CHECKS, name=check))
        bit = min(set(range(MAX_BEARING_CHECKS)) - taken)
        conn.execute("INSERT INTO bearing_checks VALUES (?, ?)", (bit, check))
        return bit
    return None if found is None else found[0]


def needs_bit(store: Store, check: str) -> bool:
    """Has the check no bit in ``holders`` yet (``claim_bit`` gives it one)?"""
    return not _has_bearings(store) or _bit(store, check) is None


def claim_bit(store: Store, check: str, current: set[str]) -> int:
    """The check's bit in ``holders``, given one if it has none (inside the caller's transaction). When all
    are taken, the bit of a check no plugin adds any more (``current``: the names of those that do) is
    cleared and given: what that check kept goes, and so does its record of the settings it used, so it
    looks at every record again if it comes back. Raise SyncdbError when every bit is a current check's."""
    conn = store.conn
    if _bit(store, check) is None:
        taken = dict(conn.execute("SELECT check_name, bit FROM bearing_checks"))
        gone = sorted(name for name in taken if name not in current)
        if len(taken) >= MAX_BEARING_CHECKS and gone:
            bit = taken[gone[0]]
            conn.execute("UPDATE record_bearings SET holders = holders & ~? WHERE holders & ?", (1 << bit, 1 << bit))
            conn.execute("DELETE FROM record_bearings WHERE holders = 0")
            conn.execute("DELETE FROM bearing_checks WHERE bit = ?", (bit,))
            conn.execute("DELETE FROM check_settings WHERE check_name = ?", (gone[0],))
    return _bit(store, check, make=True)


def _table_ids(store: Store) -> dict[str, int]:
    return {tbl: i for i, tbl in store.conn.execute("SELECT id, tbl FROM bearing_tables")}


def _subject(store: Store, tbl: str, key: bytes, stored):
    """A kept subject as the check gave it: in clear (TEXT), or opened in memory (a sealed BLOB)."""
    return stored if isinstance(stored, str) else _open(store, "subject", stored, _bearing_cell(tbl, key))


UNOPENED = object()  # a kept subject that does not open: no subject any record has
UNOPENED_INDEX = b"unopened"  # all_bearings: the blind index it stands under (none is 8 bytes long)


def _subject_or_unopened(store: Store, tbl: str, key: bytes, stored):
    """``_subject``, or UNOPENED for a sealed subject that does not open (damaged, or moved from another
    record: the seal is bound to its record). What the checks keep is made from the records, so a run
    building it again replaces such a row (``all_bearings``, ``keep_bearings``) rather than failing on it."""
    try:
        return _subject(store, tbl, key, stored)
    except (InvalidTag, SyncdbError, ValueError):
        return UNOPENED


def bearings(store: Store, check: str, kind: str, tbl: str, keys) -> dict[bytes, dict[bytes, object]]:
    """Blind key -> {blind subject: subject} the check keeps for these records of ``tbl``."""
    found: dict[bytes, dict[bytes, object]] = {}
    if not _has_bearings(store):
        return found
    bit, tbl_id = _bit(store, check), _table_ids(store).get(tbl)
    if bit is None or tbl_id is None:
        return found
    keys = list(keys)
    for start in range(0, len(keys), 500):
        part = keys[start:start + 500]
        for key, stored in store.conn.execute(
                f"SELECT key, subject FROM record_bearings WHERE tbl_id = ? AND key IN ({', '.join('?' * len(part))}) "
                f"AND holders & ?", (tbl_id, *part, 1 << bit)):
            key = bytes(key)
            subject = _subject(store, tbl, key, stored)
            found.setdefault(key, {})[subject_index(store, kind, subject)] = subject
    return found


def all_bearings(store: Store, check: str, kind: str) -> dict[tuple[str, bytes], set[bytes]]:
    """(table, blind key) -> the blind subjects the check keeps for that record, for every record."""
    found: dict[tuple[str, bytes], set[bytes]] = {}
    if not _has_bearings(store):
        return found
    bit = _bit(store, check)
    if bit is None:
        return found
    names = {i: tbl for tbl, i in _table_ids(store).items()}
    blind: dict[str, bytes] = {}  # a 户号 kept for each of its members is indexed once
    unopened = 0
    for tbl_id, key, stored in store.conn.execute(
            "SELECT tbl_id, key, subject FROM record_bearings WHERE holders & ?", (1 << bit,)):
        key, tbl = bytes(key), names[tbl_id]
        if isinstance(stored, str):
            index = blind.get(stored)
            if index is None:
                index = blind[stored] = subject_index(store, kind, stored)
        else:
            subject = _subject_or_unopened(store, tbl, key, stored)
            if subject is UNOPENED:
                unopened += 1
                found.setdefault((tbl, key), set()).add(UNOPENED_INDEX)  # kept now by no record: written again
                continue
            index = subject_index(store, kind, subject)
        found.setdefault((tbl, key), set()).add(index)
    if unopened:
        log.warning(_("check {check}: {count} kept subjects did not open (a damaged store, or one changed by "
                      "hand); they are built again from their records").format(check=check, count=unopened))
    return found


def keep_bearings(store: Store, check: str, now: dict[tuple[str, bytes], dict[bytes, tuple[object, bool]]],
                  before: dict[tuple[str, bytes], set[bytes]]) -> int:
    """Keep ``now`` ((table, blind key) -> {blind subject: (subject, whether it may be kept in clear)}) for
    those records, and nothing for the records only in ``before`` (what was kept for them). Call inside the
    caller's transaction; only the records whose subjects differ are written, and the other checks' bits
    are left as they were. Return how many records were written.

    What is kept for them is read 500 records at a time: a community's first load writes some for
    each of its thousands of records, and one query each was 15,000 queries a load."""
    todo: dict[str, list[bytes]] = {}
    for tbl, key in set(now) | set(before):
        if set(now.get((tbl, key), {})) != before.get((tbl, key), set()):
            todo.setdefault(tbl, []).append(key)
    if not todo:
        return 0
    conn, written = store.conn, 0
    bit, tables = 1 << _bit(store, check, make=True), _table_ids(store)
    for tbl, keys in todo.items():
        if tbl not in tables:
            conn.execute("INSERT INTO bearing_tables (tbl) VALUES (?)", (tbl,))
            tables = _table_ids(store)
        tbl_id = tables[tbl]
        keys.sort()
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            held: dict[bytes, list] = {}
            for key, stored, holders in conn.execute(
                    f"SELECT key, subject, holders FROM record_bearings WHERE tbl_id = ? "
                    f"AND key IN ({', '.join('?' * len(part))})", (tbl_id, *part)):
                held.setdefault(bytes(key), []).append((stored, holders))
            changed, gone, new = [], [], []
            for key in part:
                wanted = {plain: clear for plain, clear in now.get((tbl, key), {}).values()}
                for stored, holders in held.get(key, ()):
                    plain = _subject_or_unopened(store, tbl, key, stored)
                    keep = plain is not UNOPENED and plain in wanted
                    wanted.pop(plain, None)
                    rest = (holders | bit) if keep else (holders & ~bit)
                    if rest == holders:
                        continue
                    if rest:
                        changed.append((rest, tbl_id, key, stored))
                    else:
                        gone.append((tbl_id, key, stored))
                new.extend((tbl_id, key, plain if clear and isinstance(plain, str)
                            else _seal(store, "subject", plain, _bearing_cell(tbl, key)), bit)
                           for plain, clear in wanted.items())
                written += 1
            conn.executemany("UPDATE record_bearings SET holders = ? WHERE tbl_id = ? AND key = ? AND subject = ?",
                             changed)
            conn.executemany("DELETE FROM record_bearings WHERE tbl_id = ? AND key = ? AND subject = ?", gone)
            conn.executemany("INSERT INTO record_bearings VALUES (?, ?, ?, ?)", new)
    return written


@dataclass
class Tally:
    opened: int = 0
    reopened: int = 0
    fixed: int = 0
    kept: int = 0  # open, confirmed or dismissed, and still so


def reconcile(store: Store, check: str, severity: str, kind: str, found: list[Prepared],
              scope: set[bytes] | None) -> Tally:
    """Bring the check's cases in line with what it found on ``scope`` (blind subjects; None: every one).

    Call inside the caller's transaction. A case found again keeps its state
    (a fixed one opens again); an open or confirmed case in scope not found
    again is fixed; every change of state goes to the audit ledger.
    """
    tally, ledger = Tally(), audit.Ledger(store, LEDGER_BUNDLE, store.office_code)
    now, seen = _now(), set()
    for item in found:
        seen.add(_case_for(store, check, severity, kind, item, now, tally, ledger))
    conn = store.conn
    active = conn.execute("SELECT id, subject, state FROM cases WHERE check_name = ? AND state IN ('open', 'confirmed')",
                          (check,)).fetchall()
    for cid, subject, state in active:
        if cid not in seen and (scope is None or bytes(subject) in scope):
            _set_state(store, ledger, cid, check, state, "fixed", ENGINE, now)
            tally.fixed += 1
    ledger.commit()
    return tally


def _case_for(store, check, severity, kind, item: Prepared, now, tally: Tally, ledger) -> int:
    """The case this finding is (made, opened again or brought up to date); return its id."""
    conn = store.conn
    exact = conn.execute("SELECT id, state FROM cases WHERE check_name = ? AND subject = ? AND digest = ?",
                         (check, item.subject, item.digest)).fetchone()
    if exact is None:
        # The same problem showing in other data: an open or confirmed case follows it, a dismissed one does not.
        exact = conn.execute("SELECT id, state FROM cases WHERE check_name = ? AND subject = ? "
                             "AND state IN ('open', 'confirmed') ORDER BY id LIMIT 1",
                             (check, item.subject)).fetchone()
    sealed = _seal(store, "finding", item.finding, _finding_cell(check, item.subject, item.digest))
    if exact is None:
        cid = conn.execute(
            "INSERT INTO cases (check_name, subject_kind, subject, digest, community, severity, state, finding, "
            "opened, checked, changed, changed_by) VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?)",
            (check, kind, item.subject, item.digest, item.community, severity, sealed, now, now, now, ENGINE)).lastrowid
        ledger.append("", "checks.cases", b"", "opened", {"case": cid, "check": check, "state": "open", "by": ENGINE})
        tally.opened += 1
    else:
        cid, state = exact
        conn.execute("UPDATE cases SET digest = ?, community = ?, severity = ?, finding = ?, checked = ? WHERE id = ?",
                     (item.digest, item.community, severity, sealed, now, cid))
        if state == "fixed":
            _set_state(store, ledger, cid, check, state, "open", ENGINE, now)
            tally.reopened += 1
        else:
            tally.kept += 1
    conn.execute("DELETE FROM case_records WHERE case_id = ?", (cid,))
    conn.executemany("INSERT OR IGNORE INTO case_records VALUES (?, ?, ?)",
                     [(tbl, key, cid) for tbl, key in item.records])
    return cid


def _set_state(store: Store, ledger, cid: int, check: str, was: str, state: str, by: str, now: str,
               reason: str | None = None) -> None:
    sealed = _seal(store, "reason", reason, _reason_cell(cid)) if reason else None
    store.conn.execute("UPDATE cases SET state = ?, changed = ?, changed_by = ?, reason = ? WHERE id = ?",
                       (state, now, by, sealed, cid))
    ledger.append("", "checks.cases", b"", state, {"case": cid, "check": check, "state": state, "was": was,
                                                   "by": by, "reason": sealed.hex() if sealed else None})


# ---------------------------------------------------------------- people working a case

def decide(store: Store, case_id: int, state: str, by: str | None = None, reason: str | None = None) -> dict:
    """A person confirms (``confirmed``) or dismisses (``dismissed``, a reason required) a case,
    or opens a dismissed one again (``open``); recorded in the audit ledger. Return the case."""
    if state not in ("confirmed", "dismissed", "open"):
        raise SyncdbError(_("a case can be confirmed, dismissed or opened again, not set to {state}").format(state=state))
    reason = _checked_reason(reason, required=state == "dismissed")
    by = (by or "").strip() or user()
    with store.transaction():
        ensure(store)
        row = store.conn.execute("SELECT check_name, state FROM cases WHERE id = ?", (case_id,)).fetchone()
        if row is None:
            raise _no_case(store, case_id)
        check, was = row
        if was == "fixed":
            raise SyncdbError(_("case #{id} is closed: the data no longer shows the problem; nothing was changed")
                              .format(id=case_id))
        if was == state:
            raise SyncdbError(_("case #{id} is already {state}; nothing was changed").format(id=case_id, state=_(STATES[state])))
        ledger = audit.Ledger(store, LEDGER_BUNDLE, store.office_code)
        _set_state(store, ledger, case_id, check, was, state, by, _now(), reason)
        ledger.commit()
    return get(store, case_id)


def _checked_reason(reason: str | None, required: bool) -> str | None:
    text = (reason or "").strip()
    if required and not text:
        raise SyncdbError(_("say why the case is dismissed (--reason TEXT): the audit ledger keeps it, sealed"))
    if len(text) > MAX_REASON or any(not ch.isprintable() for ch in text):
        raise SyncdbError(_("the reason must be one line of at most {n} printable characters").format(n=MAX_REASON))
    return text or None


def _no_case(store: Store, case_id: int) -> SyncdbError:
    return SyncdbError(_("there is no case #{id}; see `syncdb checks list {store}`").format(id=case_id, store=store.folder))


# ---------------------------------------------------------------- reading the cases

COLUMNS = "id, check_name, subject_kind, subject, digest, community, severity, state, finding, opened, checked, " \
          "changed, changed_by, reason"


def listing(store: Store, check: str | None = None, community: str | None = None,
            states=ACTIVE, limit: int | None = None, offset: int = 0) -> list[dict]:
    """The cases (open and confirmed unless ``states`` says), oldest first, their findings opened in memory;
    with ``limit``, that many from ``offset`` on, and only theirs opened (a page of a check's cases)."""
    if not present(store.conn):
        return []
    where, params = _where(check, community, states)
    page = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
    rows = store.conn.execute(f"SELECT {COLUMNS} FROM cases WHERE {where} ORDER BY id{page}", params)
    return [_item(store, row) for row in rows.fetchall()]


def count(store: Store, check: str | None = None, community: str | None = None, states=ACTIVE) -> int:
    """How many cases ``listing`` lists, none opened."""
    if not present(store.conn):
        return 0
    where, params = _where(check, community, states)
    return store.conn.execute(f"SELECT count(*) FROM cases WHERE {where}", params).fetchone()[0]


def _where(check: str | None, community: str | None, states) -> tuple[str, list]:
    where, params = [f"state IN ({', '.join('?' * len(states))})"], list(states)
    if check:
        where.append("check_name = ?")
        params.append(check)
    if community:
        where.append("community = ?")
        params.append(community)
    return " AND ".join(where), params


def get(store: Store, case_id: int) -> dict:
    """One case, its finding and reason opened in memory; refused if there is none."""
    row = store.conn.execute(f"SELECT {COLUMNS} FROM cases WHERE id = ?", (case_id,)).fetchone() \
        if present(store.conn) else None
    if row is None:
        raise _no_case(store, case_id)
    return _item(store, row)


def counts(store: Store) -> list[tuple[str, str | None, str, int]]:
    """(check, community, state, cases) for every combination that has any: what a dashboard shows."""
    if not present(store.conn):
        return []
    return store.conn.execute("SELECT check_name, community, state, count(*) FROM cases "
                              "GROUP BY check_name, community, state ORDER BY check_name, community, state").fetchall()


def naming(store: Store, records: set[tuple[str, bytes]], states=ACTIVE) -> list[int]:
    """The ids of the cases (open and confirmed unless ``states`` says) built on any of these records
    ((table, blind key)): a person page's cases, found without opening any other case."""
    if not present(store.conn) or not records:
        return []
    found: set[int] = set()
    for tbl, key in records:
        found.update(cid for (cid,) in store.conn.execute(
            f"SELECT c.id FROM case_records r JOIN cases c ON c.id = r.case_id WHERE r.tbl = ? AND r.key = ? "
            f"AND c.state IN ({', '.join('?' * len(states))})", (tbl, key, *states)))
    return sorted(found)


def _item(store: Store, row) -> dict:
    cid, check, kind, subject, digest_, community, severity, state, sealed, opened, checked, changed, by, reason = row
    finding = _open(store, "finding", sealed, _finding_cell(check, subject, digest_))
    return {"id": cid, "check": check, "subject_kind": kind, "subject": finding["subject"], "community": community,
            "severity": severity, "state": state, "message": finding["message"], "figures": finding["figures"],
            "records": finding["records"], "opened": opened, "checked": checked, "changed": changed,
            "changed_by": by, "reason": _open(store, "reason", reason, _reason_cell(cid)) if reason else None}


def data_keys_used(store: Store) -> set[int]:
    """The data key ids the cases are sealed under (for a key rotation to re-seal them)."""
    if not present(store.conn):
        return set()
    used = {bytes(f)[1] for (f,) in store.conn.execute("SELECT finding FROM cases")}
    used |= {bytes(r)[1] for (r,) in store.conn.execute("SELECT reason FROM cases WHERE reason IS NOT NULL")}
    if _has_bearings(store):
        used |= {bytes(b)[1] for (b,) in store.conn.execute(
            "SELECT DISTINCT substr(subject, 1, 2) FROM record_bearings WHERE typeof(subject) = 'blob'")}
    return used


def _has_bearings(store: Store) -> bool:
    return store.conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'record_bearings'").fetchone() is not None


def reseal(store: Store, current: int) -> int:
    """Seal every case's finding and reason again under the current data key; return how many cases."""
    n = 0
    with store.transaction() as conn:
        for row in conn.execute(f"SELECT {COLUMNS} FROM cases").fetchall():
            cid, check, subject, digest_, sealed, reason = row[0], row[1], row[3], row[4], row[8], row[13]
            if bytes(sealed)[1] == current and (reason is None or bytes(reason)[1] == current):
                continue
            cell = _finding_cell(check, subject, digest_)
            again = _seal(store, "finding", _open(store, "finding", sealed, cell), cell)
            kept = _seal(store, "reason", _open(store, "reason", reason, _reason_cell(cid)), _reason_cell(cid)) \
                if reason else None
            conn.execute("UPDATE cases SET finding = ?, reason = ? WHERE id = ?", (again, kept, cid))
            n += 1
        if _has_bearings(store):
            _reseal_bearings(store, current)
    return n


def _reseal_bearings(store: Store, current: int) -> None:
    """The sealed subjects the checks keep per record, sealed again under the current data key (inside a
    transaction); those kept in clear hold no key."""
    conn = store.conn
    names = {i: tbl for tbl, i in _table_ids(store).items()}
    for tbl_id, key, sealed in conn.execute(
            "SELECT tbl_id, key, subject FROM record_bearings WHERE typeof(subject) = 'blob' "
            "AND substr(subject, 2, 1) != ?", (bytes([current]),)).fetchall():
        cell = _bearing_cell(names[tbl_id], key)
        conn.execute("UPDATE record_bearings SET subject = ? WHERE tbl_id = ? AND key = ? AND subject = ?",
                     (_seal(store, "subject", _open(store, "subject", sealed, cell), cell), tbl_id, key, sealed))
