"""The community side of sending: bundles from the outbox to the office.

Two ways, the same bookkeeping: a bundle leaves the outbox only when the
office acknowledges it (``community.acknowledge``). Over HTTP the office's
answer is the acknowledgment, so a push that stops half way (the line drops,
the office restarts, the PC is switched off) resumes where it stopped on the
next run; a bundle the office already holds is answered "already have it" and
acknowledged then. A folder (a USB stick) acknowledges nothing: the bundles
stay in the outbox and are copied again until the office has them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

from . import bundle, community, limits
from .errors import SyncdbError
from .files import write_atomic

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


@dataclass
class PushReport:
    """What one push did. ``sent`` and ``duplicates`` are sequence numbers."""

    url: str
    ok: bool = True
    sent: list[int] = field(default_factory=list)  # accepted as new
    duplicates: list[int] = field(default_factory=list)  # the office already had them
    pending: list[Path] = field(default_factory=list)  # still in the outbox, unacknowledged
    error: str | None = None

    def summary(self) -> str:
        done = f"{len(self.sent)} bundle(s) sent"
        if self.duplicates:
            done += f", {len(self.duplicates)} the office already had"
        if not self.ok:
            return f"Push stopped ({done}): {self.error}"
        if not self.sent and not self.duplicates:
            return f"Nothing to send: the office at {self.url} has every bundle."
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
    paths = community.pending(workdir)
    with requests.Session() as http:
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
    report.pending = community.pending(workdir)
    return report


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

    Bundles already there with the same bytes are skipped. Nothing is
    acknowledged: the office's answer will come with the next push or pull.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SyncdbError(f"cannot create the folder {folder}: {e.strerror}") from None
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
