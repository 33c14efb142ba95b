"""The standing attack suite (issue 8): hostile bundles against an office with three communities.

An ``Arena`` is a real office store with communities A, B and C enrolled,
each holding residents and households pushed and merged the ordinary way.
C's key is stolen: ``tests/mutants.py`` makes the bundles an attacker would
send (and byte-mangled copies of honest ones). Each mutant goes through the
office as a user's bundle would — ``merge.merge`` in this process, ``syncdb
merge STORE FILE`` for bombs and a sample, ``syncdb serve`` over HTTP for
another sample — and is judged:

- **crash**: an exception out of ``merge.merge``, a traceback, an exit status
  other than 0 or 1, an HTTP 500, or serve logging a failed merge;
- **accepted**: a bundle that must be refused (a byte mutant, a forged header)
  was applied or changed the store, or a hostile change reached the store;
- **partial apply**: a record another community owns (before or after) changed,
  or the store changed for a bundle that was refused or held;
- otherwise refused or applied, as may be.

Every ``batch`` mutants the arena also checks that a good bundle from A or B
still applies, that the audit ledger verifies, that the office's resolutions
for C (after settling open conflicts for the other side) carry no value C did
not send, and it records merges slower than ``STALL_SECONDS`` and ``syncdb``
processes above ``MEMORY_LIMIT_MB``. ``tests/test_fuzz.py`` runs a campaign
of 2,000 mutants; ``bench/fuzz.py`` runs 100,000.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import random
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import requests

from syncdb import audit, bundle, community, merge, migrations, office, resolve, workdir
from syncdb.crypto import Keyring, PublicKey, Secret
from syncdb.errors import SyncdbError
from syncdb.hlc import now_ms, unpack_row_versions
from syncdb.plugins import extra_policies
from syncdb.schema import load_domains
from syncdb.store import table_name

from mutants import GENERATORS, HEAVY, HOUSEHOLDS, PERSONS, Mutant, household, id_number, insert_change, resident, \
    signed_bundle

CODES = A, B, C = "441900003001", "441900003002", "441900003003"
KEY_FILE_BYTES = b"the attack suite key file, 32 B."
SECRET = Secret(key_file_bytes=KEY_FILE_BYTES)
SYNCDB = str(Path(sys.executable).with_name("syncdb"))
STALL_SECONDS = 5.0
MEMORY_LIMIT_MB = 300
CHILD_ADDRESS_SPACE = 4 << 30  # a bomb may fail a `syncdb` child, never the machine
VIOLATIONS = ("crash", "accepted", "partial")
_DOMAINS = None


def office_domains():
    """Every shipped domain with the plugins' policies, as `syncdb merge` loads them."""
    global _DOMAINS
    if _DOMAINS is None:
        _DOMAINS = load_domains(extra_policies=extra_policies())
    return _DOMAINS


@dataclass
class Outcome:
    verdict: str  # "crash", "accepted", "partial", "refused" or "applied"
    seconds: float
    detail: str = ""
    peak_mb: float | None = None


# --- the office and its three communities ------------------------------------------------------

