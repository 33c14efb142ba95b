"""What changed in a working database since the last push, as the changes to send.

The shadow in state.db holds every record as last sent, with each cell's
version: the difference between a working database and its shadow is
exactly what to send, and each cell's shadow version is the base version the
office checks for conflicts. A record whose natural key was changed goes as
one ``rekey`` change, composed from the capture log's moves.
"""

from __future__ import annotations

import json
import time

from . import capture, holds
from .hlc import unpack_versions
from .schema import Domain, Table
from .state import State


def diff(table: Table, key_json: str, current: dict | None, shadow: tuple | None, resend: bool = False):
    """The change that turns the shadow row into the current row, or None.

    ``resend``: the office may never have had what was sent (its key changed,
    see rehome.py), so a current row goes whole, based on every version sent.
    """
    old_row = json.loads(shadow[0]) if shadow else None
    versions = unpack_versions(shadow[1], table.non_key) if shadow else {}
    key = dict(zip(table.key, json.loads(key_json)))
    if current is None and old_row is None:
        return None
    if current is None:
        return {"table": table.qualified, "op": "delete", "key": key, "cells": {},
                "base": {c: v for c, v in versions.items() if v}}
    if old_row is None or resend:
        # A new row: its empty cells are simply absent. A row deleted before and
        # entered again is based on the delete, so the office sees no conflict.
        cells = {c: v for c, v in current.items() if c not in table.key and v is not None}
        return {"table": table.qualified, "op": "insert", "key": key, "cells": cells,
                "base": {c: v for c, v in versions.items() if v}}
    cells = {c: v for c, v in current.items() if c not in table.key
             and (old_row.get(c) != v or type(old_row.get(c)) is not type(v))}
    if not cells:
        return None
    # The owner cell's version goes with every update, changed or not: it says whose record
    # this community changes, and it is a base even for a column the schema added later.
    return {"table": table.qualified, "op": "update", "key": key, "cells": cells,
            "base": {c: versions[c] for c in (*cells, table.owner) if versions.get(c)}}


def changes_of(conn, state: State, domain: Domain, full_reason, vetted: dict, on_row=None, skip=(),
                duplicated=None, held_moves=None, resend: bool = False):
    """(ms, table, key_json, change) for one working database, and the last log seq.

    A record that fails validation is not sent: it is held back (``vetted``
    collects table/key → why, or None once it passes) and looked at again at
    every push until it is fixed, so the office never gets half a record.
    Tables in ``skip`` are left as they are (nothing of them is read or sent);
    ``duplicated`` names, per table, the keys more than one row holds, which
    are held back too. A key change held back (``held_moves``) is remembered
    in the state and sent as one change once its new record is valid.
    """
    out = []
    duplicated = duplicated or {}
    held_moves = [] if held_moves is None else held_moves

    def consider(ms, table, key_json, current):
        if on_row:
            on_row()
        shadow = state.shadow_row(table.qualified, key_json)
        change = diff(table, key_json, current, shadow, resend)
        if current is not None:
            why = holds.duplicate_why(table, key_json, duplicated) or holds.record_problems(table, current, domain)
            vetted[(table.qualified, key_json)] = why
            if why:
                return
        else:
            vetted[(table.qualified, key_json)] = None
        if change:
            out.append((ms, table, key_json, change))

    def moved(moves):
        done = _consider_moves(conn, state, domain, moves, vetted, out, skip, held_moves, duplicated)
        return lambda table, key_json: (table.name, key_json) in done

    now = int(time.time() * 1000)
    if full_reason:
        last_seq = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {capture.LOG}").fetchone()[0] \
            if capture.meta(conn) else 0
        handled = moved(state.moves(domain.name))
        for table in domain.tables.values():
            if table.name in skip:
                continue
            seen = set()
            for key_json, row in capture.all_rows(conn, table):
                seen.add(key_json)
                if not handled(table, key_json):
                    consider(now, table, key_json, row)
            for key_json in state.shadow_keys(table.qualified):
                if key_json not in seen and not handled(table, key_json):
                    consider(now, table, key_json, None)
        return last_seq, out
    last_seq, logged, moves = capture.logged_keys(conn, domain)
    for tname, key_json in state.held_keys():
        domain_name, __, table_name = tname.partition(".")
        if domain_name == domain.name and table_name in logged:
            logged[table_name].setdefault(key_json, now)
    handled = moved(state.moves(domain.name) + moves)
    for tname, keys in logged.items():
        table = domain.tables[tname]
        for key_json, ms in keys.items():
            if not handled(table, key_json):
                consider(ms, table, key_json, capture.read_row(conn, table, json.loads(key_json)))
    return last_seq, out


