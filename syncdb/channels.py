"""The ways a community and its office exchange bundles: one interface, a backend per way.

As litestream's ReplicaClient serves each of its backends, ``Channel`` is what
``transport.push`` and ``transport.pull`` talk to, whatever carries the bytes:

- ``http_channel.HttpChannel``: the office's ingest service (``syncdb serve``),
  with retries and back-off; the office's answer acknowledges each bundle.
- ``FolderChannel`` (here): a folder, such as a USB stick. A push copies the
  outbox's unacknowledged bundles into it, for ``syncdb merge`` at the office;
  a pull reads the office's outbound folder (``STORE/outbound/CODE``) copied
  into it, or into its ``CODE`` subfolder. A folder acknowledges nothing by
  itself: the bundles stay in the outbox until the office's signed
  acknowledgement, read by a pull, says it holds them.

Either way a bundle leaves the outbox only when the office acknowledges it.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from . import bundle, limits, outbox
from .errors import SyncdbError
from .files import write_atomic
from .i18n import N_, _

Echo = Callable[[str], None]
# Translated where shown: _(DEFAULT_ADVICE).
DEFAULT_ADVICE = N_("keep this folder's outbox as it is and call the street office's data administrator")


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
        raise SyncdbError(_("{url!r} is not an office address: give it with http:// or https:// in front, "
                            "e.g. {example} (the address `syncdb serve` prints)").format(url=url, example=example))
    return text.rstrip("/")


def shown_size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{max(1, round(n / 1024))} KB"


@dataclass
class PushReport:
    """What sending the outbox did. ``sent`` and ``duplicates`` are sequence numbers."""

    url: str  # where the bundles went: the office's address, or the folder
    ok: bool = True
    sent: list[int] = field(default_factory=list)  # accepted as new
    duplicates: list[int] = field(default_factory=list)  # the office already had them
    pending: list[Path] = field(default_factory=list)  # still in the outbox, unacknowledged
    error: str | None = None
    cleared: list[int] = field(default_factory=list)  # removed unsent: the office's acknowledgement covers them
    holds: int | None = None  # the office said it holds this community's bundles 1..holds
    copied: list[Path] | None = None  # the files written, when the bundles went to a folder

    def summary(self) -> str:
        if self.copied is not None:
            return _("Copied {bundles} unacknowledged bundle(s) to {url}").format(
                bundles=len(self.copied), url=self.url)
        if self.duplicates:
            done = _("{sent} bundle(s) sent, {duplicates} the office already had").format(
                sent=len(self.sent), duplicates=len(self.duplicates))
        else:
            done = _("{sent} bundle(s) sent").format(sent=len(self.sent))
        if not self.ok:
            return _("Push stopped ({done}): {error}").format(done=done, error=self.error)
        if not self.sent and not self.duplicates:
            if not self.holds:
                return _("Nothing to send: this community has made no bundle yet (the office at {url} "
                         "answered).").format(url=self.url)
            return _("Nothing to send: the office at {url} has every bundle (1 to {holds}).").format(
                url=self.url, holds=self.holds)
        if not self.pending:
            return _("{done} to {url}; the outbox is empty.").format(done=done, url=self.url)
        return _("{done} to {url}; {pending} bundle(s) left in the outbox.").format(
            done=done, url=self.url, pending=len(self.pending))


class Channel:
    """One way to the office. Push sends through ``send``; pull reads ``resolutions`` and
    ``acknowledgement``. Subclasses say where in ``where`` (shown in messages)."""

    where: str
    folder: Path | None = None  # a folder of ours to tidy after a killed run, if the channel has one

    def learn_limits(self, workdir) -> limits.Limits | None:
        """Ask the office for its caps on one bundle and remember them; None when it cannot say."""
        return None

    def send(self, workdir, echo: Echo) -> PushReport:
        """Deliver every unacknowledged bundle of the outbox, oldest first."""
        raise NotImplementedError

    def resolutions(self, code: str, office: str, after: int) -> Iterator[tuple[int, bytes]]:
        """(sequence, bytes) of each resolutions bundle for community ``code`` numbered after ``after``,
        in order; ``office`` is the office's code, which names its files."""
        raise NotImplementedError

    def acknowledgement(self, code: str, office: str) -> tuple[str, bytes] | None:
        """(where, bytes) of the office's standalone acknowledgement for ``code``, or None if there is none."""
        raise NotImplementedError


class FolderChannel(Channel):
    """A folder: a USB stick carried between the community and the office, or a shared folder."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.where = str(folder)

    def send(self, workdir, echo: Echo = lambda message: None) -> PushReport:
        """Copy every unacknowledged bundle into the folder.

        Bundles already there with the same bytes are skipped, and this
        community's bundles the office has acknowledged are removed from the
        folder. Nothing is acknowledged here: the office's answer comes with the
        next pull (its acknowledgement) or push over the line.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SyncdbError(_("cannot create the folder {folder}: {problem}").format(
                folder=self.folder, problem=e.strerror)) from None
        for path in outbox.delivered(workdir, self.folder):
            path.unlink(missing_ok=True)
            echo(_("removed {name} from {folder}: the office holds it").format(name=path.name, folder=self.folder))
        report = PushReport(url=self.where, copied=[])
        for path in outbox.pending(workdir):
            if self._copy(path, echo):
                report.copied.append(self.folder / path.name)
        report.pending = outbox.pending(workdir)
        return report

    def _copy(self, path: Path, echo: Echo) -> bool:
        """Write one outbox bundle into the folder, unless it is there already."""
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SyncdbError(_("cannot read {path} from the outbox: {problem}; {advice}").format(
                path=path, problem=e.strerror, advice=_(DEFAULT_ADVICE))) from None
        target = self.folder / path.name
        try:
            if target.read_bytes() == data:
                echo(_("{name} is already in {folder}").format(name=path.name, folder=self.folder))
                return False
        except OSError:
            pass
        write_atomic(target, data)
        echo(_("copied {name} ({size}) to {folder}").format(
            name=path.name, size=shown_size(len(data)), folder=self.folder))
        return True

    def resolutions(self, code: str, office: str, after: int) -> Iterator[tuple[int, bytes]]:
        found = {}
        pattern = f"{office}-r*{bundle.SUFFIX}"
        for path in sorted(self.folder.glob(pattern)) + sorted((self.folder / code).glob(pattern)):
            match = re.search(r"-r(\d+)\.", path.name)
            if match and int(match.group(1)) > after:
                found[int(match.group(1))] = path
        for sequence in sorted(found):
            yield sequence, found[sequence].read_bytes()

    def acknowledgement(self, code: str, office: str) -> tuple[str, bytes] | None:
        name = f"{office}-ack{bundle.SUFFIX}"
        for path in (self.folder / name, self.folder / code / name):
            if path.is_file():
                return str(path), path.read_bytes()
        return None