class Arena:
    A, B, C = A, B, C

    def __init__(self, root, residents: int = 8, households: int = 2):
        self.root = Path(root)
        self.domains = office_domains()
        huji = self.domains["huji"]
        self.huji = {"huji": huji}
        self.schemas = {"huji": {"version": huji.version, "fingerprint": huji.fingerprint}}
        self.live, self.prepared, self.work = self.root / "live", self.root / "prepared", self.root / "mutants"
        self.store = self.live / "office"
        self.folders = {code: self.live / code for code in CODES}
        self.key_file = self.root / "keyfile"
        self.root.mkdir(parents=True, exist_ok=True)
        self.key_file.write_bytes(KEY_FILE_BYTES)
        self.env = {k: v for k, v in os.environ.items() if k not in ("SYNCDB_PASSPHRASE", "SYNCDB_SCHEMAS")}
        self.env["SYNCDB_KEY_FILE"] = str(self.key_file)
        self._fresh = itertools.count(500_000)
        self._ms = now_ms() + 60_000
        self.persons = {code: [1000 * (i + 1) + n for n in range(residents)] for i, code in enumerate(CODES)}
        self.households = {code: [] for code in CODES}
        self.sent: set = set()  # (table, key json, column, value json) C has sent
        self.resets = 0
        self.count = 0
        self._build(households)
        shutil.copytree(self.live, self.prepared)
        self.work.mkdir()
        self.keys = {code: Keyring.load(community.state_dir(self.folders[code]) / "keyring.json", SECRET)
                     for code in CODES}
        self.office_key = PublicKey.read(office.public_key_path(self.store))
        self.office_code = self.office_key.code
        self.other_office = Keyring.generate("office", "office", self.office_key.suite).public
        self._open()
        self.valid = self._valid_bundles()

    def _build(self, households: int) -> None:
        migrations.init(self.store, SECRET)
        for code, folder in self.folders.items():
            workdir.create(folder, self.huji)
            community.init(folder, code, office.public_key_path(self.store), self.huji, SECRET)
            office.enroll(self.store, code, folder / f"{code}.pub.json")
            conn = sqlite3.connect(folder / "huji.db")
            with conn:
                for n in self.persons[code]:
                    _insert(conn, "persons", resident(n, code))
                for i in range(households):
                    row = household(int(code[-3:]) * 100 + i, code, id_number(self.persons[code][i]))
                    _insert(conn, "households", row)
                    self.households[code].append(row["household_no"])
            conn.close()
            result = community.export(folder, self.huji, SECRET)
            summary = merge.merge(self.store, [result.path], SECRET, self.domains)
            assert summary.applied == 1 and not summary.rejected, summary.lines()

    def _valid_bundles(self) -> list[tuple[str, bytes]]:
        """Honest bundles to mangle: a small and a multi-chunk one of C's, and a real export of A's."""
        rng = random.Random(0)
        small = [insert_change(PERSONS, ["id_number"], self.fresh_resident(C), self.stamp(C)) for _ in range(3)]
        big = [insert_change(PERSONS, ["id_number"], self.fresh_resident(
            C, name="".join(rng.choice("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗") for _ in range(3)),
            address=f"东莞市{rng.randrange(10**9)}号"), self.stamp(C)) for _ in range(2500)]
        bundles = [(C, signed_bundle(C, self.next_sequence(C), changes, self.keys[C], self.office_key,
                                     self.schemas)) for changes in (small, big)]
        scratch = self.root / "scratch-A"
        shutil.copytree(self.folders[A], scratch)
        conn = sqlite3.connect(scratch / "huji.db")
        with conn:
            conn.execute("UPDATE persons SET phone = '13900000000' WHERE id_number = ?",
                         (id_number(self.persons[A][0]),))
        conn.close()
        bundles.append((A, community.export(scratch, self.huji, SECRET).path.read_bytes()))
        shutil.rmtree(scratch)
        return bundles

    def _open(self) -> None:
        self.reader = migrations.open_upgraded(self.store, SECRET, self.domains)
        self.current = None  # (fingerprint, snapshot, data_version), refreshed when the store changes

    def reset(self) -> None:
        """Back to the prepared store and community folders (the arena's stamps and numbers go on)."""
        self.reader.conn.close()
        shutil.rmtree(self.live)
        shutil.copytree(self.prepared, self.live)
        self._open()
        self.resets += 1

    def close(self) -> None:
        self.reader.conn.close()

    # what the mutants need to know
    def fresh_resident(self, code: str, **extra) -> dict:
        return resident(next(self._fresh), code, **extra)

    def stamp(self, node: str) -> str:
        self._ms += 1
        return f"{self._ms:015d}.000000.{node}"

    def _scalar(self, sql: str, params=()) -> int:
        return self.reader.conn.execute(sql, params).fetchone()[0]

    def next_sequence(self, code: str) -> int:
        return self._scalar("SELECT coalesce(max(sequence), 0) FROM received WHERE origin = ?", (code,)) + 1

    def applied(self) -> dict:
        return dict(self.reader.conn.execute("SELECT origin, max(sequence) FROM applied GROUP BY origin").fetchall())

    def stuck(self) -> bool:
        """Is some community's queue held behind a bundle (so its next bundles would wait)?"""
        received = dict(self.reader.conn.execute(
            "SELECT origin, max(sequence) FROM received GROUP BY origin").fetchall())
        applied = self.applied()
        return any(applied.get(origin, 0) < n for origin, n in received.items())

    def versions(self, qualified: str, key: tuple) -> dict:
        """The store's current version of each cell of a record: what a based change names."""
        table = self.reader.table(qualified)
        blind = self.reader.blind_key(table, list(key))
        row = self.reader.conn.execute(f"SELECT _versions FROM [{table_name(table)}] WHERE _key = ?",
                                       (blind,)).fetchone()
        versions = unpack_row_versions(row[0] if row else None, table.non_key)
        return {c: v.lstrip("~") for c, v in versions.items()}

    # what the store holds
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for qualified in (PERSONS, HOUSEHOLDS):
            name = table_name(self.reader.table(qualified))
            for row in self.reader.conn.execute(f"SELECT * FROM [{name}] ORDER BY _key"):
                digest.update(repr(row).encode())
        return digest.hexdigest()

    def snapshot(self) -> dict:
        """(table, plain key) -> (exists, {column: plain value}), decrypted with the office keyring."""
        # data_version moves when another connection commits: most mutants never get that far.
        version = self.reader.conn.execute("PRAGMA data_version").fetchone()[0]
        if self.current and self.current[2] == version:
            return self.current[1]
        fingerprint = self.fingerprint()
        if self.current and self.current[0] == fingerprint:
            self.current = (fingerprint, self.current[1], version)
            return self.current[1]
        records = {}
        for qualified in (PERSONS, HOUSEHOLDS):
            table = self.reader.table(qualified)
            cursor = self.reader.conn.execute(f"SELECT * FROM [{table_name(table)}]")
            names = [d[0] for d in cursor.description]
            for found in cursor.fetchall():
                row = self.reader.plain_row(table, dict(zip(names, found)))  # the row's seal opened
                plain = {c: row[c] for c in table.columns}
                records[qualified, tuple(plain[k] for k in table.key)] = (
                    row["_exists"], tuple(sorted((c, plain[c]) for c in table.non_key)))
        self.current = (fingerprint, records, version)
        return records

    # running a mutant
    def _path(self, mutant: Mutant) -> Path:
        self.count += 1
        path = self.work / f"m{self.count:07d}.bundle"
        path.write_bytes(mutant.data)
        return path

    def _remember_sent(self, mutant: Mutant) -> None:
        if mutant.origin != C:
            return
        for change in mutant.changes:
            key, cells = change.get("key"), change.get("cells")
            if not (isinstance(change.get("table"), str) and isinstance(key, dict)):
                continue
            key_text = json.dumps(key, sort_keys=True, ensure_ascii=False)
            for col, value in list(key.items()) + (list(cells.items()) if isinstance(cells, dict) else []):
                self.sent.add((change["table"], key_text, col, json.dumps(value, ensure_ascii=False)))

    def run(self, mutant: Mutant) -> Outcome:
        """Receive one mutant as an upload and merge the inbox, in this process, and judge it.

        ``office.receive`` then ``merge.merge``: what `syncdb merge STORE FILE` and
        `serve` do, without the cost of opening the store for what is refused at receipt.
        """
        self.count += 1
        self._remember_sent(mutant)
        before, applied = self.snapshot(), self.applied()
        started = time.monotonic()
        try:
            try:
                office.receive(self.store, mutant.data, source=f"attack {self.count}")
            except office.Refused as e:
                how = f"refused at receipt: {e.reason}"
            else:
                summary = merge.merge(self.store, [], SECRET, self.domains)
                how = _how(summary)
        except Exception as e:
            return Outcome("crash", time.monotonic() - started, _short_traceback(e))
        outcome = self.judge(mutant, before, applied, time.monotonic() - started)
        outcome.detail = outcome.detail or how
        return outcome

    def run_cli(self, mutant: Mutant, timeout: float = 300) -> Outcome:
        """Merge one mutant with `syncdb merge STORE FILE` in a child whose peak memory is measured."""
        path = self._path(mutant)
        self._remember_sent(mutant)
        before, applied = self.snapshot(), self.applied()
        started = time.monotonic()
        code, out, usage = _run_child([SYNCDB, "merge", str(self.store), str(path)], self.env, timeout)
        seconds = time.monotonic() - started
        path.unlink()
        peak = usage.ru_maxrss / 1024
        if code not in (0, 1) or "Traceback" in out:
            return Outcome("crash", seconds, f"`syncdb merge` exited {code}: {out[-600:]}", peak)
        outcome = self.judge(mutant, before, applied, seconds)
        outcome.peak_mb = peak
        return outcome

    def judge(self, mutant: Mutant, before: dict, applied_before: dict, seconds: float) -> Outcome:
        after, applied_after = self.snapshot(), self.applied()
        took = [o for o, s in applied_after.items() if s != applied_before.get(o) and o != self.office_code]
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        own = mutant.origin if mutant.origin in CODES else C
        foreign = sorted(k for k in changed if {_owner(before.get(k)), _owner(after.get(k))} - {None, own})
        if foreign:
            return Outcome("partial", seconds, f"records of other communities changed: {_shown(foreign)}")
        if mutant.expect == "refuse" and (took or changed):
            return Outcome("accepted", seconds, f"applied ({', '.join(took) or 'no bundle'}), "
                                                f"{len(changed)} record(s) changed")
        hostile = changed - mutant.benign
        if mutant.expect == "records" and hostile:
            return Outcome("accepted", seconds, f"hostile changes reached the store: {_shown(sorted(hostile))}")
        if changed and not took:
            return Outcome("partial", seconds, f"the bundle was not applied, yet {len(changed)} record(s) changed")
        return Outcome("applied" if took else "refused", seconds)

    # the checks after a batch
    def good_push(self, code: str) -> str | None:
        """A real edit at community ``code``, pushed and merged: it must apply. Returns what went wrong."""
        n = self.persons[code][self.count % len(self.persons[code])]
        phone = f"131{self.count % 10**8:08d}"  # a new value each time, so there is a change to send
        conn = sqlite3.connect(self.folders[code] / "huji.db")
        with conn:
            conn.execute("UPDATE persons SET phone = ?, name = ? WHERE id_number = ?",
                         (phone, f"居民{n}第{self.count}次", id_number(n)))
        conn.close()
        result = community.export(self.folders[code], self.huji, SECRET)
        try:
            summary = merge.merge(self.store, [result.path], SECRET, self.domains)
        except Exception as e:
            return f"a good bundle from {code} crashed the merge: {_short_traceback(e)}"
        if summary.applied != 1 or summary.rejected:
            return f"a good bundle from {code} did not apply: {' | '.join(summary.lines())}"
        return None

    def owner_edits(self, code: str, numbers, **cells) -> str | None:
        """Community ``code`` edits its residents ``numbers`` (name → "{name}改" etc.), pushes, and it merges."""
        conn = sqlite3.connect(self.folders[code] / "huji.db")
        with conn:
            for n in numbers:
                conn.execute(f"UPDATE persons SET {', '.join(f'{c} = ?' for c in cells)} WHERE id_number = ?",
                             [*(v.format(n=n) for v in cells.values()), id_number(n)])
        conn.close()
        result = community.export(self.folders[code], self.huji, SECRET)
        summary = merge.merge(self.store, [result.path], SECRET, self.domains)
        if summary.applied != 1 or summary.rejected:
            return f"{code}'s own edits did not apply: {' | '.join(summary.lines())}"
        return None

    def settle(self, limit: int) -> list[str]:
        """The administrator settles open conflicts for the side that is not C's (the owner's)."""
        problems = []
        rows = self.reader.conn.execute(
            "SELECT id, candidates FROM conflicts WHERE status = 'open' ORDER BY id LIMIT ?", (limit,)).fetchall()
        for conflict_id, candidates in rows:
            others = [c for c in json.loads(candidates) if c["origin"] in (A, B)]
            if not others:
                continue
            keep = max(others, key=lambda c: c["version"])["version"]
            try:
                resolve.resolve_conflict(self.store, SECRET, self.domains, conflict_id, keep=keep)
            except SyncdbError:
                pass  # a refusal with a message is the administrator's to read, not a fault
            except Exception as e:
                problems.append(f"settling conflict #{conflict_id} crashed: {_short_traceback(e)}")
        return problems

    def read_back(self) -> list[str]:
        """Every value the office queued for C must be one C sent for that record and column.

        Except the owner column: which community now holds the record is the decision
        itself, which C is owed for a record it sent (issue 8: "the decision for the cells it sent").
        """
        problems = []
        folder = self.store / "outbound" / C
        for path in sorted(folder.glob("*.bundle")) if folder.exists() else []:
            header = bundle.open_verified(path, {self.office_code: self.office_key}.get)
            for change in bundle.iter_path(path, self.keys[C]):
                key_text = json.dumps(change["key"], sort_keys=True, ensure_ascii=False)
                owner = self.reader.table(change["table"]).owner
                for col, value in list(change["key"].items()) + list((change.get("cells") or {}).items()):
                    if value is not None and col != owner and (change["table"], key_text, col,
                                                               json.dumps(value, ensure_ascii=False)) not in self.sent:
                        problems.append(f"resolutions bundle {header.sequence} for C carries {change['table']} "
                                        f"{col} of a record C did not send that value for")
        return problems

    def check(self, settle: int = 2) -> list[str]:
        problems = self.settle(settle)
        for code in (A, B):
            problem = self.good_push(code)
            if problem:
                problems.append(problem)
        try:
            audit.verify(self.reader)
        except SyncdbError as e:
            problems.append(f"audit verify: {e}")
        return problems + self.read_back()

    def audit_cli(self) -> str | None:
        out = subprocess.run([SYNCDB, "audit", "verify", str(self.store)], env=self.env, capture_output=True,
                             text=True, timeout=120)
        if out.returncode:
            return f"`syncdb audit verify` exited {out.returncode}: {out.stdout}{out.stderr}"
        return None

    # HTTP
    def http_phase(self, make, count: int, tally: "Tally") -> None:
        """``count`` mutants POSTed to a real `syncdb serve`; then a good bundle from A must still apply."""
        port = _free_port()
        log_path = self.root / f"serve-{self.resets}-{self.count}.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen([SYNCDB, "serve", str(self.store), "--host", "127.0.0.1", "--port",
                                       str(port)], env=self.env, stdout=log, stderr=log, preexec_fn=_limit_child)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for(lambda: requests.get(f"{url}/health", timeout=1).status_code == 200, 30, "serve to answer")
            before = self.snapshot()
            posted = []
            for _ in range(count):
                mutant = make()
                self._remember_sent(mutant)
                started = time.monotonic()
                try:
                    status = requests.post(f"{url}/v1/bundles", data=mutant.data, timeout=300).status_code
                except requests.RequestException as e:
                    status, error = None, str(e)
                seconds = time.monotonic() - started
                if status is None or status >= 500 and status != 507:
                    tally.add(mutant, Outcome("crash", seconds, f"HTTP {status or error}"), via="http")
                else:
                    posted.append((mutant, seconds))
            _wait_quiet(log_path)  # serve's merges of what it took are done
            after = self.snapshot()
            for mutant, seconds in posted:
                tally.add(mutant, self._judge_http(mutant, before, after, seconds), via="http")
            problem = self._http_good_push(url)
            if problem:
                tally.broken.append(problem)
            lines = log_path.read_text(errors="replace").splitlines()
            for failure in ("Traceback", "merging the inbox failed", "unexpected error"):
                found = [i for i, line in enumerate(lines) if failure in line]
                if found:
                    last = next((line for line in lines[found[0]:] if line and not line[0].isspace()
                                 and "Traceback" not in line and failure not in line), "")
                    tally.broken.append(f"serve logged '{failure}' {len(found)}×, first: {last[:300]}")
            peak = _peak_mb(server.pid)
            if peak and peak > MEMORY_LIMIT_MB:
                tally.memory.append(("serve", peak))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        self.current = None
        self.reset()

    def _http_good_push(self, url: str) -> str | None:
        before = self.applied().get(A, 0)
        n = self.persons[A][0]
        conn = sqlite3.connect(self.folders[A] / "huji.db")
        with conn:
            conn.execute("UPDATE persons SET phone = '13100000001' WHERE id_number = ?", (id_number(n),))
        conn.close()
        result = community.export(self.folders[A], self.huji, SECRET)
        answer = requests.post(f"{url}/v1/bundles", data=result.path.read_bytes(), timeout=60)
        if answer.status_code not in (200, 201):
            return f"serve refused a good bundle from A after the hostile uploads: {answer.status_code} {answer.text}"
        try:
            _wait_for(lambda: self.applied().get(A, 0) > before, 60, "A's bundle to be merged")
        except TimeoutError:
            return "serve did not merge a good bundle from A within 60 s of the hostile uploads"
        return None

    def _judge_http(self, mutant: Mutant, before: dict, after: dict, seconds: float) -> Outcome:
        """Over HTTP only the end state is seen: a must-refuse mutant's new records must not be there."""
        own = mutant.origin if mutant.origin in CODES else C
        keys = {(c["table"], tuple(c["key"].values())) for c in mutant.changes
                if isinstance(c.get("key"), dict) and isinstance(c.get("table"), str)
                and all(isinstance(v, (str, int, float, type(None))) for v in c["key"].values())}
        landed = [k for k in keys if k not in before and k in after]
        if mutant.expect == "refuse" and landed:
            return Outcome("accepted", seconds, "its records are in the store")
        foreign = [k for k in keys if k in after and before.get(k) != after.get(k)
                   and {_owner(before.get(k)), _owner(after.get(k))} - {None, own}]
        if foreign:
            return Outcome("partial", seconds, f"records of other communities changed: {_shown(foreign)}")
        return Outcome("refused", seconds)


