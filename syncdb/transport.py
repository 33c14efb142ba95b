"""The community side of sending: bundles from the outbox to the office.

Two ways, the same bookkeeping: a bundle leaves the outbox only when the
office acknowledges it (``community.acknowledge``). Over HTTP the office's
answer is the acknowledgment, so a push that stops half way (the line drops,
the office restarts, the PC is switched off) resumes where it stopped on the
next run; a bundle the office already holds is answered "already have it" and
acknowledged then. A folder (a USB stick) acknowledges nothing by itself: the
bundles stay in the outbox and are copied again until the office's signed
acknowledgement (``pull.acknowledgement``) says it holds them, which
``syncdb pull`` and a push over HTTP read.

A run killed half way leaves temporary files (``.NAME.tmp-PID``,
``.NAME.payload-PID``) and maybe a pull stopped after its commit point;
``tidy`` clears both at the start of the next run.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import sqlite3
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

from . import bundle, community, limits, pull
from .community import _meta, _state
from .crypto import Secret
from .errors import SyncdbError
from .files import storage_error, write_atomic
from .schema import Domain

# What a community worker can do about each refusal; the office's own message says why.
ADVICE = {
    "unenrolled": "ask the street office to enrol this community with its CODE.pub.json "
                  "(`syncdb office enroll`), then push again",
    "bad-signature": "this folder's key is not the one the office enrolled; ask the data administrator "
                     "to enrol the CODE.pub.json of this folder, or push from the folder that was enrolled",
    "wrong-recipient": "this community was set up with another office's key (or before the office key "
                       "changed), so this office cannot read its bundles; they stay in the outbox. Ask the "
                       "data administrator for this office's office.pub.json, then run "
                       "`syncdb community set-office-key WORKDIR office.pub.json` and push again",
    "replay": "keep this folder's outbox as it is and call the data administrator",
    "unsupported": "the office runs an older syncdb; ask the data administrator to upgrade it",
    "too-large": "upgrade syncdb here (it makes bundles to fit the office's limits), or ask the data "
                 "administrator to raise the office's limits (STORE/limits.json, `syncdb serve "
                 "--max-bundle-mb`)",
    "disk-full": "nothing is lost: they go at the next push, once the street office has freed space; "
                 "tell its data administrator",
}
DEFAULT_ADVICE = "keep this folder's outbox as it is and call the street office's data administrator"
MAX_DELAY = 60.0
LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?:tmp|payload)-(?P<pid>[0-9]+)")
LEFTOVER_AGE = 3600  # seconds; where a process cannot be asked after (Windows), an older file is left over


def office_url(url: str) -> str:
    """The office's address as given, checked (http or https, and a host), without a trailing slash.

    Raises SyncdbError naming the fix: ``127.0.0.1:8765`` has no scheme, and
    guessing one could send the bundles in clear where https was meant.
    """
    text = url.strip()
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        example = f"http://{text}" if text and "://" not in text else "http://192.0.2.10:8765"
        raise SyncdbError(f"{url!r} is not an office address: give it with http:// or https:// in front, "
                          f"e.g. {example} (the address `syncdb serve` prints)")
    return text.rstrip("/")


def tidy(workdir, folder=None, then: str = "run the same command again") -> list[Path]:
    """Clear what a killed run left: finish a pull stopped half way, remove the temporary files.

    Looks in the outbox, and in ``folder`` (a USB stick) if given; returns
    the files removed. A temporary file of a process still running is left.
    """
    community.read_config(workdir)  # not a community folder: say so, before looking inside
    try:
        pull.finish_interrupted(workdir)
        removed = _remove_leftovers(community.outbox_dir(workdir))
    except (OSError, sqlite3.Error) as e:
        # Often the first write of the night: a full disk is named here, with what to do.
        raise storage_error(e, workdir, then=then) from None
    if folder is not None and Path(folder).is_dir():
        removed += _remove_leftovers(Path(folder))
    return removed


def _remove_leftovers(folder: Path) -> list[Path]:
    removed = []
    for path in folder.glob(f".*{bundle.SUFFIX}.*-*"):
        match = LEFTOVER.fullmatch(path.name)
        if not match or not match["name"].endswith(bundle.SUFFIX) or _running(int(match["pid"]), path):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def _running(pid: int, path: Path) -> bool:
    """Is the process that wrote ``path`` still at work?"""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would stop it there
        try:
            return time.time() - path.stat().st_mtime < LEFTOVER_AGE
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@dataclass
class PushReport:
    """What one push did. ``sent`` and ``duplicates`` are sequence numbers."""

    url: str
    ok: bool = True
    sent: list[int] = field(default_factory=list)  # accepted as new
    duplicates: list[int] = field(default_factory=list)  # the office already had them
    pending: list[Path] = field(default_factory=list)  # still in the outbox, unacknowledged
    error: str | None = None
    cleared: list[int] = field(default_factory=list)  # removed unsent: the office's acknowledgement covers them
    holds: int | None = None  # the office said it holds this community's bundles 1..holds

    def summary(self) -> str:
        done = f"{len(self.sent)} bundle(s) sent"
        if self.duplicates:
            done += f", {len(self.duplicates)} the office already had"
        if not self.ok:
            return f"Push stopped ({done}): {self.error}"
        if not self.sent and not self.duplicates:
            if not self.holds:
                return f"Nothing to send: this community has made no bundle yet (the office at {self.url} answered)."
            return f"Nothing to send: the office at {self.url} has every bundle (1 to {self.holds})."
        return f"{done} to {self.url}; the outbox is empty." if not self.pending else \
            f"{done} to {self.url}; {len(self.pending)} bundle(s) left in the outbox."


class _Stop(Exception):
    """Stop the push; the message says why and what to do."""


def push_to_url(workdir, url: str, *, retries: int = 5, backoff: float = 0.5, timeout: float = 30,
                echo: Callable[[str], None] = print) -> PushReport:
    """Send every unacknowledged bundle to the office at ``url``, oldest first.

    Retries connection errors, timeouts and 5xx answers with exponential
    back-off; stops at the first refusal (the office holds later bundles
    behind a gap anyway). Never raises for a network problem: the report
    says what happened, and what is left stays in the outbox.
    """
    base = url.rstrip("/")
    report = PushReport(url=base)
    code = community.read_config(workdir)["code"]
    with requests.Session() as http:
        report.cleared = _take_acknowledgement(http, workdir, base, code, timeout, echo)
        paths = community.pending(workdir)
        for index, path in enumerate(paths):
            left = len(paths) - index
            try:
                data = _read_bundle(path)
                header, _ = bundle.read_header(io.BytesIO(data))
                status, answer = _post(http, f"{base}/v1/bundles", data, base, left,
                                       retries, backoff, timeout, echo)
                _check_answer(status, answer, header, path, left, base)
            except _Stop as e:
                report.ok, report.error = False, str(e)
                break
            except bundle.BundleError as e:
                report.ok = False
                report.error = (f"{path.name} in the outbox is damaged ({e}); nothing more was sent; "
                                f"{DEFAULT_ADVICE}")
                break
            community.acknowledge(workdir, header.sequence)
            if answer["status"] == "duplicate":
                report.duplicates.append(header.sequence)
                echo(f"sent {path.name} ({_size(len(data))}): already at the office")
            else:
                report.sent.append(header.sequence)
                echo(f"sent {path.name} ({_size(len(data))}): accepted")
        if report.ok and not report.sent and not report.duplicates:
            # "Nothing to send" is said only once the office has said it holds every bundle.
            try:
                report.holds = _confirm_held(http, workdir, base, code, timeout)
            except _Stop as e:
                report.ok, report.error = False, str(e)
    report.pending = community.pending(workdir)
    return report


def _take_acknowledgement(http, workdir, base: str, code: str, timeout: float, echo) -> list[int]:
    """Clear what the office's signed acknowledgement covers (carried by USB, say): never sent twice."""
    try:
        answer = http.get(f"{base}/v1/communities/{code}/acknowledgement", timeout=timeout)
    except requests.RequestException:
        return []  # the sending below says what is wrong with the line
    if answer.status_code != 200:
        return []  # none yet, or an older office
    try:
        n = pull.acknowledgement(workdir, answer.content)
    except SyncdbError as e:
        echo(f"the office's acknowledgement was not used ({e})")
        return []
    cleared = pull.clear_acknowledged(workdir, n)
    if cleared:
        echo(f"the office holds bundles up to {n}: {len(cleared)} removed from the outbox without sending")
    return cleared


