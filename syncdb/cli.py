"""The ``syncdb`` command: thin click commands over the library.

Parse options, call the library, print. Library errors (SyncdbError) are
printed once here and exit with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import sqlite3
import sys
import unicodedata
from contextlib import contextmanager

import click

from . import __version__, i18n
from .errors import SyncdbError
from .i18n import N_, _
from .files import storage_error
from .schema import load_domains as _load_domains

# Every word this command prints, click's own `Usage:` and `Error:` among them, is in the
# user's language from here on (i18n.py): decided once, before the help texts below are made.
i18n.use()
# click looks up the "required" of an option's help through gettext too, but from a variable
# that no extractor sees: named here so that the catalogue holds it.
N_("required")

schemas_option = click.option(
    "--schemas",
    type=click.Path(file_okay=False, exists=True),
    envvar="SYNCDB_SCHEMAS",
    help=_("Folder of domain schema files (default: the shipped schemas/)."),
)


def load_domains(schemas):
    """The schemas (schema.load_domains checks their policies against those plugins add itself)."""
    return _load_domains(schemas)


# --- help text laid out for Chinese ------------------------------------------------------------
# click measures and wraps help by characters and breaks lines only at spaces; a Chinese
# character takes two columns of a terminal and Chinese has no spaces between words, so a
# translated help would run past the screen's edge. These measure columns and break between
# characters (never before a closing mark such as ，。）nor after an opening one such as （“).

_NO_LINE_START = set("，。、；：！？）」』》”’")
_NO_LINE_END = set("（「『《“‘")


def _columns(text: str) -> int:
    """How many terminal columns `text` takes: two for a wide (CJK) character."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _is_wide(text: str) -> bool:
    return _columns(text) != len(text)


def _pieces(paragraph: str):
    """A paragraph cut where a line may break: runs of narrow characters, each wide one, spaces."""
    return re.findall(r"\s+|[\u1100-\u115f\u2e80-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6]"
                      r"|[^\s\u1100-\u115f\u2e80-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6]+",
                      paragraph)