def _how(summary: merge.Summary) -> str:
    """What became of a received bundle, in a few words (for the per-class diagnostics)."""
    if summary.held:
        return f"held: {summary.held[0][1][:60]}"
    if summary.refused:
        return f"refused at merge: {summary.refused[0][1][:60]}"
    if summary.rejected:
        return f"applied, record(s) rejected: {summary.rejected[0].split(' / ', 4)[-1][:60]}"
    return "applied"


def _insert(conn, table: str, row: dict) -> None:
    conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


def _owner(record):
    return None if record is None else dict(record[1]).get("community_code")


def _shown(keys) -> str:
    """Record keys for a report: the table and a masked key (no ID number in the clear)."""
    return ", ".join(f"{t} {str(k[0])[:6]}…{str(k[0])[-2:]}" for t, k in keys[:3]) + \
        (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _short_traceback(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)[-2:]
    where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(e).__name__}: {str(e)[:200]} (at {where})"


def _limit_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))


def _run_child(args, env, timeout: float):
    """Run ``args``; return (exit status, output, rusage) — the rusage gives the child's peak memory."""
    with open(os.devnull, "rb") as devnull, subprocess.Popen(
            args, env=env, stdin=devnull, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=_limit_child) as child:
        chunks = []
        reader = threading.Thread(target=lambda: chunks.append(child.stdout.read()))
        reader.start()
        timer = threading.Timer(timeout, child.kill)
        timer.start()
        _, status, usage = os.wait4(child.pid, 0)
        timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
    return child.returncode, b"".join(chunks).decode(errors="replace"), usage