def _confirm_held(http, workdir, base: str, code: str, timeout: float) -> int:
    """How many of this community's bundles the office holds, checked against how many it made."""
    try:
        response = http.get(f"{base}/v1/communities/{code}/acknowledged", timeout=timeout)
    except requests.Timeout:
        raise _Stop(f"nothing is left to send, but the office at {base} did not answer within {timeout:g} s, "
                    "so it is not known to hold every bundle; push again later") from None
    except requests.RequestException as e:
        problem = _why(e) if isinstance(e, requests.ConnectionError) else type(e).__name__
        raise _Stop(f"nothing is left to send, but the office at {base} did not answer ({problem}), so it is "
                    "not known to hold every bundle; check the --to address and the line, then push again") from None
    answer = _json(response)
    held = answer.get("acknowledged") if answer and response.status_code == 200 else None
    if type(held) is not int:
        raise _Stop(f"nothing is left to send, but {base} answered {response.status_code} without saying which "
                    "bundles it holds: it does not look like the office ingest service (`syncdb serve`); "
                    "check the --to URL")
    made = _made(workdir)
    if held < made:
        raise _Stop(f"the office at {base} holds this community's bundles only up to {held}, yet it "
                    f"acknowledged all {made} earlier and the outbox no longer has them: its store may have "
                    "been restored from an older backup. Call the street office's data administrator")
    return held


