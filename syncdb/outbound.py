"""What the office sends back: its resolutions and edits, to the communities concerned.

When an office edit (``syncdb conflicts resolve``, ``review``) is merged,
in the same transaction, each community concerned gets its share of the
change in a bundle of kind ``"resolutions"``, signed by the office and
encrypted to that community's enrolled key, in ``STORE/outbound/CODE/``.
``syncdb pull`` fetches them (from ``serve`` or a copy of that folder) and
applies them in sequence.

What a community may receive (``share``): a resolution carries to a
community only what it owns or already sent.

- The record's owner after the edit (its table's ``owner`` column) gets the
  whole settled change: the record is its own.
- Any other community concerned — the owner before a move, a community
  whose version of a cell was settled (a duplicate registration; a record
  it once owned) — gets the decision for the cells it held: a value only
  where it equals one that community sent itself, and otherwise the cell's
  name in ``"superseded"`` with the record's ``"owner"``, never the value.
  The owner column's value is the decision itself ("the record belongs to
  X") and goes to each of them. A delete carries no value and goes to all.

Acknowledgements: every resolutions bundle says, in its header's
``acknowledged``, up to which of the community's own bundles the office holds
them all (``office.acknowledged``). A community with nothing to resolve gets
the same word from ``write_acknowledgements``: one small bundle per community,
``STORE/outbound/CODE/OFFICE-ack.bundle``, of kind ``"resolutions"`` with no
changes, signed by the office and made for the community's key, rewritten
whenever the number moves. It is safe to hand to anyone (it says only a
number, and only to that community), and ``syncdb pull`` (a USB stick's copy
of the folder, or ``serve``'s ``/v1/communities/CODE/acknowledgement``) clears
the community's outbox with it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import bundle, office
from .crypto import PublicKey
from .store import Store

OUTBOUND_TABLE = """
CREATE TABLE IF NOT EXISTS outbound (
    code TEXT NOT NULL, sequence INTEGER NOT NULL, file TEXT NOT NULL, made TEXT NOT NULL,
    changes INTEGER NOT NULL, PRIMARY KEY (code, sequence))