def _peak_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (requests.ConnectionError, sqlite3.OperationalError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"waited {seconds:g} s for {what}")


def _wait_quiet(log_path: Path, quiet: float = 1.0, limit: float = 120) -> None:
    """Until serve's log has not grown for ``quiet`` seconds: its merges are done."""
    deadline = time.monotonic() + limit
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = log_path.stat().st_size
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)


# --- the tally and the campaign ------------------------------------------------------------------

@dataclass
class Tally:
    seed: int
    tried: int = 0
    verdicts: collections.Counter = field(default_factory=collections.Counter)
    by_kind: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    examples: dict = field(default_factory=dict)  # (kind, verdict) -> first detail
    hows: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))  # kind -> what became
    broken: list = field(default_factory=list)  # failed batch checks
    stalls: list = field(default_factory=list)  # (kind, seconds)
    memory: list = field(default_factory=list)  # (kind, MB)
    slowest: tuple = (0.0, "")
    started: float = field(default_factory=time.monotonic)

    def add(self, mutant: Mutant, outcome: Outcome, via: str = "library") -> None:
        self.tried += 1
        self.verdicts[outcome.verdict] += 1
        self.by_kind[mutant.kind][outcome.verdict] += 1
        if outcome.verdict in VIOLATIONS:
            self.examples.setdefault((mutant.kind, outcome.verdict), f"[{via}] {outcome.detail}")
        elif outcome.detail:
            self.hows[mutant.kind][outcome.detail] += 1
        if outcome.seconds > self.slowest[0]:
            self.slowest = (outcome.seconds, mutant.kind)
        if outcome.seconds > STALL_SECONDS:
            self.stalls.append((f"{mutant.kind} {mutant.detail}".strip(), outcome.seconds))
        if outcome.peak_mb and outcome.peak_mb > MEMORY_LIMIT_MB:
            self.memory.append((mutant.kind, outcome.peak_mb))

    @property
    def crashes(self) -> int:
        return self.verdicts["crash"]

    @property
    def accepted(self) -> int:
        return self.verdicts["accepted"]

    @property
    def partial(self) -> int:
        return self.verdicts["partial"]

    def line(self) -> str:
        return (f"tried / crashes / accepted / partial applies: "
                f"{self.tried:,} / {self.crashes:,} / {self.accepted:,} / {self.partial:,}")

    def clean(self) -> bool:
        return not (self.crashes or self.accepted or self.partial or self.broken or self.stalls or self.memory)

    def classes(self) -> str:
        """Per mutant class, what became of its mutants: where each kind of attack is stopped."""
        out = []
        for kind in sorted(self.by_kind):
            hows = ", ".join(f"{n}× {how}" for how, n in self.hows[kind].most_common(3))
            out.append(f"  {kind}: {sum(self.by_kind[kind].values())} — {hows}")
        return "\n".join(out)

    def report(self) -> str:
        out = [f"seed {self.seed}: {self.line()} in {time.monotonic() - self.started:.0f} s "
               f"(refused {self.verdicts['refused']:,}, applied {self.verdicts['applied']:,}; "
               f"slowest merge {self.slowest[0]:.2f} s, {self.slowest[1]})"]
        bad = {kind: counts for kind, counts in self.by_kind.items() if any(counts[v] for v in VIOLATIONS)}
        if bad:
            out.append("mutant classes that got through (tried: crash / accepted / partial):")
            for kind, counts in sorted(bad.items()):
                out.append(f"  {kind} ({sum(counts.values())}: {counts['crash']} / {counts['accepted']} / "
                           f"{counts['partial']})")
                for verdict in VIOLATIONS:
                    if (kind, verdict) in self.examples:
                        out.append(f"      {verdict}: {self.examples[kind, verdict]}")
        out += [f"check failed: {line}" for line in _dedup(self.broken)]
        out += [f"stalled: {kind} took {seconds:.1f} s (limit {STALL_SECONDS:g} s)" for kind, seconds in self.stalls]
        out += [f"memory: {kind} peaked at {mb:.0f} MB (limit {MEMORY_LIMIT_MB} MB)" for kind, mb in self.memory]
        return "\n".join(out)