def _made(workdir) -> int:
    """How many bundles this community has made (its last sequence number)."""
    state = _state(workdir)
    try:
        return int(_meta(state, "next_sequence", 1)) - 1
    finally:
        state.close()


def push(workdir, url: str, domains: dict[str, Domain], secret: Secret, *, retries: int = 5,
         echo: Callable[[str], None] = print) -> PushReport:
    """``syncdb push --to URL`` in one call: tidy up after a killed run, learn the office's caps,
    export what changed, and send every unacknowledged bundle. Raises SyncdbError when the
    export fails; the report says how the sending went."""
    url = office_url(url)
    tidy(workdir)
    learn_limits(workdir, url)
    result = community.export(workdir, domains, secret, notify=lambda m: echo(f"Note: {m}"))
    for sequence, _, changes in result.bundles:
        echo(f"Bundle {sequence}: {changes} change(s)")
    if not result.bundles:
        echo("No new changes since the last push.")
    return push_to_url(workdir, url, retries=retries, echo=echo)


def learn_limits(workdir, url: str, timeout: float = 10) -> limits.Limits | None:
    """Ask the office at ``url`` for its caps (GET /v1/limits) and remember them for the exports.

    Returns them, or None when the office does not say (no line, an older
    office): the export then uses what it last learnt, or the defaults.
    """
    try:
        response = requests.get(f"{url.rstrip('/')}/v1/limits", timeout=timeout)
    except requests.RequestException:
        return None
    answer = _json(response) if response.status_code == 200 else None
    if answer is None:
        return None
    try:
        caps = limits.from_dict({k: v for k, v in answer.items() if k in limits.DEFAULT.as_dict()})
    except SyncdbError:
        return None
    max_bundle = answer.get("max_bundle")
    if type(max_bundle) is int and max_bundle > 0:
        # A bundle is its payload compressed (never more than a hair larger) plus a header and
        # framing: keep the payload a little under the office's upload limit.
        fit = max(limits.RANGES["max_payload"][0], max_bundle * 99 // 100 - 128 * limits.KiB)
        caps = dataclasses.replace(caps, max_payload=min(caps.max_payload, fit))
        if caps.max_line > caps.max_payload:
            caps = dataclasses.replace(caps, max_line=caps.max_payload)
    community.remember_office_limits(workdir, caps)
    return caps


def _read_bundle(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _Stop(f"{path.name} is missing from the outbox ({path}) although the office never "
                    f"acknowledged it; {DEFAULT_ADVICE}") from None
    except OSError as e:
        raise _Stop(f"cannot read {path}: {e.strerror}") from None


def _post(http, endpoint, data, base, left, retries, backoff, timeout, echo) -> tuple[int, dict | None]:
    """POST with retries; returns the final (status, JSON answer or None) or raises _Stop."""
    tries = retries + 1
    for attempt in range(1, tries + 1):
        answered = None
        try:
            response = http.post(endpoint, data=data, timeout=timeout,
                                 headers={"Content-Type": "application/octet-stream"})
        except requests.Timeout:
            problem = f"no answer within {timeout:g} s"
        except requests.ConnectionError as e:
            problem = _why(e)
        except requests.RequestException as e:  # a URL requests cannot use: trying again won't help
            raise _Stop(f"cannot send to {base} ({type(e).__name__}: {e}); check the --to URL, like "
                        "http://192.0.2.10:8765") from None
        else:
            answer = _json(response)
            if (response.status_code < 500 and response.status_code not in (408, 429)) \
                    or response.status_code == 507:  # a full disk at the office: trying again soon won't help
                return response.status_code, answer
            answered = problem = f"HTTP {response.status_code}"
            if answer and answer.get("message"):
                problem += f": {answer['message']}"
        if attempt == tries:
            left_behind = (f"the {left} bundle(s) stay in the outbox for the next run, "
                           "or carry them with --outbox")
            if answered:
                raise _Stop(f"the office at {base} failed to take the bundle {tries} time(s) ({problem}); "
                            f"{left_behind}; if this goes on, ask the data administrator to look at "
                            "the office log")
            raise _Stop(f"the office at {base} did not answer after {tries} tries ({problem}); {left_behind}")
        # Jitter, so that communities pushing at the same hour spread out after an office restart.
        delay = min(MAX_DELAY, backoff * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)
        what = f"the office answered {problem}" if answered else f"the office did not answer ({problem})"
        echo(f"{what}; trying again in {delay:.1f} s (try {attempt + 1} of {tries})")
        time.sleep(delay)
    raise AssertionError("unreachable")


def _check_answer(status: int, answer: dict | None, header: bundle.Header, path: Path, left: int,
                  base: str) -> None:
    """Accept only an answer that acknowledges exactly this bundle; else raise _Stop."""
    if status in (200, 201) and answer is not None and answer.get("status") in ("accepted", "duplicate"):
        if answer.get("origin") == header.origin and answer.get("sequence") == header.sequence:
            return
        raise _Stop(f"the office acknowledged bundle {answer.get('origin')} #{answer.get('sequence')} "
                    f"when sent {path.name}; nothing was marked as delivered; {DEFAULT_ADVICE}")
    kept = f"nothing more was sent, and the {left} bundle(s) stay in the outbox"
    if status in (404, 405):
        raise _Stop(f"{base} has no syncdb ingest endpoint at /v1/bundles (HTTP {status}); check the "
                    "--to URL: it is the address `syncdb serve` listens on, like http://192.0.2.10:8765; "
                    f"{kept}")
    if answer is None or "error" not in answer:
        # A proxy, a captive portal or another service answered, not a syncdb office.
        raise _Stop(f"{base} answered {status} without a syncdb answer: it does not look like the "
                    f"office ingest service (`syncdb serve`); check the --to URL; {kept}")
    reason = answer["error"]
    raise _Stop(f"the office refused {path.name} ({reason}, HTTP {status}): {answer.get('message', '')}; "
                f"{kept}; {ADVICE.get(reason, DEFAULT_ADVICE)}")


def _json(response) -> dict | None:
    if not response.headers.get("Content-Type", "").startswith("application/json"):
        return None
    try:
        answer = response.json()
    except (ValueError, json.JSONDecodeError):
        return None
    return answer if isinstance(answer, dict) else None


def _why(error: requests.ConnectionError) -> str:
    """'connection refused' rather than urllib3's paragraph."""
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(error))
    return match.group(1).strip().lower() if match else "could not connect"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{max(1, round(n / 1024))} KB"


def push_to_folder(workdir, folder, *, echo: Callable[[str], None] = lambda message: None) -> list[Path]:
    """Copy every unacknowledged bundle into ``folder`` (a USB stick); return the files written.

    Bundles already there with the same bytes are skipped, and this
    community's bundles the office has acknowledged are removed from the
    folder. Nothing is acknowledged here: the office's answer comes with the
    next pull (its acknowledgement) or push over the line.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SyncdbError(f"cannot create the folder {folder}: {e.strerror}") from None
    for path in _delivered(workdir, folder):
        path.unlink(missing_ok=True)
        echo(f"removed {path.name} from {folder}: the office holds it")
    copied = []
    for path in community.pending(workdir):
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SyncdbError(f"cannot read {path} from the outbox: {e.strerror}; {DEFAULT_ADVICE}") from None
        target = folder / path.name
        try:
            if target.read_bytes() == data:
                echo(f"{path.name} is already in {folder}")
                continue
        except OSError:
            pass
        write_atomic(target, data)
        echo(f"copied {path.name} ({_size(len(data))}) to {folder}")
        copied.append(target)
    return copied


def _delivered(workdir, folder: Path) -> list[Path]:
    """This community's bundles in ``folder`` that the office has acknowledged (and the outbox dropped)."""
    code = community.read_config(workdir)["code"]
    pending = {p.name for p in community.pending(workdir)}
    made = _made(workdir)
    out = []
    for path in sorted(folder.glob(f"{code}-*{bundle.SUFFIX}")):
        sequence = pull.bundle_sequence(path.name)
        if sequence is not None and sequence <= made and path.name not in pending \
                and path.name == bundle.file_name(code, sequence):
            out.append(path)
    return out
