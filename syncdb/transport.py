"""Push and pull: the library calls that ``syncdb push``, ``pull``, ``sync`` and the demo are thin over.

Both work over any ``channels.Channel``: ``http_channel.HttpChannel`` (the
office's ``syncdb serve``) or ``channels.FolderChannel`` (a USB stick):

    channel = HttpChannel("http://192.0.2.10:8765")        # or FolderChannel("E:/syncdb")
    pushed = push(folder, channel, domains, secret)      # export what changed, send the outbox
    pulled = pull(folder, channel, domains, secret)      # apply the office's resolutions

The bookkeeping is the same either way: a bundle leaves the outbox only when
the office acknowledges it (its answer over HTTP, or its signed
acknowledgement that a pull reads), so a push that stops half way resumes
where it stopped on the next run.

A run killed half way leaves temporary files (``.NAME.tmp-PID``,
``.NAME.payload-PID``) and maybe a pull stopped after its commit point;
``tidy`` clears both at the start of the next push.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import community, limits, outbox
from .channels import Channel, Echo, FolderChannel, PushReport, office_url
from .community import ExportResult
from .crypto import Secret
from .errors import SyncdbError
from .files import storage_error
from .holds import DELETE_SHARE
from .http_channel import HttpChannel
from .i18n import _
from .pull import PullReport, finish_interrupted, pull_from
from .schema import Domain
from .state import read_config


def channel_for(url: str | None = None, folder=None, *, retries: int = 5, timeout: float = 30) -> Channel:
    """The channel a command names: the office at ``url`` (checked), or ``folder``; exactly one."""
    if bool(url) == bool(folder):
        raise SyncdbError(_("give exactly one of an office address or a folder"))
    return HttpChannel(office_url(url), retries=retries, timeout=timeout) if url else FolderChannel(folder)


@dataclass
class PushResult:
    """What one push did: the bundles it made (``exported``), and how sending them went."""

    exported: ExportResult
    delivery: PushReport

    @property
    def ok(self) -> bool:
        """Every bundle went, and no deletion waits for a person."""
        return self.delivery.ok and not self.exported.deletes_held


def push(workdir, channel: Channel, domains: dict[str, Domain], secret: Secret, *,
         confirm_deletes: bool = False, delete_share: float = DELETE_SHARE,
         notify: Callable[[str], None] = lambda message: None, progress=None,
         exported: Callable[[ExportResult], None] = lambda result: None, echo: Echo = print) -> PushResult:
    """Tidy up after a killed run, learn the office's caps, export what changed, send the outbox.

    ``notify`` and ``progress`` are the export's (``community.export``);
    ``exported`` is told what was made before anything is sent, ``echo`` each
    line of the sending. Raises SyncdbError when the export fails; the result
    says how the sending went (a network problem never raises).
    """
    tidy(workdir, channel.folder, then=_("run `syncdb push` again"))
    channel.learn_limits(workdir)  # so the export makes bundles the office will take
    made = community.export(workdir, domains, secret, notify=notify, progress=progress,
                            confirm_deletes=confirm_deletes, delete_share=delete_share)
    exported(made)
    return PushResult(made, channel.send(workdir, echo))


def pull(workdir, channel: Channel, domains: dict[str, Domain], secret: Secret) -> PullReport:
    """Apply the office's resolutions the channel holds, after the last one pulled (``pull.py``)."""
    return pull_from(workdir, channel, domains, secret)


def tidy(workdir, folder=None, then: str | None = None) -> list[Path]:
    """Clear what a killed run left: finish a pull stopped half way, remove the temporary files.

    Looks in the outbox, and in ``folder`` (a USB stick) if given; returns
    the files removed. A temporary file of a process still running is left.
    """
    read_config(workdir)  # not a community folder: say so, before looking inside
    try:
        finish_interrupted(workdir)
        removed = outbox.remove_leftovers(community.outbox_dir(workdir))
    except (OSError, sqlite3.Error) as e:
        # Often the first write of the night: a full disk is named here, with what to do.
        raise storage_error(e, workdir, then=then) from None
    if folder is not None and Path(folder).is_dir():
        removed += outbox.remove_leftovers(Path(folder))
    return removed


# The calls of earlier releases, each one channel's part now.

def push_to_url(workdir, url: str, *, retries: int = 5, backoff: float = 0.5, timeout: float = 30,
                echo: Echo = print) -> PushReport:
    """Send every unacknowledged bundle to the office at ``url`` (``HttpChannel.send``)."""
    return HttpChannel(url, retries=retries, backoff=backoff, timeout=timeout).send(workdir, echo)


def push_to_folder(workdir, folder, *, echo: Echo = lambda message: None) -> list[Path]:
    """Copy every unacknowledged bundle into ``folder``; return the files written (``FolderChannel.send``)."""
    return FolderChannel(folder).send(workdir, echo).copied


def learn_limits(workdir, url: str) -> limits.Limits | None:
    """Ask the office at ``url`` for its caps and remember them (``HttpChannel.learn_limits``)."""
    return HttpChannel(url).learn_limits(workdir)