def _compose(moves: list) -> list:
    """Chains of key changes as one each (A→B then B→C is A→C; A→B→A is nothing), in order."""
    dest, origin_of = {}, {}  # (table, origin) -> (new key, ms); (table, new key) -> origin
    for tname, old, new, ms in moves:
        origin = origin_of.pop((tname, old), old)
        previous = dest.pop((tname, origin), None)
        if previous:
            origin_of.pop((tname, previous[0]), None)
        stale = origin_of.pop((tname, new), None)  # the key was taken again since: that move is over
        if stale is not None:
            dest.pop((tname, stale), None)
        if origin != new:
            dest[(tname, origin)] = (new, ms)
            origin_of[(tname, new)] = origin
    return [(tname, origin, new, ms) for (tname, origin), (new, ms) in dest.items()]


def _consider_moves(conn, state: State, domain: Domain, moves: list, vetted: dict, out: list, skip,
                    held_moves: list, duplicated: dict) -> set:
    """Send each key change as one ``rekey``, or hold the whole of it back; return the
    (table name, key) pairs settled here, which are not looked at one by one."""
    done = set()
    for tname, old, new, ms in _compose(moves):
        table = domain.tables.get(tname)
        if table is None:
            continue
        if tname in skip:
            held_moves.append((table.qualified, old, new, ms))  # the table cannot be read now
            continue
        pair = _rekey_pair(conn, state, table, old, new)
        if pair is None or (tname, new) in done:
            continue  # not a key change (any more): each key goes its own way
        current, old_shadow = pair
        done |= {(tname, old), (tname, new)}
        why = holds.duplicate_why(table, new, duplicated) or holds.record_problems(table, current, domain)
        vetted[(table.qualified, new)] = why
        if why:
            vetted[(table.qualified, old)] = holds.moved_why(table, new)
            held_moves.append((table.qualified, old, new, ms))
            continue
        vetted[(table.qualified, old)] = None
        out.append((ms, table, new, _rekey(table, old, new, current, old_shadow)))
    return done


def _rekey_pair(conn, state: State, table: Table, old: str, new: str):
    """(the new row, the old key's shadow) when old → new is a key change to send as one, else None:
    the office holds the old key from this community, the old key has no row now, the new key
    has one, and the office holds nothing from here under the new key."""
    old_shadow = state.shadow_row(table.qualified, old)
    if old_shadow is None or old_shadow[0] == "null":
        return None
    if capture.read_row(conn, table, json.loads(old)) is not None:
        return None
    current = capture.read_row(conn, table, json.loads(new))
    new_shadow = state.shadow_row(table.qualified, new)
    if current is None or (new_shadow is not None and new_shadow[0] != "null"):
        return None
    return current, old_shadow


def _rekey(table: Table, old: str, new: str, current: dict, old_shadow: tuple) -> dict:
    """The one change that moves a record from its old natural key to its new one."""
    versions = unpack_versions(old_shadow[1], table.non_key)
    return {"table": table.qualified, "op": "rekey", "key": dict(zip(table.key, json.loads(old))),
            "new_key": dict(zip(table.key, json.loads(new))),
            "cells": {c: v for c, v in current.items() if c not in table.key and v is not None},
            "base": {c: v for c, v in versions.items() if v}}
