"""The community's nightly run: push, then pull, for a scheduled task (Task Scheduler or cron).

``sync`` does what a worker would type (``syncdb push --to URL`` then
``syncdb pull --from URL``: ``transport.push`` and ``transport.pull`` over
one HTTP channel), writes every line to one log file as well, and sums the
night up in one result: ``ok`` is False when either half
failed, so the task's exit status shows a failed night. ``schedule_commands``
prints how to run it every night; it changes nothing on the machine.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import transport
from .crypto import Secret
from .errors import SyncdbError
from .http_channel import HttpChannel
from .i18n import _
from .schema import Domain
from .state import read_config, state_dir

LOG_NAME = "sync.log"


@dataclass
class SyncResult:
    ok: bool = True
    problems: list[str] = field(default_factory=list)  # one line each, what failed and what to do
    log: Path | None = None


def default_log(workdir) -> Path:
    return state_dir(workdir) / LOG_NAME


def sync(workdir, url: str, domains: dict[str, Domain], secret: Secret, *, log_path=None,
         echo: Callable[[str], None] = print, retries: int = 5) -> SyncResult:
    """Push what changed, then pull the office's resolutions; each line to ``echo`` and the log.

    The pull runs even when the push failed (a refused bundle does not stop
    resolutions coming back; a dead line fails both, and says so twice).
    """
    url = transport.office_url(url)
    read_config(workdir)  # not a community folder: say so before opening a log in it
    result = SyncResult(log=Path(log_path) if log_path else default_log(workdir))
    try:
        log = open(result.log, "a", encoding="utf-8")
    except OSError as e:
        raise SyncdbError(_("cannot write the log file {log}: {problem}; give another with --log").format(
            log=result.log, problem=e.strerror)) from None
    with log:
        def say(line: str) -> None:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
            log.flush()
            echo(line)

        say(_("sync of {folder} with the office at {url}").format(folder=workdir, url=url))
        channel = HttpChannel(url, retries=retries)
        try:
            _push(workdir, channel, domains, secret, say, result)
        except SyncdbError as e:
            say(_("push failed: {error}").format(error=e))
            result.problems.append(_("push: {problem}").format(problem=e))
        try:
            for line in transport.pull(workdir, channel, domains, secret).lines():
                say(line)
        except SyncdbError as e:
            say(_("pull failed: {error}").format(error=e))
            result.problems.append(_("pull: {problem}").format(problem=e))
        result.ok = not result.problems
        say(_("sync finished: every step went well") if result.ok
            else _("sync finished with {problems} problem(s); see above").format(problems=len(result.problems)))
    return result


def _push(workdir, channel: HttpChannel, domains: dict[str, Domain], secret: Secret,
          say: Callable[[str], None], result: SyncResult) -> None:
    """``syncdb push --to URL``: what went, and each deletion held for a person, as a problem."""
    def exported(made) -> None:
        for sequence, __, changes in made.bundles:
            say(_("Bundle {sequence}: {changes} change(s)").format(sequence=sequence, changes=changes))
        if not made.bundles:
            say(_("No new changes since the last push."))
    pushed = transport.push(workdir, channel, domains, secret, notify=lambda m: say(_("Note: {note}").format(note=m)),
                            exported=exported, echo=say)
    say(pushed.delivery.summary())
    if not pushed.delivery.ok:
        result.problems.append(_("push: {problem}").format(problem=pushed.delivery.error))
    # The rest went; these wait for a person, as `syncdb push` says (and exits 1).
    again = shlex.join(["syncdb", "push", str(workdir), "--to", channel.where, "--confirm-deletes"])
    for held in pushed.exported.deletes_held:
        say(_("Held: {message}").format(message=held.message(again)))
        result.problems.append(_("push: held: {message}").format(message=held.message(again)))


def parse_time(at: str) -> tuple[int, int]:
    """(hour, minute) of ``HH:MM``; raises SyncdbError for anything else."""
    match = re.fullmatch(r"([0-9]{1,2}):([0-9]{2})", at.strip())
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise SyncdbError(_("{at!r} is not a time of day; give it as HH:MM, e.g. 02:00").format(at=at))
    return int(match[1]), int(match[2])


def syncdb_program() -> str:
    """The path of the `syncdb` command that is running now, for a task to call."""
    here = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if here is not None and here.stem == "syncdb" and here.exists():
        return str(here.resolve())
    return shutil.which("syncdb") or str(Path(sys.executable).with_name("syncdb"))


def schedule_commands(workdir, url: str, at: str = "02:00", program: str | None = None,
                      key_file: str | None = None) -> dict[str, str]:
    """{"windows": the schtasks command, "cron": the crontab line} for a nightly ``syncdb sync``.

    ``at`` is HH:MM, local time. ``key_file`` (default: SYNCDB_KEY_FILE now)
    goes into the cron line; a task at night cannot be asked for a
    passphrase. Raises SyncdbError for a time that is not HH:MM.
    """
    url = transport.office_url(url)
    code = read_config(workdir)["code"]
    hour, minute = parse_time(at)
    program = program or syncdb_program()
    folder = str(Path(workdir).resolve())
    key_file = key_file if key_file is not None else os.environ.get("SYNCDB_KEY_FILE")
    task = f'"{program}" sync "{folder}" --office {url}'
    windows = (f'schtasks /Create /F /TN "syncdb {code}" /SC DAILY /ST {hour:02d}:{minute:02d} '
               f'/TR "{task.replace(chr(34), chr(92) + chr(34))}"')
    env = f"SYNCDB_KEY_FILE={shlex.quote(str(Path(key_file).resolve()))} " if key_file else ""
    # cron mails what a job prints: only the problems (stderr); the log file has the rest.
    cron = (f"{minute} {hour} * * * {env}{shlex.quote(program)} sync {shlex.quote(folder)} "
            f"--office {shlex.quote(url)} >/dev/null").replace("%", "\\%")
    return {"windows": windows, "cron": cron}
