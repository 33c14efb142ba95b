"""The HTTP channel: the office's ingest service (``syncdb serve``), for push and pull.

Over HTTP the office's answer is the acknowledgment, so a push that stops half
way (the line drops, the office restarts, the PC is switched off) resumes where
it stopped on the next run; a bundle the office already holds is answered
"already have it" and acknowledged then. Connection errors, timeouts and 5xx
answers are retried with exponential back-off and jitter; a refusal stops the
push with what the community worker can do about it. Endpoints:

    POST /v1/bundles                                  a community's bundle
    GET  /v1/limits                                   the office's caps on one bundle
    GET  /v1/communities/CODE/acknowledged            how many of CODE's bundles the office holds
    GET  /v1/communities/CODE/acknowledgement         the office's signed acknowledgement for CODE
    GET  /v1/communities/CODE/outbound[/SEQUENCE]     the resolutions for CODE: the list, one bundle
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import re
import time
from pathlib import Path
from typing import Iterator

import requests

from . import bundle, limits, outbox
from .channels import DEFAULT_ADVICE, Channel, Echo, PushReport, shown_size
from .errors import SyncdbError
from .i18n import N_, _
from .state import read_config, remember_office_limits

# What a community worker can do about each refusal; the office's own message says why.
# Keyed by the office's machine word; translated where shown.
ADVICE = {
    "unenrolled": N_("ask the street office to enrol this community with its CODE.pub.json "
                     "(`syncdb office enroll`), then push again"),
    "bad-signature": N_("this folder's key is not the one the office enrolled; ask the data administrator "
                        "to enrol the CODE.pub.json of this folder, or push from the folder that was enrolled"),
    "wrong-recipient": N_("this community was set up with another office's key (or before the office key "
                          "changed), so this office cannot read its bundles; they stay in the outbox. Ask the "
                          "data administrator for this office's office.pub.json, then run "
                          "`syncdb community set-office-key WORKDIR office.pub.json` and push again"),
    "replay": N_("keep this folder's outbox as it is and call the data administrator"),
    "unsupported": N_("the office runs an older syncdb; ask the data administrator to upgrade it"),
    "too-large": N_("upgrade syncdb here (it makes bundles to fit the office's limits), or ask the data "
                    "administrator to raise the office's limits (STORE/limits.json, `syncdb serve "
                    "--max-bundle-mb`)"),
    "disk-full": N_("nothing is lost: they go at the next push, once the street office has freed space; "
                    "tell its data administrator"),
}
# The operating system's words for the usual connection failures (_why), for the catalogue.
CONNECTION_PROBLEMS = (
    N_("connection refused"), N_("no route to host"), N_("network is unreachable"),
    N_("name or service not known"), N_("temporary failure in name resolution"),
    N_("connection reset by peer"), N_("connection timed out"),
)
MAX_DELAY = 60.0
LIMITS_TIMEOUT = 10.0  # seconds; asking for the caps is a courtesy, never worth a long wait


class _Stop(Exception):
    """Stop the push; the message says why and what to do."""


class HttpChannel(Channel):
    """The office at ``url``; ``retries`` per bundle, waits of ``backoff`` s doubling, ``timeout`` per request."""

    def __init__(self, url: str, *, retries: int = 5, backoff: float = 0.5, timeout: float = 30):
        # Taken as given (``channels.office_url`` checks an address a person typed): an address
        # requests cannot use is said by the push or pull that tries it.
        self.base = url.strip().rstrip("/")
        self.where = self.base
        self.retries, self.backoff, self.timeout = retries, backoff, timeout

    # -- push
    def send(self, workdir, echo: Echo = print) -> PushReport:
        """Send every unacknowledged bundle to the office, oldest first.

        Retries connection errors, timeouts and 5xx answers with exponential
        back-off; stops at the first refusal (the office holds later bundles
        behind a gap anyway). Never raises for a network problem: the report
        says what happened, and what is left stays in the outbox.
        """
        report = PushReport(url=self.base)
        code = read_config(workdir)["code"]
        with requests.Session() as http:
            report.cleared = self._take_acknowledgement(http, workdir, code, echo)
            paths = outbox.pending(workdir)
            for index, path in enumerate(paths):
                if not self._send_one(http, workdir, path, len(paths) - index, report, echo):
                    break
            if report.ok and not report.sent and not report.duplicates:
                # "Nothing to send" is said only once the office has said it holds every bundle.
                try:
                    report.holds = self._confirm_held(http, workdir, code)
                except _Stop as e:
                    report.ok, report.error = False, str(e)
        report.pending = outbox.pending(workdir)
        return report

    def _send_one(self, http, workdir, path: Path, left: int, report: PushReport, echo: Echo) -> bool:
        """POST one bundle; acknowledge it once the office holds it. False: stop (the report says why)."""
        try:
            data = _read_bundle(path)
            header, __ = bundle.read_header(io.BytesIO(data))
            status, answer = self._post(http, data, left, echo)
            _check_answer(status, answer, header, path, left, self.base)
        except _Stop as e:
            report.ok, report.error = False, str(e)
            return False
        except bundle.BundleError as e:
            report.ok = False
            report.error = _("{name} in the outbox is damaged ({error}); nothing more was sent; {advice}").format(
                name=path.name, error=e, advice=_(DEFAULT_ADVICE))
            return False
        outbox.acknowledge(workdir, header.sequence)
        if answer["status"] == "duplicate":
            report.duplicates.append(header.sequence)
            echo(_("sent {name} ({size}): already at the office").format(name=path.name, size=shown_size(len(data))))
        else:
            report.sent.append(header.sequence)
            echo(_("sent {name} ({size}): accepted").format(name=path.name, size=shown_size(len(data))))
        return True

    def _take_acknowledgement(self, http, workdir, code: str, echo: Echo) -> list[int]:
        """Clear what the office's signed acknowledgement covers (carried by USB, say): never sent twice."""
        found = self._acknowledgement(http, code)
        if found is None:
            return []  # none yet, an older office, or no line (the sending below says what is wrong with it)
        try:
            n = outbox.acknowledgement(workdir, found[1])
        except SyncdbError as e:
            echo(_("the office's acknowledgement was not used ({error})").format(error=e))
            return []
        cleared = outbox.clear_acknowledged(workdir, n)
        if cleared:
            echo(_("the office holds bundles up to {sequence}: {cleared} removed from the outbox without "
                   "sending").format(sequence=n, cleared=len(cleared)))
        return cleared

    def _confirm_held(self, http, workdir, code: str) -> int:
        """How many of this community's bundles the office holds, checked against how many it made."""
        base, timeout = self.base, self.timeout
        try:
            response = http.get(f"{base}/v1/communities/{code}/acknowledged", timeout=timeout)
        except requests.Timeout:
            raise _Stop(_("nothing is left to send, but the office at {base} did not answer within {timeout:g} s, "
                          "so it is not known to hold every bundle; push again later").format(
                base=base, timeout=timeout)) from None
        except requests.RequestException as e:
            problem = _why(e) if isinstance(e, requests.ConnectionError) else type(e).__name__
            raise _Stop(_("nothing is left to send, but the office at {base} did not answer ({problem}), so it is "
                          "not known to hold every bundle; check the --to address and the line, then push "
                          "again").format(base=base, problem=problem)) from None
        answer = _json(response)
        held = answer.get("acknowledged") if answer and response.status_code == 200 else None
        if type(held) is not int:
            raise _Stop(_("nothing is left to send, but {base} answered {status} without saying which "
                          "bundles it holds: it does not look like the office ingest service (`syncdb serve`); "
                          "check the --to URL").format(base=base, status=response.status_code))
        made = outbox.made(workdir)
        if held < made:
            raise _Stop(_("the office at {base} holds this community's bundles only up to {held}, yet it "
                          "acknowledged all {made} earlier and the outbox no longer has them: its store may have "
                          "been restored from an older backup. Call the street office's data administrator").format(
                base=base, held=held, made=made))
        return held

    def _post(self, http, data: bytes, left: int, echo: Echo) -> tuple[int, dict | None]:
        """POST with retries; returns the final (status, JSON answer or None) or raises _Stop."""
        base, timeout, tries = self.base, self.timeout, self.retries + 1
        for attempt in range(1, tries + 1):
            answered = None
            try:
                response = http.post(f"{base}/v1/bundles", data=data, timeout=timeout,
                                     headers={"Content-Type": "application/octet-stream"})
            except requests.Timeout:
                problem = _("no answer within {timeout:g} s").format(timeout=timeout)
            except requests.ConnectionError as e:
                problem = _why(e)
            except requests.RequestException as e:  # a URL requests cannot use: trying again won't help
                raise _Stop(_("cannot send to {base} ({kind}: {error}); check the --to URL, like "
                              "http://192.0.2.10:8765").format(base=base, kind=type(e).__name__, error=e)) from None
            else:
                answer = _json(response)
                if (response.status_code < 500 and response.status_code not in (408, 429)) \
                        or response.status_code == 507:  # a full disk at the office: trying again soon won't help
                    return response.status_code, answer
                answered = problem = f"HTTP {response.status_code}"
                if answer and answer.get("message"):
                    problem += f": {answer['message']}"
            if attempt == tries:
                if answered:
                    raise _Stop(_("the office at {base} failed to take the bundle {tries} time(s) ({problem}); "
                                  "the {left} bundle(s) stay in the outbox for the next run, or carry them with "
                                  "--outbox; if this goes on, ask the data administrator to look at "
                                  "the office log").format(base=base, tries=tries, problem=problem, left=left))
                raise _Stop(_("the office at {base} did not answer after {tries} tries ({problem}); the {left} "
                              "bundle(s) stay in the outbox for the next run, or carry them with --outbox").format(
                    base=base, tries=tries, problem=problem, left=left))
            # Jitter, so that communities pushing at the same hour spread out after an office restart.
            delay = min(MAX_DELAY, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)
            if answered:
                what = _("the office answered {problem}; trying again in {delay:.1f} s (try {attempt} of {tries})")
            else:
                what = _("the office did not answer ({problem}); trying again in {delay:.1f} s "
                         "(try {attempt} of {tries})")
            echo(what.format(problem=problem, delay=delay, attempt=attempt + 1, tries=tries))
            time.sleep(delay)
        raise AssertionError("unreachable")

    def learn_limits(self, workdir) -> limits.Limits | None:
        """Ask the office for its caps (GET /v1/limits) and remember them for the exports.

        Returns them, or None when the office does not say (no line, an older
        office): the export then uses what it last learnt, or the defaults.
        """
        try:
            response = requests.get(f"{self.base}/v1/limits", timeout=LIMITS_TIMEOUT)
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
        remember_office_limits(workdir, caps)
        return caps

    # -- pull
    def resolutions(self, code: str, office: str, after: int) -> Iterator[tuple[int, bytes]]:
        base = self.base
        try:
            listing = requests.get(f"{base}/v1/communities/{code}/outbound", timeout=self.timeout)
            if listing.status_code != 200:
                raise SyncdbError(_("the office at {base} answered {status} for the list of resolutions; "
                                    "check the --from URL (the address `syncdb serve` listens on)").format(
                    base=base, status=listing.status_code))
            for sequence in sorted(s for s in listing.json()["bundles"] if s > after):
                answer = requests.get(f"{base}/v1/communities/{code}/outbound/{sequence}", timeout=self.timeout)
                if answer.status_code != 200:
                    raise SyncdbError(_("the office at {base} did not give resolutions bundle {sequence} "
                                        "(HTTP {status}); pull again later").format(
                        base=base, sequence=sequence, status=answer.status_code))
                yield sequence, answer.content
        except requests.RequestException as e:
            raise SyncdbError(_("could not reach the office at {base} ({kind}); nothing was changed, "
                                "pull again when the line is up, or use --inbox with a USB stick").format(
                base=base, kind=type(e).__name__)) from None

    def acknowledgement(self, code: str, office: str) -> tuple[str, bytes] | None:
        # An office that does not answer now is told by the resolutions before it.
        return self._acknowledgement(requests, code)

    def _acknowledgement(self, http, code: str) -> tuple[str, bytes] | None:
        """(where, bytes) of the office's signed acknowledgement for ``code``; None if it has none or no answer."""
        where = f"{self.base}/v1/communities/{code}/acknowledgement"
        try:
            answer = http.get(where, timeout=self.timeout)
        except requests.RequestException:
            return None
        return (where, answer.content) if answer.status_code == 200 else None