def _dedup(lines: list[str]) -> list[str]:
    counts = collections.Counter(lines)
    return [f"{line} ({n}×)" if n > 1 else line for line, n in counts.items()]


def plan(rng: random.Random, count: int, heavy: bool = True):
    """Every mutant class once, then classes drawn by weight: (kind, generator) pairs."""
    generators = [(k, w, g) for k, w, g in GENERATORS if heavy or w >= HEAVY]
    for i in range(count):
        if i < len(generators):
            kind, _, make = generators[i]
        else:
            kind, _, make = rng.choices(generators, weights=[w for _, w, _ in generators])[0]
        yield kind, make


def campaign(root, count: int, seed: int, *, cli_share: float = 0.0, http_count: int = 0, batch: int = 100,
             reset_every: int = 1000, heavy: bool = True, progress=None) -> Tally:
    """Run ``count`` mutants (plus ``http_count`` over HTTP) against a fresh arena under ``root``."""
    rng = random.Random(seed)
    tally = Tally(seed)
    arena = Arena(root)
    try:
        for i, (kind, make) in enumerate(plan(rng, count, heavy)):
            mutant = make(arena, rng)
            cli = mutant.heavy or (cli_share and rng.random() < cli_share)
            outcome = arena.run_cli(mutant) if cli else arena.run(mutant)
            tally.add(mutant, outcome, via="cli" if cli else "library")
            if outcome.verdict in VIOLATIONS or arena.stuck():
                arena.reset()
            if (i + 1) % batch == 0 or i + 1 == count:
                tally.broken += arena.check()
            if (i + 1) % reset_every == 0:
                arena.reset()
            if progress:
                progress(tally)
        if http_count:
            generators = [(k, w, g) for k, w, g in GENERATORS if heavy or w >= HEAVY]
            arena.http_phase(lambda: rng.choices(generators, weights=[w for _, w, _ in generators])[0][2](arena, rng),
                             http_count, tally)
        problem = arena.audit_cli()
        if problem:
            tally.broken.append(problem)
    finally:
        arena.close()
    return tally