def _wrap(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` columns (a piece longer than that keeps its own line)."""
    lines = []
    for paragraph in text.split("\n\n"):
        if lines:
            lines.append("")
        line = []  # its pieces, spaces included
        for piece in _pieces(" ".join(paragraph.splitlines())):
            if piece.isspace():
                line += [piece] if line else []
                continue
            if line and _columns("".join(line) + piece) > width:
                cut = _cut(line, piece)
                if cut:
                    lines.append("".join(line[:cut]).rstrip())
                    line = [p for p in line[cut:] if not p.isspace()]
            line.append(piece)
        lines.append("".join(line).rstrip())
    return lines


def _cut(line: list[str], piece: str) -> int:
    """Where `line` breaks before `piece`: a closing mark takes the character before it along to the
    next line, and an opening mark goes along with what it opens. 0: nowhere (the line runs over)."""
    cut = len(line) - 1 if piece[0] in _NO_LINE_START else len(line)
    while cut > 0 and (line[cut - 1].isspace() or line[cut - 1][-1] in _NO_LINE_END):
        cut -= 1
    return cut


class HelpFormatter(click.HelpFormatter):
    """click's help formatter, laying out text that holds Chinese by terminal columns."""

    def write_text(self, text: str) -> None:
        if not _is_wide(text):
            return super().write_text(text)
        indent = " " * self.current_indent
        for line in _wrap(text, max(self.width - self.current_indent, 20)):
            self.write(f"{indent}{line}\n" if line else "\n")

    def write_dl(self, rows, col_max: int = 30, col_spacing: int = 2) -> None:
        rows = list(rows)
        if not any(_is_wide(first + second) for first, second in rows):
            return super().write_dl(rows, col_max, col_spacing)
        first_width = min(max(_columns(first) for first, _second in rows), col_max) + col_spacing
        indent = " " * self.current_indent
        for first, second in rows:
            self.write(f"{indent}{first}")
            if not second:
                self.write("\n")
                continue
            if _columns(first) <= first_width - col_spacing:
                self.write(" " * (first_width - _columns(first)))
            else:  # a long option name: its text starts on the next line
                self.write("\n" + indent + " " * first_width)
            lines = _wrap(second, max(self.width - first_width - self.current_indent, 10))
            self.write(lines[0] + "\n")
            for line in lines[1:]:
                self.write(f"{indent}{' ' * first_width}{line}\n" if line else "\n")


class Context(click.Context):
    formatter_class = HelpFormatter


class _LaidOutForChinese:
    """What syncdb's commands and groups share: the formatter above, and a short help (the
    commands' list) that ends at the first full stop, which click finds only followed by a space."""

    context_class = Context

    def get_short_help_str(self, limit: int = 45) -> str:
        if self.short_help or not self.help or i18n.language() == i18n.ENGLISH:
            return super().get_short_help_str(limit)
        return self.help.split("\n\n")[0].split("。")[0].strip()


class Command(_LaidOutForChinese, click.Command):
    """A syncdb command."""


class Group(_LaidOutForChinese, click.Group):
    """A click group that turns SyncdbError into a one-line message and exit 1."""

    command_class = Command
    group_class = type  # its subgroups are Groups too

    def invoke(self, ctx):
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows here, not as a message at exit
            return result
        except BrokenPipeError:
            _reader_gone()
        except SyncdbError as e:
            raise click.ClickException(str(e)) from e
        except (OSError, sqlite3.OperationalError) as e:
            # What no command turned into a message of its own: a disk full, failing
            # or read-only under a file it uses. Still one line, and what to do.
            where = getattr(e, "filename", None) or _("a folder this command uses")
            raise click.ClickException(str(storage_error(e, where))) from e


def _reader_gone():
    """The reader of our output went away (`syncdb … | head`): stop without a word, with the status
    141 of a command stopped by SIGPIPE, since what the command was doing may be unfinished."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
    except (OSError, ValueError, io.UnsupportedOperation):
        pass
    raise click.exceptions.Exit(141)


@click.group(cls=Group, help=_(
    "Sync community population databases into one street-office store.\n\n"
    "Community PCs capture their changes and push them as signed, encrypted bundles; the street "
    "office merges them under declared conflict rules and publishes the result read-only in "
    "Datasette."
))
@click.version_option(__version__, prog_name="syncdb")
def cli():
    pass


@cli.group(cls=Group, help=_("Inspect and check the domain schema files."))
def schemas():
    pass


@schemas.command(name="check", help=_(
    "Load every schema file and report the first mistake in each.\n\n"
    "Exit status 1 names the file, table and column at fault.\n\n"
    "Example: syncdb schemas check --schemas ./schemas"
))
@schemas_option
def schemas_check(schemas):
    domains = load_domains(schemas)
    for domain in domains.values():
        tables = ", ".join(domain.tables)
        click.echo(_("{file}: {domain} ({label}) v{version}: {tables}").format(
            file=domain.path.name, domain=domain.name, label=domain.label, version=domain.version, tables=tables))


@cli.command(help=_(
    "Check working databases against the schemas and national standards.\n\n"
    "PATHS are working database files or community folders holding them. Prints each bad record as "
    "community / table / key / field / why and exits with status 1 if there is any; warnings alone "
    "exit 0.\n\n"
    "Example: syncdb validate communities/441900003001"
))
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help=_("text for people, json (one object per line) for machines."))
@click.option("--warnings/--no-warnings", default=True, show_default=True,
              help=_("Also print warnings (such as an ID number's retired region code)."))
@schemas_option
def validate(paths, fmt, warnings, schemas):
    from .validate import validate_paths

    domains = load_domains(schemas)
    errors = warned = 0
    for finding in validate_paths(paths, domains):
        if finding.severity == "warning":
            warned += 1
            if not warnings:
                continue
        else:
            errors += 1
        if fmt == "json":
            click.echo(json.dumps(finding.as_dict(), ensure_ascii=False))
        else:
            click.echo(str(finding))
    if fmt == "text":
        click.echo(_("{errors} bad record(s), {warned} warning(s)").format(errors=errors, warned=warned), err=True)
    sys.exit(1 if errors else 0)


@cli.command(help=_(
    "Write a sample community's working databases, one per domain.\n\n"
    "Realistic, valid and deterministic, like a Dongguan community: standard addresses, grids, "
    "houses and rentals, units; households with heads and members, ID numbers that agree with "
    "birth dates and sexes; more migrants than residents, with residence permits; enrolments and "
    "benefits. A few records are deliberately contradictory across domains (a deceased person "
    "still paid, an expired residence permit, an over-full rental).\n\n"
    "Example: syncdb sample communities/441900003001 --code 441900003001 --residents 5000 --seed 1 "
    "--report"
))
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--code", required=True, help=_("The community's 12-digit code (统计用区划代码), e.g. 441900003001."))
@click.option("--residents", type=click.IntRange(min=1), default=2000, show_default=True,
              help=_("How many residents to generate."))
@click.option("--seed", type=int, default=0, show_default=True, help=_("Same seed, same bytes."))
@click.option("--report", is_flag=True,
              help=_("Then list the deliberate cases planted for the checks across domains, per class."))
@schemas_option
def sample(directory, code, residents, seed, report, schemas):
    from .sample import generate
    from .sample_planted import CLASSES, chance
    from .sample_planted import report as planted

    domains = load_domains(schemas)
    counts = generate(directory, code, residents, seed, domains)
    for table, count in counts.items():
        click.echo(_("{table}: {count} rows").format(table=table, count=count))
    if report:
        for name, cases in planted(directory).items():
            click.echo(f"{_(CLASSES[name])} ({name}): {len(cases)}")
            for case in cases:
                click.echo(f"  {case}")
        # What the random names and dates made alike by chance: the checks find these too.
        for name, cases in chance(directory).items():
            click.echo(_("{title} ({name}), by chance, not planted: {count}").format(
                title=_(CLASSES[name]), name=name, count=len(cases)))
            for case in cases:
                click.echo(f"  {case}")


@cli.command(help=_(
    "Build a sample street office with its communities, run two nightly cycles, publish the "
    "result.\n\n"
    "Example: syncdb demo demo-office --communities 3 --residents 2000"
))
@click.argument("directory", type=click.Path(file_okay=False), default="demo-office")
@click.option("--communities", type=click.IntRange(min=1, max=50), default=3, show_default=True,
              help=_("How many sample communities to build."))
@click.option("--residents", type=click.IntRange(min=1), default=2000, show_default=True,
              help=_("Residents per community."))
@click.option("--publish/--no-publish", "publishing", default=True, show_default=True,
              help=_("Then serve the result in Datasette until Ctrl-C."))
@click.option("--port", type=int, default=8001, show_default=True, help=_("Port for the published site."))
@schemas_option
def demo(directory, communities, residents, publishing, port, schemas):
    from .demo import run_demo

    domains = load_domains(schemas)
    made = run_demo(directory, communities=communities, residents=residents, domains=domains, echo=click.echo)
    if publishing:
        import logging

        from .publish import serve as serve_lib

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        serve_lib(made["store"], made["secret"], domains, host="127.0.0.1", port=port,
                  ready=lambda url: click.echo(_("== Published read-only at {url} — sign in with an account "
                                                 "above; Ctrl-C to stop").format(url=url)))


def _typed(ctx, param, value):
    """A text typed on the command line (a name, a reason, a value), refused as a usage error when the
    terminal's encoding is not the office's (prepare.mistyped), before anything is written. Paths are
    not checked: a folder may be named in any encoding."""
    from .prepare import mistyped

    why = mistyped(value)
    if why:
        raise click.BadParameter(why)
    return value


def _secret(confirm=False):
    from .crypto import Secret

    return Secret.from_environment(confirm=confirm)


@cli.group(cls=Group, help=_("Set up the street office store and enrol communities."))
def office():
    pass


@office.command(name="init", help=_(
    "Create the office store and its keys; print the office public key file.\n\n"
    "The keys are sealed under SYNCDB_PASSPHRASE (or a prompt) or SYNCDB_KEY_FILE.\n\n"
    "Example: SYNCDB_PASSPHRASE=… syncdb office init /srv/office --suite std"
))
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--suite", type=click.Choice(["std", "gm"]), default="std", show_default=True,
              help=_("std: AES-256-GCM and SHA-256; gm: SM4-GCM and SM3 (商用密码)."))
@click.option("--code", default="office", show_default=True,
              help=_("The street office's own code, e.g. its 9-digit 街道 code."))
@schemas_option
def office_init(store, suite, code, schemas):
    from . import migrations

    pub = migrations.init(store, _secret(confirm=True), suite, code, load_domains(schemas))
    click.echo(_("Office store created in {store}").format(store=store))
    click.echo(_("Give every community this public key file: {file}").format(file=pub))


@office.command(name="enroll", help=_(
    "Accept bundles signed by this community's key.\n\n"
    "Enrolling a community again replaces its key and keeps its name unless --name gives a new "
    "one.\n\n"
    "Example: syncdb office enroll /srv/office 441900003001 441900003001.pub.json --name 岗贝社区"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("code")
@click.argument("pubkey_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--name", callback=_typed,
              help=_("The community's name as people write it, e.g. 岗贝社区 (shown beside its code)."))
def office_enroll(store, code, pubkey_file, name):
    from . import office as office_lib

    key = office_lib.enroll(store, code, pubkey_file, name=name)
    click.echo(_("Community {community} enrolled (key {key})").format(
        community=office_lib.label(code, office_lib.read_names(store)), key=key.id))


@office.command(name="rename", help=_(
    "Give an enrolled community a new name (its code stays what bundles are signed with).\n\n"
    "Example: syncdb office rename /srv/office 441900003001 岗贝社区"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("code")
@click.argument("name")
def office_rename(store, code, name):
    from . import office as office_lib

    before = office_lib.rename(store, code, name)
    click.echo(_("Community {code}: {before} -> {after}").format(
        code=code, before=before or _("(no name)"), after=name.strip()))


@cli.group(cls=Group, help=_("Set up a community folder for sync."))
def community():
    pass


@community.command(name="init", help=_(
    "Create the community's keys and set up change capture on its working databases.\n\n"
    "Writes CODE.pub.json into WORKDIR: carry it to the office for `office enroll`.\n\n"
    "Example: syncdb community init C:\\社区数据 --code 441900003001 --office-key office.pub.json"
))
@click.argument("workdir", type=click.Path(file_okay=False))
@click.option("--code", required=True, help=_("The community's 12-digit code, e.g. 441900003001."))
@click.option("--office-key", required=True, type=click.Path(dir_okay=False, exists=True),
              help=_("The office.pub.json written by `syncdb office init`."))
@click.option("--create-tables", is_flag=True,
              help=_("Create the schema's tables missing from the working databases, empty (and the "
                   "databases, if the folder holds none). Without it such a folder is refused."))
@schemas_option
def community_init(workdir, code, office_key, create_tables, schemas):
    from . import community as community_lib

    pub = community_lib.init(workdir, code, office_key, load_domains(schemas), _secret(confirm=True),
                             create_tables=create_tables)
    click.echo(_("Capture is set up in {workdir}").format(workdir=workdir))
    click.echo(_("Take this public key file to the street office: {file}").format(file=pub))


@community.command(name="set-office-key", help=_(
    "Encrypt to the right office key, when the office refused this community's bundles as meant "
    "for another office (\"wrong-recipient\"). The bundles it refused are set aside "
    "(.syncdb/unsent/) and the next push sends every record again, whole.\n\n"
    "Example: syncdb community set-office-key C:\\社区数据 office.pub.json"
))
@click.argument("workdir", type=click.Path(file_okay=False, exists=True))
@click.argument("office_key", type=click.Path(dir_okay=False, exists=True))
def community_set_office_key(workdir, office_key):
    from .rehome import set_office_key

    done = set_office_key(workdir, office_key)
    if done["unsent"]:
        click.echo(_("Set aside {n} bundle(s) the office could not open, in {folder}").format(
            n=len(done["unsent"]), folder=os.path.join(workdir, ".syncdb", "unsent")))
    click.echo(_("Now encrypting to office key {file}; the next `syncdb push {workdir}` sends every record again")
               .format(file=office_key, workdir=workdir))


@community.command(name="upgrade", help=_(
    "Bring the working databases to the schemas: add the tables and columns a newer release's "
    "schemas declare, and set up change capture afresh. Nothing is dropped; the only values "
    "changed are old codes the schemas map to new ones ([codes.NAME.was]) and 民政's per-person "
    "低保/特困, moved into household records (minzheng.assistance); the next push sends them.\n\n"
    "Example: syncdb community upgrade C:\\社区数据"
))
@click.argument("workdir", type=click.Path(file_okay=False, exists=True))
@click.option("--create-databases", is_flag=True,
              help=_("Also make the working databases of domains the folder does not hold yet, with empty tables."))
@schemas_option
def community_upgrade(workdir, create_databases, schemas):
    from .workdir_upgrade import upgrade

    done = upgrade(workdir, load_domains(schemas), create_databases=create_databases)
    for name in done.made_databases:
        click.echo(_("made {database}").format(database=name))
    for table in done.made_tables:
        click.echo(_("made table {table}").format(table=table))
    for table, columns in done.added.items():
        click.echo(_("{table}: added {columns}").format(table=table, columns=", ".join(columns)))
    for line in done.recoded:
        click.echo(line)
    for line in done.left_alone + done.empty_required + done.assistance:
        click.echo(_("note: {line}").format(line=line))
    if done.unsynced:
        click.echo(_("kept as they are, no longer synced: {tables}").format(tables=", ".join(done.unsynced)))
    if not done.changed:
        click.echo(_("The working databases already match the schemas; nothing to add."))
    if done.captured:
        click.echo(_("Change capture set up afresh in {databases}").format(databases=", ".join(done.captured)))


class _Bar:
    """A progress bar on stderr drawn at its first step: an error found before any work is printed alone."""

    def __init__(self, label: str):
        self.label, self.bar = label, None

    def __enter__(self):
        return self

    def step(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=max(total, 1), label=self.label, show_pos=True, file=sys.stderr)
            self.bar.__enter__()
        self.bar.length = max(total, 1)
        self.bar.update(done - self.bar.pos)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __exit__(self, *exc):
        self.close()


class _ExportProgress:
    """The push's progress on stderr: rows compared, then a bar over the changes put in bundles."""

    STAGES = {"reading": N_("Comparing rows"), "writing": N_("Writing bundles")}

    def __init__(self):
        self.bar = None
        self.stage = None
        self.shown = False  # a counter line is on screen, waiting for its newline

    def __enter__(self):
        return self

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage != self.stage:
            self._end_line()
            self.stage = stage
        if total is None:
            if sys.stderr.isatty():  # a counter redrawn in place; nothing in a log file
                click.echo("\r" + _("{stage}: {done} rows").format(stage=self._label(stage), done=f"{done:,}"),
                           nl=False, err=True)
                self.shown = True
            return
        if self.bar is None:
            self.bar = _Bar(self._label(stage))
        self.bar.step(done, total)

    def _label(self, stage: str) -> str:
        return _(self.STAGES[stage]) if stage in self.STAGES else stage

    def note(self, message: str) -> None:
        self._end_line()
        click.echo(message, err=True)

    def close(self) -> None:
        self._end_line()

    def _end_line(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.shown:
            click.echo(err=True)
            self.shown = False

    def __exit__(self, *exc):
        self._end_line()


@cli.command(help=_(
    "Send what changed since the last acknowledged bundle.\n\n"
    "Makes a new bundle from the changes captured since the last push, then sends every bundle the "
    "office has not acknowledged, to a URL or a folder. Bundles stay in the community's outbox "
    "until the office acknowledges them.\n\n"
    "Example: syncdb push C:\\社区数据 --to http://192.0.2.10:8765"
))
@click.argument("workdir", type=click.Path(file_okay=False, exists=True))
@click.option("--to", "url", help=_("The office ingest URL, e.g. http://office.example:8765"))
@click.option("--outbox", type=click.Path(file_okay=False),
              help=_("A folder (a USB stick) to copy the bundles into instead."))
@click.option("--retries", type=click.IntRange(min=0), default=5, show_default=True,
              help=_("Retries per bundle on connection errors and 5xx answers."))
@click.option("--confirm-deletes", is_flag=True,
              help=_("Send the deletions a push held back: a table that is gone, or more than "
                   "--hold-deletes-over of a table's records at once."))
@click.option("--hold-deletes-over", type=click.IntRange(min=0, max=100), default=20, show_default=True,
              metavar="PERCENT", help=_("Hold back a table's deletions when one push would delete more than "
                                      "this share of its records (and more than 10)."))
@schemas_option
def push(workdir, url, outbox, retries, confirm_deletes, hold_deletes_over, schemas):
    from . import transport

    if bool(url) == bool(outbox):
        raise click.UsageError(_("give exactly one of --to URL or --outbox DIR"))
    channel = transport.channel_for(_office_url(url, "--to"), outbox, retries=retries)
    with _ExportProgress() as progress:
        def exported(result):
            progress.close()  # the sending's lines follow
            _show_export(result)
        pushed = transport.push(workdir, channel, load_domains(schemas), _secret(), progress=progress,
                                notify=lambda m: progress.note(_("Note: {message}").format(message=m)), exported=exported, echo=click.echo,
                                confirm_deletes=confirm_deletes, delete_share=hold_deletes_over / 100)
    click.echo(pushed.delivery.summary(), err=not pushed.delivery.ok)
    if not pushed.delivery.ok:
        sys.exit(1)
    if pushed.exported.deletes_held:  # the rest went; these wait for a person
        where = ["--to", channel.where] if url else ["--outbox", outbox]
        again = ["syncdb", "push", workdir, *where, "--confirm-deletes"]
        for held in pushed.exported.deletes_held:
            command = " ".join(shlex.quote(str(a)) for a in again)
            click.echo(_("Held: {reason}").format(reason=held.message(command)), err=True)
        sys.exit(1)


def _show_export(result):
    """The bundles a push made, in a line (one more per bundle when it was split to fit the office's limits)."""
    if len(result.bundles) > 1:
        for sequence, _path, changes in result.bundles:
            click.echo(_("Bundle {sequence}: {changes} change(s)").format(sequence=sequence, changes=changes))
    if result.sequence:
        first, last = result.bundles[0][0], result.bundles[-1][0]
        if first == last:
            made = _("Bundle {sequence}: {changes} change(s) {counts}").format(
                sequence=first, changes=result.changes, counts=_counts(result.counts))
        else:
            made = _("Bundles {first}-{last}: {changes} change(s) {counts}").format(
                first=first, last=last, changes=result.changes, counts=_counts(result.counts))
        click.echo(made)
    else:
        click.echo(_("No new changes since the last push."))


@cli.command(help=_(
    "Apply the office's resolutions to the records this community owns.\n\n"
    "A value changed here since the last push is kept, not overwritten: it goes to the office at "
    "the next push.\n\n"
    "Example: syncdb pull D:\\shequ --from http://192.0.2.10:8765"
))
@click.argument("workdir", type=click.Path(file_okay=False, exists=True))
@click.option("--from", "url", help=_("The office's address, e.g. http://192.0.2.10:8765 (what push --to uses)."))
@click.option("--inbox", type=click.Path(file_okay=False, exists=True),
              help=_("A folder (a USB stick) holding a copy of the office's outbound/CODE folder."))
@schemas_option
def pull(workdir, url, inbox, schemas):
    from . import transport

    if bool(url) == bool(inbox):
        raise click.UsageError(_("give exactly one of --from URL or --inbox DIR"))
    channel = transport.channel_for(_office_url(url, "--from"), inbox)
    report = transport.pull(workdir, channel, load_domains(schemas), _secret())
    for line in report.lines():
        click.echo(line)


def _office_url(url, option):
    """The office's address checked, or a usage error naming the option; None stays None."""
    from .transport import office_url

    try:
        return office_url(url) if url else None
    except SyncdbError as e:
        raise click.BadParameter(str(e), param_hint=option) from None


@cli.command(help=_(
    "The nightly run for a scheduled task: push, then pull, one log, one exit status.\n\n"
    "Every line goes to the log file too. Exit status 1 when the push or the pull failed (each "
    "problem is repeated on stderr), 0 when both went well. `syncdb schedule` prints how to run it "
    "every night.\n\n"
    "Example: SYNCDB_KEY_FILE=/etc/syncdb/key syncdb sync /srv/shequ --office "
    "http://192.0.2.10:8765"
))
@click.argument("workdir", type=click.Path(file_okay=False, exists=True))
@click.option("--office", "url", required=True, help=_("The office's address, e.g. http://192.0.2.10:8765."))
@click.option("--log", "log_path", type=click.Path(dir_okay=False),
              help=_("Append the run's lines to this file (default: WORKDIR/.syncdb/sync.log)."))
@click.option("--retries", type=click.IntRange(min=0), default=5, show_default=True,
              help=_("Retries per bundle on connection errors and 5xx answers."))
@schemas_option
def sync(workdir, url, log_path, retries, schemas):
    from .nightly import sync as sync_lib

    result = sync_lib(workdir, _office_url(url, "--office"), load_domains(schemas), _secret(), log_path=log_path,
                      retries=retries, echo=click.echo)
    for problem in result.problems:
        click.echo(problem, err=True)
    if not result.ok:
        sys.exit(1)


@cli.command(help=_(
    "Print the commands that run `syncdb sync` every night: schtasks for Windows, a cron line.\n\n"
    "Changes nothing: run the one for this machine yourself. The task needs SYNCDB_KEY_FILE (a key "
    "file that seals the community's keyring), since no one is there at night to type a "
    "passphrase.\n\n"
    "Example: syncdb schedule C:\\社区数据 --office http://192.0.2.10:8765 --at 01:30"
))
@click.argument("workdir", type=click.Path(file_okay=False, exists=True))
@click.option("--office", "url", required=True, help=_("The office's address, e.g. http://192.0.2.10:8765."))
@click.option("--at", default="02:00", show_default=True, callback=lambda ctx, param, value: _time_of_day(value),
              help=_("When to run, HH:MM local time."))
def schedule(workdir, url, at):
    from .nightly import schedule_commands

    made = schedule_commands(workdir, _office_url(url, "--office"), at=at)
    key_file = os.environ.get("SYNCDB_KEY_FILE")
    click.echo(_("Windows (Task Scheduler), in a command prompt:"))
    shown_key = key_file or "C:\\path\\to\\community.key"
    click.echo(f'  setx SYNCDB_KEY_FILE "{shown_key}"')
    click.echo(f"  {made['windows']}")
    click.echo(_("Linux (cron), a line for `crontab -e`:"))
    click.echo(f"  {made['cron']}")
    if not key_file:
        click.echo(_("SYNCDB_KEY_FILE is not set here: put the key file's path in the lines above "
                     "(a passphrase cannot be typed at night)."), err=True)


def _time_of_day(value):
    from .nightly import parse_time

    try:
        parse_time(value)
    except SyncdbError as e:
        raise click.BadParameter(str(e)) from None
    return value


# What a bundle did to a table, by operation (the ops are bundle.OPS and rekey).
_OPERATIONS = {"insert": N_("{n} insert"), "update": N_("{n} update"), "delete": N_("{n} delete"),
               "rekey": N_("{n} rekey")}


def _counts(counts):
    parts = []
    for table, ops in counts.items():
        done = ", ".join(_(_OPERATIONS[op]).format(n=n) if op in _OPERATIONS else f"{n} {op}"
                         for op, n in ops.items() if n)
        parts.append(f"{table}: {done}")
    return "(" + "; ".join(parts) + ")" if parts else ""


@cli.command(help=_(
    "Run the office ingest service that `syncdb push --to` sends to.\n\n"
    "Accepted bundles are kept in the inbox, acknowledged, then merged.\n\n"
    "Example: SYNCDB_KEY_FILE=/root/office.key syncdb serve /srv/office --host 0.0.0.0 --port 8765"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True, help=_("Address to listen on."))
@click.option("--port", type=int, default=8765, show_default=True, help=_("Port to listen on."))
@click.option("--max-bundle-mb", type=click.IntRange(min=1), default=256, show_default=True,
              help=_("Refuse uploads larger than this."))
@click.option("--merge/--no-merge", "merging", default=True, show_default=True,
              help=_("Merge accepted bundles into the store (needs the office passphrase or key file); "
                   "with --no-merge they wait in the inbox for `syncdb merge`."))
@schemas_option
def serve(store, host, port, max_bundle_mb, merging, schemas):
    from . import server
    from .publish import bind

    bind(host, port).close()  # a port in use is one line and exit 1, not uvicorn's errors and exit 3
    try:
        secret = _secret() if merging else None
    except SyncdbError as e:
        raise SyncdbError(_("{error}; or run `syncdb serve --no-merge` to only receive bundles").format(error=e)) \
            from None
    try:
        server.serve(store, host=host, port=port, max_body=max_bundle_mb * 1024 * 1024,
                     secret=secret, domains=load_domains(schemas) if merging else None)
    except SystemExit as e:
        if e.code in (0, None, 1, 2):
            raise
        # uvicorn's "startup failed" (3): the port was taken in the moment since the check above.
        raise SyncdbError(_("the ingest service could not start on {host}:{port} (see the lines above); check "
                            "that no other program uses the port, or choose another with --port")
                          .format(host=host, port=port)) from None


@cli.command(help=_(
    "Merge bundle files or folders into the office store.\n\n"
    "Bundles are verified and received into the inbox first (exactly as if pushed), then every "
    "bundle whose predecessors are applied is merged, one transaction each. With no PATHS, merges "
    "what the inbox already holds.\n\n"
    "Exit status 1 when a bundle was refused, a record rejected, or a bundle held for any reason "
    "but waiting for an earlier one (a failed merge, a schema the office lacks): a scheduled run "
    "sees the night that failed.\n\n"
    "Example: syncdb merge /srv/office /media/usb/outbox"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--jobs", type=click.IntRange(min=1), default=None, help=_(
    "Processes that read, check and encrypt the changes beside the one that writes the store "
    "(the result is the same); default: the cores other work leaves free. 1 merges in one process."))
@schemas_option
def merge(store, paths, jobs, schemas):
    from . import merge as merge_lib
    from .prepare import default_jobs

    secret, domains = _secret(), load_domains(schemas)  # a passphrase prompt gets its line before the bar
    with _Bar(_("Merging changes")) as bar:
        def progress(done, total, name):
            bar.step(done, total)

        summary = merge_lib.merge(store, paths, secret, domains, progress=progress, jobs=jobs or default_jobs())
    from .office import named, read_names

    names = read_names(store)
    for line in summary.lines():
        click.echo(named(line, names))
    # A bundle held for a cause (not merely waiting for an earlier one) needs a person too.
    if summary.refused or summary.rejected or summary.blocked:
        sys.exit(1)


@cli.group(cls=Group, help=_("List, show, review and settle the conflicts the rules left for a person."))
def conflicts():
    pass


@conflicts.command(name="list", help=_(
    "List open conflicts: table, record, column, kind and candidates.\n\n"
    "Example: syncdb conflicts list /srv/office"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option("--all", "show_all", is_flag=True, help=_("Closed conflicts too."))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@schemas_option
def conflicts_list(store, show_all, fmt, schemas):
    from .conflicts import list_conflicts
    from .office import label, read_names

    names = read_names(store)
    for item in list_conflicts(store, _secret(), load_domains(schemas), include_closed=show_all):
        if fmt == "json":
            for c in item["candidates"]:
                c["origin_name"] = names.get(c["origin"])
            click.echo(json.dumps(item, ensure_ascii=False))
        else:
            candidates = "; ".join(f"{label(c['origin'], names)}: {c['value']!r}"
                                   + (_(" (deleted)") if c["deleted"] else "") for c in item["candidates"])
            click.echo(_("#{id} [{status}] {table} {record} {column} ({kind}): {candidates}; provisional {winner}")
                       .format(id=item["id"], status=item["status"], table=item["table"], record=item["record"],
                               column=item["column"], kind=item["kind"], candidates=candidates,
                               winner=item["winner"]))


def _when(version: str) -> str:
    """An HLC stamp's wall-clock part, as the office's local time."""
    import time

    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(version.split(".")[0]) / 1000))
    except (ValueError, IndexError, OverflowError, OSError):
        return version


def _show(item, names: dict) -> None:
    from .office import label

    click.echo(f"#{item['id']} [{item['status']}] {item['table']} {item['record']} · {item['column']} "
               f"{item['label']} ({item['kind']})")
    click.echo(_("opened {opened}; provisional winner by {rule}: {winner}").format(
        opened=item["opened"], rule=item["rule"], winner=item["winner"]))
    if item["status"] != "open":
        click.echo(f"{item['status']} {item['closed']}: {item['note']}")
    click.echo(_("candidates:"))
    for n, c in enumerate(item["candidates"], start=1):
        shown = _("(deleted)") if c["deleted"] else repr(c["value"]) if c["shown"] == c["value"] else c["shown"]
        click.echo(f"  {n}) {label(c['origin'], names):<14} {_when(c['version'])}  {shown}   [{c['version']}]")
    if item["record_cells"]:
        click.echo(_("the record in the store now:"))
        for cell in item["record_cells"]:
            click.echo(f"  {cell['label']} ({cell['column']}): {cell['shown'] if cell['value'] is not None else ''}")
    for other in item["others_open"]:
        click.echo(_("also open on this record: #{id} ({column})").format(id=other["id"], column=other["column"]))


@conflicts.command(name="show", help=_(
    "Show one conflict in full: each candidate with its origin and time, and the record as stored.\n\n"
    "Example: syncdb conflicts show /srv/office 12"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("conflict_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@schemas_option
def conflicts_show(store, conflict_id, fmt, schemas):
    from .conflicts import show_conflict
    from .office import read_names

    item = show_conflict(store, _secret(), load_domains(schemas), conflict_id)
    if fmt == "json":
        click.echo(json.dumps(item, ensure_ascii=False, indent=2))
        return
    _show(item, read_names(store))
    if item["status"] == "open":
        click.echo(_("settle it with one of:"))
        for c in item["candidates"]:
            click.echo(f"  syncdb conflicts resolve {store} {conflict_id} --keep {c['origin']}")
        click.echo(f"  syncdb conflicts resolve {store} {conflict_id} --value TEXT")


@conflicts.command(name="review", help=_(
    "Walk through the open conflicts one by one and settle each, or skip it.\n\n"
    "For each: type a candidate's number to keep it, v to type a value, s to skip, q to stop. Each "
    "answer is an office resolution, as with `resolve`.\n\n"
    "Example: syncdb conflicts review /srv/office"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@schemas_option
def conflicts_review(store, schemas):
    from . import conflicts as queue_lib
    from .office import names as community_names
    from .resolve import settle
    from .store import open_store

    with open_store(store, _secret(), load_domains(schemas), write=True) as st:
        names = community_names(st.conn)
        queue = [item["id"] for item in queue_lib.items(st)]
        if not queue:
            click.echo(_("No open conflicts."))
            return
        settled = skipped = 0
        for n, conflict_id in enumerate(queue, start=1):
            item = queue_lib.show(st, conflict_id)
            if item["status"] != "open":
                continue  # settled along with an earlier one (--keep keeps a whole record)
            click.echo("\n" + _("({n} of {total})").format(n=n, total=len(queue)))
            _show(item, names)
            choices = [str(i) for i in range(1, len(item["candidates"]) + 1)]
            answer = click.prompt(_("keep {choices}, v = type a value, s = skip, q = quit").format(
                                      choices="/".join(choices)),
                                  type=click.Choice(choices + ["v", "s", "q"]), show_choices=False)
            if answer == "q":
                break
            if answer == "s":
                skipped += 1
                continue
            try:
                if answer == "v":
                    summary = settle(st, conflict_id, value=click.prompt(
                        _("value for {column}").format(column=item["label"])))
                else:
                    summary = settle(st, conflict_id, keep=item["candidates"][int(answer) - 1]["version"])
            except SyncdbError as e:
                # Settled at another desk meanwhile, or a value the schema refuses: say so, go on.
                click.echo("  " + _("not settled: {reason}").format(reason=e))
                skipped += 1
                continue
            settled += 1
            for line in summary.lines()[1:]:
                click.echo(f"  {line}")
        left = len(queue_lib.items(st))
    click.echo("\n" + _("{settled} settled, {skipped} skipped; {left} still open").format(
        settled=settled, skipped=skipped, left=left))


@conflicts.command(name="resolve", help=_(
    "Settle an open conflict with an office resolution.\n\n"
    "The resolution is a change signed by the office, merged like any other and recorded in the "
    "audit ledger; it wins over every candidate it settles.\n\n"
    "Example: syncdb conflicts resolve /srv/office 12 --keep 441900003002"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("conflict_id", type=int)
@click.option("--keep", metavar="ORIGIN", help=_("Keep the candidate from this community (or with this version)."))
@click.option("--value", callback=_typed, help=_("Set this value instead of any candidate."))
@schemas_option
def conflicts_resolve(store, conflict_id, keep, value, schemas):
    from .resolve import resolve_conflict

    if (keep is None) == (value is None):
        raise click.UsageError(_("give exactly one of --keep ORIGIN or --value TEXT"))
    summary = resolve_conflict(store, _secret(), load_domains(schemas), conflict_id, keep=keep, value=value)
    click.echo(_("conflict #{id} resolved; conflicts closed: {closed}").format(id=conflict_id, closed=summary.closed))


# ---------------------------------------------------------------- syncdb checks (checks.py, cases.py)

@cli.group(cls=Group, help=_("Cross-domain checks (信息比对): the cases they found, and settling them."))
def checks():
    pass


def _case_line(item: dict) -> str:
    return _("#{id} [{state}] {title} · {community} · {subject}: {message}").format(
        id=item["id"], state=item["state_label"], title=item["title"], community=item["community"] or "-",
        subject=item["subject"], message=item["message"])


@checks.command(name="list", help=_(
    "List the open and confirmed cases: id, state, check, community, subject (masked) and what is wrong.\n\n"
    "With --checks, list the checks themselves and their cases per state instead.\n\n"
    "Example: syncdb checks list /srv/office --check deceased_paid --community 441900003001"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option("--check", "check_name", metavar="NAME", help=_("Only this check's cases."))
@click.option("--community", metavar="CODE", help=_("Only the cases of this community."))
@click.option("--all", "show_all", is_flag=True, help=_("Dismissed and fixed cases too."))
@click.option("--checks", "list_checks", is_flag=True, help=_("List the checks instead of their cases."))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@schemas_option
def checks_list(store, check_name, community, show_all, list_checks, fmt, schemas):
    from . import cases as cases_lib
    from . import checks as checks_lib
    from .store import open_store

    with open_store(store, _secret(), load_domains(schemas)) as st:
        if list_checks:
            counts = checks_lib.case_counts(st)
            for check in checks_lib.registered():
                states = {}
                for per_state in counts.get(check.name, {}).values():
                    for state, n in per_state.items():
                        states[state] = states.get(state, 0) + n
                if fmt == "json":
                    click.echo(json.dumps({"name": check.name, "title": _(check.title), "severity": check.severity,
                                           "subject": check.subject, "reads": list(check.reads), "cases": states},
                                          ensure_ascii=False))
                    continue
                shown = ", ".join(f"{_(cases_lib.STATES[s])} {n}" for s, n in sorted(states.items())) or "-"
                click.echo(_("{name}: {title} ({severity}; reads {reads}); cases: {cases}").format(
                    name=check.name, title=_(check.title), severity=_(checks_lib.SEVERITIES[check.severity]),
                    reads=", ".join(check.reads), cases=shown))
            return
        states = tuple(cases_lib.STATES) if show_all else cases_lib.ACTIVE
        items = checks_lib.list_cases(st, check_name, community, states, masked=True)
    for item in items:
        click.echo(json.dumps(item, ensure_ascii=False) if fmt == "json" else _case_line(item))
    if not items and fmt == "text":
        click.echo(_("No cases."))


@checks.command(name="show", help=_(
    "Show one case in full: what is wrong, the figures behind it, the records concerned, who changed it and when.\n\n"
    "Example: syncdb checks show /srv/office 12"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("case_id", type=int)
@click.option("--masked", is_flag=True, help=_("Mask ID numbers, as a masked role sees them."))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@schemas_option
def checks_show(store, case_id, masked, fmt, schemas):
    from . import checks as checks_lib
    from .store import open_store

    with open_store(store, _secret(), load_domains(schemas)) as st:
        item = checks_lib.show_case(st, case_id, masked=masked)
    if fmt == "json":
        click.echo(json.dumps(item, ensure_ascii=False, indent=2))
        return
    click.echo(_case_line(item))
    click.echo(_("severity {severity}; opened {opened}; last checked {checked}; {state} since {changed} by {by}")
               .format(severity=item["severity_label"], opened=item["opened"], checked=item["checked"],
                       state=item["state_label"], changed=item["changed"], by=item["changed_by"]))
    if item["reason"]:
        click.echo(_("reason: {reason}").format(reason=item["reason"]))
    click.echo(_("figures:"))
    for name, value in item["figures"].items():
        click.echo(f"  {name}: {json.dumps(value, ensure_ascii=False)}")
    click.echo(_("records concerned:"))
    for record in item["records"]:
        click.echo(f"  {record['label']} ({record['table']}): {' / '.join(str(v) for v in record['key'])}")
    if item["state"] in ("open", "confirmed"):
        click.echo(_("work it with one of:"))
        if item["state"] == "open":
            click.echo(f"  syncdb checks confirm {store} {case_id}")
        click.echo(f"  syncdb checks dismiss {store} {case_id} --reason TEXT")


LOCK_WAIT = 60  # seconds a case's decision or a run of the checks waits for a merge to let go of the store


@contextmanager
def _waiting_for_merges(st, store):
    """The store open to write, waiting up to SYNCDB_LOCK_WAIT (default LOCK_WAIT) seconds for a merge that
    holds it (a night's merge runs for minutes); still held then: say so, and that nothing was changed."""
    try:
        wait = float(os.environ.get("SYNCDB_LOCK_WAIT") or LOCK_WAIT)
    except ValueError:
        raise click.UsageError(_("SYNCDB_LOCK_WAIT must be a number of seconds")) from None
    st.conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
    try:
        yield st
    except sqlite3.OperationalError as e:
        if "locked" not in str(e) and "busy" not in str(e):
            raise
        raise SyncdbError(_("the store in {store} is busy: a merge is running and held it for the {seconds:g} "
                            "seconds this command waited; nothing was changed; try again in a minute").format(
            store=store, seconds=wait)) from None


def _decide(store, case_id, state, reason, who, schemas) -> None:
    from . import cases as cases_lib
    from .store import open_store

    with open_store(store, _secret(), load_domains(schemas), write=True) as st, _waiting_for_merges(st, store):
        item = cases_lib.decide(st, case_id, state, by=who, reason=reason)
    click.echo(_("case #{id} is {state}; recorded in the audit ledger by {by}").format(
        id=case_id, state=_(cases_lib.STATES[item["state"]]), by=item["changed_by"]))


@checks.command(name="confirm", help=_(
    "Confirm a case: a person has looked and the problem is real (it stays a case until the data is put right, "
    "then closes by itself as fixed). Recorded in the audit ledger.\n\n"
    "Example: syncdb checks confirm /srv/office 12 --by 王芳"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("case_id", type=int)
@click.option("--reason", callback=_typed,
              help=_("What was found (optional; kept sealed in the store and the audit ledger)."))
@click.option("--by", "who", callback=_typed, help=_("Who decides (default: the user running the command)."))
@schemas_option
def checks_confirm(store, case_id, reason, who, schemas):
    _decide(store, case_id, "confirmed", reason, who, schemas)


@checks.command(name="dismiss", help=_(
    "Dismiss a case with a reason: the data is right as it is. It stays dismissed while the data that showed it "
    "stays the same; other data showing the problem opens a new case. Recorded in the audit ledger.\n\n"
    "Example: syncdb checks dismiss /srv/office 12 --reason \"death registered late; benefit already recovered\""
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("case_id", type=int)
@click.option("--reason", required=True, callback=_typed, help=_("Why (kept sealed in the store and the audit ledger)."))
@click.option("--by", "who", callback=_typed, help=_("Who decides (default: the user running the command)."))
@schemas_option
def checks_dismiss(store, case_id, reason, who, schemas):
    _decide(store, case_id, "dismissed", reason, who, schemas)


@checks.command(name="run", help=_(
    "Run the checks now: on what changed since they last ran (as after every merge), or with --all on every "
    "record. Thresholds come from STORE/checks.toml (docs/checks.md). Exit status 1 if a check failed.\n\n"
    "Example: syncdb checks run /srv/office --all"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option("--all", "everything", is_flag=True, help=_("Check every record, not only what changed."))
@click.option("--check", "names", metavar="NAME", multiple=True, help=_("Only this check (repeatable)."))
@schemas_option
def checks_run(store, everything, names, schemas):
    from . import checks as checks_lib
    from .store import open_store

    with open_store(store, _secret(), load_domains(schemas), write=True) as st, _waiting_for_merges(st, store):
        report = checks_lib.run(st, everything=everything, names=names or None)
    for line in report.lines():
        click.echo(line)
    sys.exit(1 if report.failed else 0)


@cli.group(cls=Group, help=_("Check the tamper-evident audit ledger."))
def audit():
    pass


@audit.command(name="verify", help=_(
    "Check every audit ledger entry against its seal; exit 1 naming the first bad one.\n\n"
    "The ledger must also record every change of every bundle the store applied: a ledger deleted "
    "whole, head and all, fails too. The logs `syncdb publish` keeps in STORE/publish.db (views of "
    "plaintext, sign-in lock-outs) are checked the same way.\n\n"
    "Example: syncdb audit verify /srv/office"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@schemas_option
def audit_verify(store, schemas):
    from . import audit as audit_lib
    from .publishdb import verify_views
    from .signin import verify_lockouts
    from .store import open_store

    with open_store(store, _secret(), load_domains(schemas)) as st:
        changes = audit_lib.verify(st)
        entries = audit_lib.entry_count(st)
        views = verify_views(st)
        lockouts = verify_lockouts(store, st.keyring)
    click.echo(_("audit ledger intact: {entries} entries recording {changes} changes").format(
        entries=entries, changes=changes))
    click.echo(_("page-view log intact: {views} views of plaintext").format(views=views))
    click.echo(_("sign-in lock-out log intact: {lockouts} lock-outs").format(lockouts=lockouts))


@cli.command(name="export", help=_(
    "Export a table of the store, decrypted, for a keyholder.\n\n"
    "TABLE is domain.table, e.g. huji.persons. CSV and Excel read as the published site does: "
    "Chinese column names, codes with their meanings (2 女性, 正常), ID numbers and other numbers that "
    "are really text kept as text, so Excel keeps every digit and leading zero. --where takes a "
    "column's name or Chinese name, and a code or its meaning. Mind where the output goes: it holds "
    "the plaintext of sensitive columns.\n\n"
    "Example: syncdb export /srv/office huji.persons --where 人员状态=正常 --format xlsx -o 人员.xlsx"))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("table")
@click.option("--format", "fmt", type=click.Choice(["csv", "xlsx", "json"]), default="csv", show_default=True,
              help=_("csv (UTF-8 with a BOM, for Excel), xlsx (an Excel workbook) or json "
                     "(one object per line, column names and codes as stored)."))
@click.option("--where", multiple=True, metavar=_("COLUMN=VALUE"),
              help=_("Keep only rows where COLUMN equals VALUE, e.g. status=normal, 人员状态=正常, 性别=女."))
@click.option("--raw", is_flag=True,
              help=_("CSV with the column names and bare codes as the store holds them, for another program."))
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help=_("File to write (default: standard output)."))
@schemas_option
def export_table(store, table, fmt, where, raw, output, schemas):
    from . import export as export_lib

    filters = {}
    for item in where:
        column, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(_("'{item}' is not COLUMN=VALUE").format(item=item), param_hint="--where")
        filters[column.strip()] = value.strip()
    domains = load_domains(schemas)
    domain, _dot, name = table.partition(".")
    if domain not in domains or name not in domains[domain].tables:
        raise click.BadParameter(_("no table {table}; use domain.table, e.g. huji.persons").format(table=table),
                                 param_hint="TABLE")
    if fmt == "xlsx" and output == "-" and sys.stdout.isatty():
        raise click.UsageError(_("an Excel workbook is not for the screen: write it to a file with -o FILE.xlsx"))
    records = export_lib.rows(store, _secret(), domains, table, filters)  # refuses before the file is made
    binary = fmt == "xlsx"
    with click.open_file(output, "wb" if binary else "w", encoding=None if binary else "utf-8",
                         lazy=True) as out:
        count = export_lib.write(records, domains[domain], domains[domain].tables[name], fmt, out, raw=raw)
    click.echo(i18n.ngettext("{count} row exported", "{count} rows exported", count).format(count=count), err=True)


@cli.group(cls=Group, help=_("Manage the office keys."))
def keys():
    pass


@keys.command(name="rotate", help=_(
    "Re-encrypt every sensitive value under a new data key, resumably.\n\n"
    "Run it again after an interruption: it finishes the rotation it started.\n\n"
    "Example: syncdb keys rotate /srv/office"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@schemas_option
def keys_rotate(store, schemas):
    from . import keys as keys_lib

    counts = keys_lib.rotate(store, _secret(), load_domains(schemas))
    for what, n in counts.items():
        click.echo(_("{what}: {n} re-encrypted").format(what=what, n=n))


@cli.command(help=_(
    "Serve the store read-only in Datasette, for the office's staff.\n\n"
    "Decrypts into memory only: a masked database for every signed-in member of staff, a plaintext "
    "one for the view-pii role (each view logged). Needs the office passphrase or key file, and "
    "staff accounts (`syncdb users add`).\n\n"
    "Example: syncdb publish /srv/office --host 0.0.0.0 --port 8001"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True, help=_("Address to listen on."))
@click.option("--port", type=int, default=8001, show_default=True, help=_("Port to listen on."))
@click.option("--refresh", type=click.FloatRange(min=1), default=30, show_default=True,
              help=_("Seconds between looks at the store for newly merged data."))
@click.option("--title", help=_("The site's title (default 街道办人口数据)."))
@click.option("--session-hours", type=click.FloatRange(min=0, min_open=True), default=8, show_default=True,
              help=_("How long a sign-in lasts."))
@schemas_option
def publish(store, host, port, refresh, title, session_hours, schemas):
    from .publish import serve as serve_lib

    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    serve_lib(store, _secret(), load_domains(schemas), host=host, port=port, refresh_seconds=refresh,
              title=title, session_hours=session_hours, ready=lambda url: click.echo(
                  _("Publishing {store} at {url} (Ctrl-C to stop)").format(store=store, url=url), err=True))


@cli.group(cls=Group, help=_("Staff accounts for `syncdb publish`."))
def users():
    pass


@users.command(name="add", help=_(
    "Add a member of staff, or give one a new password and roles.\n\n"
    "Example: syncdb users add /srv/office wangfang --role view-pii"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("name", callback=_typed)
@click.option("--role", "roles", multiple=True, type=click.Choice(["view-pii", "admin"]),
              help=_("view-pii: may see plaintext (every view is logged); admin: may run SQL. Repeatable."))
@click.password_option(prompt=_("Password for the new account"), callback=_typed,
                       help=_("Prompted for (twice) when not given; at least 8 characters."))
def users_add(store, name, roles, password):
    from .staff import add_user

    add_user(store, name, password, roles)
    click.echo(f"{name}: " + (", ".join(sorted(roles)) or _("masked data only")))


@users.command(name="list", help=_(
    "List staff accounts and their roles.\n\n"
    "Example: syncdb users list /srv/office"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
def users_list(store):
    from .staff import read_users

    for name, user in sorted(read_users(store).items()):
        click.echo(f"{name}\t{', '.join(user['roles']) or '-'}\t" + _("added {when}").format(when=user["added"]))


@users.command(name="remove", help=_(
    "Remove a staff account; its signed-in sessions end at once.\n\n"
    "Example: syncdb users remove /srv/office wangfang"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("name")
def users_remove(store, name):
    from .staff import remove_user

    remove_user(store, name)
    click.echo(_("removed {name}").format(name=name))


def _keyring_if_unattended(store):
    """The office keyring when SYNCDB_KEY_FILE or SYNCDB_PASSPHRASE is set; None without asking anyone."""
    import os

    from . import office as office_lib

    if not (os.environ.get("SYNCDB_KEY_FILE") or os.environ.get("SYNCDB_PASSPHRASE")):
        return None
    return office_lib.load_keyring(store, _secret())


@cli.command(help=_(
    "What needs a person, at the office (PATH is the STORE) or at a community (PATH is the "
    "WORKDIR).\n\n"
    "Exits 1 when something needs a person, so a scheduled task can alert, and 0 otherwise. Reads "
    "only (opens the databases read-only); with SYNCDB_KEY_FILE or SYNCDB_PASSPHRASE set it also "
    "opens the office keyring to check the key rotation and held bundles fully. --ack writes "
    "STORE/status-ack.json and nothing else.\n\n"
    "Example: syncdb status /srv/office"
))
@click.argument("path", type=click.Path(file_okay=False, exists=True))
@click.option("--ack", is_flag=True,
              help=_("Office: mark the refusals and rejected records shown as seen, so that they stop making "
                   "status exit 1 (held bundles, conflicts and key rotations need dealing with instead)."))
@click.option("--max-lag", type=click.FloatRange(min=0), default=48, show_default=True, metavar="HOURS",
              help=_("Community: a bundle unacknowledged for longer than this needs a person."))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@schemas_option
def status(path, ack, max_lag, fmt, schemas):
    from pathlib import Path

    from . import status as status_lib

    domains = load_domains(schemas)
    is_store = (Path(path) / "store.db").exists()
    if ack and not is_store:
        raise click.UsageError(_("--ack is for an office store: a community clears its alerts by fixing them"))
    keyring = _keyring_if_unattended(path) if is_store else None
    report = status_lib.status(path, domains, keyring, max_lag_hours=max_lag)
    if fmt == "json":
        click.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        for line in report.lines():
            click.echo(line)
    if ack:
        status_lib.acknowledge(path)
        click.echo(_("Refusals and rejected records up to now are acknowledged ({file}); new ones make status "
                     "exit 1 again.").format(file=f"{path}/{status_lib.ACK_FILE}"), err=True)
        report = status_lib.status(path, domains, keyring, max_lag_hours=max_lag)
    sys.exit(1 if report.needs_person else 0)


@cli.group(cls=Group, help=_("List the office's bundles; skip or ask again for one that cannot be applied."))
def bundles():
    pass


@bundles.command(name="list", help=_(
    "Bundles received, applied, skipped and held, and why each held one waits.\n\n"
    "Exits 1 when a bundle needs a person.\n\n"
    "Example: syncdb bundles list /srv/office --code 441900003001"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option("--code", help=_("Only this community's bundles."))
@click.option("--all", "everything", is_flag=True, help=_("Every applied bundle, not only the last of each community."))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@schemas_option
def bundles_list(store, code, everything, fmt, schemas):
    from . import bundles as bundles_lib
    from . import office as office_lib

    entries = bundles_lib.listing(store, load_domains(schemas), _keyring_if_unattended(store), code, everything)
    names = office_lib.read_names(store)
    for e in entries:
        if fmt == "json":
            click.echo(json.dumps(dict(e.as_dict(), name=names.get(e.origin)), ensure_ascii=False))
            continue
        done = _(", {changes} change(s)").format(changes=e.changes) if e.state == "applied" else ""
        when = (_(" applied {when}").format(when=e.applied) if e.applied
                else _(" received {when}").format(when=e.received) if e.received else "")
        why = f": {e.why}" if e.why else ""
        click.echo(f"{office_lib.label(e.origin, names)} #{e.sequence} [{e.state}]{when}{done}{why}")
    if not entries and fmt == "text":
        click.echo(_("No bundles yet."))
    sys.exit(1 if any(e.needs_person for e in entries) else 0)


@bundles.command(name="skip", help=_(
    "Give up a community's next bundle for good, so its later bundles apply.\n\n"
    "What the bundle carried is not lost: the office asks the community (in its acknowledgement, "
    "at the community's next pull) to send every record again, whole, at its next push. The skip "
    "(who, when, why) is kept in the audit ledger; the bundle's file is kept in STORE/quarantine.\n\n"
    "Example: syncdb bundles skip /srv/office 441900003001 7 --reason \"inbox copy damaged, "
    "community no longer has it\""
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("code")
@click.argument("sequence", type=click.IntRange(min=1))
@click.option("--reason", required=True, callback=_typed,
              help=_("Why it is given up; kept in the audit ledger (no residents' details)."))
@click.option("--by", "who", callback=_typed, help=_("Who decides (default: the user running the command)."))
@schemas_option
def bundles_skip(store, code, sequence, reason, who, schemas):
    from . import bundles as bundles_lib
    from . import office as office_lib

    done = bundles_lib.skip(store, _secret(), load_domains(schemas), code, sequence, reason, who)
    who_ = office_lib.label(code, office_lib.read_names(store))
    if done.file:
        click.echo(_("Bundle {sequence} of {community} is skipped and recorded in the audit ledger; its file is "
                     "kept as {file}.").format(sequence=sequence, community=who_, file=done.file))
    else:
        click.echo(_("Bundle {sequence} of {community} is skipped and recorded in the audit ledger.").format(
            sequence=sequence, community=who_))
    click.echo(_("{n} later bundle(s) of it apply at the next merge (`syncdb merge {store}`).").format(
        n=done.later, store=store) if done.later else _("Its next bundles apply as they arrive."))


@bundles.command(name="resend", help=_(
    "Forget a received bundle that is not applied, so the community's next push sends it again.\n\n"
    "Only a community that still has the bundle can send it: one that carries bundles on a USB "
    "stick keeps them until the office's acknowledgement reaches it, but one that pushes over the "
    "network deletes each bundle as soon as the office acknowledges it. If it cannot, its later "
    "bundles wait until this one is skipped (`syncdb bundles skip`).\n\n"
    "Example: syncdb bundles resend /srv/office 441900003001 7"
))
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("code")
@click.argument("sequence", type=click.IntRange(min=1))
def bundles_resend(store, code, sequence):
    from . import bundles as bundles_lib
    from . import office as office_lib

    done = bundles_lib.resend(store, code, sequence)
    who = office_lib.label(code, office_lib.read_names(store))
    if done.file:
        click.echo(_("The office has forgotten bundle {sequence} of {community} (its copy is kept as {file}).")
                   .format(sequence=sequence, community=who, file=done.file))
    else:
        click.echo(_("The office has forgotten bundle {sequence} of {community}.").format(
            sequence=sequence, community=who))
    click.echo(_("It comes again with the community's next push only if the community still has it in its outbox "
                 "(`syncdb status WORKDIR` there lists it). If it does not, its later bundles wait for it: give it "
                 "up with `syncdb bundles skip {store} {code} {sequence} --reason TEXT`.").format(
        store=store, code=code, sequence=sequence))