def _read_bundle(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _Stop(_("{name} is missing from the outbox ({path}) although the office never "
                      "acknowledged it; {advice}").format(name=path.name, path=path, advice=_(DEFAULT_ADVICE))) from None
    except OSError as e:
        raise _Stop(_("cannot read {path}: {problem}").format(path=path, problem=e.strerror)) from None



def _check_answer(status: int, answer: dict | None, header: bundle.Header, path: Path, left: int,
                  base: str) -> None:
    """Accept only an answer that acknowledges exactly this bundle; else raise _Stop."""
    if status in (200, 201) and answer is not None and answer.get("status") in ("accepted", "duplicate"):
        if answer.get("origin") == header.origin and answer.get("sequence") == header.sequence:
            return
        raise _Stop(_("the office acknowledged bundle {origin} #{sequence} when sent {name}; nothing was marked "
                      "as delivered; {advice}").format(origin=answer.get("origin"), sequence=answer.get("sequence"),
                                                      name=path.name, advice=_(DEFAULT_ADVICE)))
    kept = _("nothing more was sent, and the {left} bundle(s) stay in the outbox").format(left=left)
    if status in (404, 405):
        raise _Stop(_("{base} has no syncdb ingest endpoint at /v1/bundles (HTTP {status}); check the "
                      "--to URL: it is the address `syncdb serve` listens on, like http://192.0.2.10:8765; "
                      "{kept}").format(base=base, status=status, kept=kept))
    if answer is None or "error" not in answer:
        # A proxy, a captive portal or another service answered, not a syncdb office.
        raise _Stop(_("{base} answered {status} without a syncdb answer: it does not look like the "
                      "office ingest service (`syncdb serve`); check the --to URL; {kept}").format(
            base=base, status=status, kept=kept))
    reason = answer["error"]
    raise _Stop(_("the office refused {name} ({reason}, HTTP {status}): {message}; {kept}; {advice}").format(
        name=path.name, reason=reason, status=status, message=answer.get("message", ""), kept=kept,
        advice=_(ADVICE.get(reason, DEFAULT_ADVICE))))



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
    # The usual ones are in the catalogue (CONNECTION_PROBLEMS); any other reads as the system says it.
    text = match.group(1).strip().lower() if match else ""
    return _(text) if text else _("could not connect")  # _("") would be the catalogue's header