"""


def outbound_dir(store_dir, code: str) -> Path:
    return Path(store_dir) / "outbound" / code


def owner_of(store: Store, table, change: dict) -> str | None:
    """The community that owns the record a change is about, as the store holds it now."""
    key = store.blind_key(table, [change["key"].get(k) for k in table.key])
    row = store.read_cells(table, key, [table.owner])
    return None if row is None else row[0]


def send_back(store: Store, store_dir, changes: list[dict], owners_before: list, rejected: set) -> dict[str, int]:
    """Queue an office bundle's changes for every community concerned; return code -> sequence.

    Call inside the transaction that merges the office's bundle, with the
    owners read before it (``owner_of``): a record concerns the community
    that owned it before the edit (so a delete, or a move to another
    community, reaches it), the one that owns it after, and every community
    whose version of a cell it settles. Each gets only its ``share``. A
    change the merge rejected goes nowhere.
    """
    by_code: dict[str, list[dict]] = {}
    for change, before in zip(changes, owners_before):
        table = store.table(change["table"])
        if (table.qualified, store.blind_key(table, [change["key"].get(k) for k in table.key])) in rejected:
            continue
        after = owner_of(store, table, change)
        concerned = {before, after}
        for versions in (change.get("base") or {}).values():
            concerned.update(_origin(v) for v in _listed(versions))
        for code in sorted(concerned - {None}):
            part = share(table, change, code, owner_before=before, owner_after=after)
            if part is not None:
                by_code.setdefault(code, []).append(part)
    return _queue(store, store_dir, by_code)


def send_to(store: Store, store_dir, code: str, changes: list[dict]) -> dict[str, int]:
    """Queue changes for one community (the office's values that beat its own by a rule).

    Each is cut to the community's ``share``: the office's value itself only
    when the record is that community's own.
    """
    by_code: dict[str, list[dict]] = {}
    for change in changes:
        table = store.table(change["table"])
        part = share(table, change, code, owner_before=None, owner_after=owner_of(store, table, change))
        if part is not None:
            by_code.setdefault(code, []).append(part)
    return _queue(store, store_dir, by_code)


def share(table, change: dict, code: str, owner_before: str | None, owner_after: str | None) -> dict | None:
    """What of an office change community ``code`` may receive, or None for nothing.

    The owner after the change gets it whole, and so does everyone for a
    delete (it carries no value). Another community gets the cells it held —
    every cell if it owned the record before, else those where one of its
    versions is settled — each with its value only if the value is the same
    as one of its own versions (the office change lists them in ``"equal"``,
    see ``resolve``) or is the owner column (the decision itself). The rest
    are listed in ``"superseded"`` with the new ``"owner"``: its pull learns
    that its value lost without learning the one that won, so a duplicate
    registration's name, say, never reaches the other community.
    """
    sent = {k: v for k, v in change.items() if k != "equal"}  # office-side bookkeeping only
    if code == owner_after or change["op"] == "delete":
        return sent
    bases, equal = change.get("base") or {}, change.get("equal") or {}
    cells, superseded = {}, []
    for col, value in change["cells"].items():
        mine = [v for v in _listed(bases.get(col)) if _origin(v) == code]
        if not mine and code != owner_before:
            continue  # never held by this community: not even that it changed
        if col == table.owner or any(v in _listed(equal.get(col)) for v in mine):
            cells[col] = value
        else:
            superseded.append(col)
    if not cells and not superseded:
        return None
    cut = {"cells": cells, "base": {col: bases[col] for col in [*cells, *superseded] if col in bases}}
    sent = {k: cut.get(k, v) for k, v in sent.items()}  # the documented key order stays
    if superseded:
        sent["superseded"] = superseded
        sent["owner"] = owner_after
    return sent


def _listed(versions) -> list[str]:
    """A change's base for one cell: one version (a community's) or a list (the office's)."""
    if not versions:
        return []
    return [versions] if isinstance(versions, str) else list(versions)


def _origin(version: str) -> str:
    return version.split(".", 2)[2]


def _queue(store: Store, store_dir, by_code: dict[str, list[dict]]) -> dict[str, int]:
    """One resolutions bundle per enrolled community, inside the caller's transaction.

    The files keep a pending name until ``finish`` runs after the commit, so
    no copy of the folder ever holds a bundle the office did not record.
    """
    conn = store.conn
    enrolled = office.enrolled_keys(conn)
    made = {}
    for code, owned in sorted(by_code.items()):
        if code not in enrolled:
            continue  # the office itself, or a code no longer enrolled
        (last,) = conn.execute("SELECT coalesce(max(sequence), 0) FROM outbound WHERE code = ?", (code,)).fetchone()
        sequence = last + 1
        folder = outbound_dir(store_dir, code)
        folder.mkdir(parents=True, exist_ok=True)
        name = bundle.file_name(store.office_code, sequence, kind="resolutions")
        bundle.write(folder / _pending(name), _fields(store, sequence, office.settled_in(conn, code)),
                     owned, store.keyring, enrolled[code])
        conn.execute("INSERT INTO outbound VALUES (?, ?, ?, ?, ?)",
                     (code, sequence, name, time.strftime("%Y-%m-%dT%H:%M:%S"), len(owned)))
        made[code] = sequence
    return made


def _fields(store: Store, sequence: int, acknowledged: int, resend: int = 0) -> dict:
    """The header fields of an office bundle to a community (``resend``: see write_acknowledgements)."""
    fields = {"kind": "resolutions", "origin": store.office_code, "sequence": sequence,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "acknowledged": acknowledged,
              "schemas": {d.name: {"version": d.version, "fingerprint": d.fingerprint}
                          for d in store.domains.values()}}
    if resend:
        fields["resend"] = resend
    return fields


def acknowledgement_name(office_code: str) -> str:
    return f"{office_code}-ack{bundle.SUFFIX}"


def write_acknowledgements(store: Store, store_dir) -> dict[str, int]:
    """Bring each enrolled community's standalone acknowledgement up to date; return code -> N rewritten.

    Its ``sequence`` is the acknowledged number itself (a series of its own,
    rising with it), so none is written before the office holds bundle 1. A
    file already saying N for the community's current key is left alone:
    a merge costs a header read per community.
    """
    conn = store.conn
    written = {}
    skipped = dict(conn.execute("SELECT origin, max(sequence) FROM skipped GROUP BY origin")) \
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'skipped'").fetchone() else {}
    for code, key in sorted(office.enrolled_keys(conn).items()):
        # Applied (or skipped), not merely received: a bundle held here stays in the community's
        # outbox, to be sent again (`syncdb bundles resend`) if its copy here is damaged.
        n = office.settled_in(conn, code)
        # A bundle given up (`syncdb bundles skip`): the community sends every record whole again,
        # so what that bundle carried is not lost.
        resend = skipped.get(code, 0)
        path = outbound_dir(store_dir, code) / acknowledgement_name(store.office_code)
        if n == 0 or _says(path, n, resend, key.id):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        bundle.write(path, _fields(store, n, n, resend), [], store.keyring, key)
        written[code] = n
    return written


def _says(path: Path, n: int, resend: int, recipient: str) -> bool:
    try:
        with open(path, "rb") as f:
            header, _ = bundle.read_header(f)
    except (OSError, bundle.BundleError):
        return False
    return (header.fields.get("acknowledged") == n and header.fields.get("resend", 0) == resend
            and header["recipient"] == recipient)


def acknowledgement_path(store_dir, code: str) -> Path | None:
    """The standalone acknowledgement for ``code`` if the office has written one."""
    path = outbound_dir(store_dir, code) / acknowledgement_name(_office_code(store_dir))
    return path if path.is_file() else None


def _office_code(store_dir) -> str:
    return PublicKey.read(office.public_key_path(store_dir)).code


def _pending(name: str) -> str:
    return f".{name}.pending"


def finish(store_dir) -> None:
    """Give every recorded bundle still pending its final name (after the commit; again after a crash).

    Only the files still pending are looked at, so this costs what is
    pending, not every bundle ever made (`conflicts review` runs it once per
    conflict). A pending file the table does not record was made by a
    transaction that rolled back: it is never named, and the next bundle for
    that community takes its number.
    """
    root = Path(store_dir) / "outbound"
    pending = sorted(root.glob("*/.*.pending")) if root.is_dir() else []
    for path in pending:
        code, name = path.parent.name, path.name[1:-len(".pending")]
        if _recorded(store_dir, "SELECT 1 FROM outbound WHERE code = ? AND file = ?", (code, name)):
            try:
                os.replace(path, path.with_name(name))
            except FileNotFoundError:
                pass  # named already (by serve at the same moment)


def _recorded(store_dir, sql: str, params=()) -> list[tuple]:
    """Rows of the outbound table; none before the first resolution (and no write to find out)."""
    conn = office.connect(store_dir)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbound'").fetchone():
            return []
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def available(store_dir, code: str) -> list[int]:
    """The sequence numbers of the resolutions bundles waiting for ``code``."""
    finish(store_dir)
    return [s for (s,) in _recorded(store_dir, "SELECT sequence FROM outbound WHERE code = ? ORDER BY sequence",
                                    (code,))]


def path_of(store_dir, code: str, sequence: int) -> Path | None:
    rows = _recorded(store_dir, "SELECT file FROM outbound WHERE code = ? AND sequence = ?", (code, sequence))
    return outbound_dir(store_dir, code) / rows[0][0] if rows else None
