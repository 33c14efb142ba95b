"""The ``syncdb`` command: thin click commands over the library.

Parse options, call the library, print. Library errors (SyncdbError) are
printed once here and exit with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import json
import sqlite3
import sys

import click

from . import __version__
from .errors import SyncdbError
from .files import storage_error
from .schema import load_domains as _load_domains

schemas_option = click.option(
    "--schemas",
    type=click.Path(file_okay=False, exists=True),
    envvar="SYNCDB_SCHEMAS",
    help="Folder of domain schema files (default: the shipped schemas/).",
)


def load_domains(schemas):
    """The schemas, checked against the built-in policies and those plugins add."""
    from .plugins import extra_policies

    return _load_domains(schemas, extra_policies=extra_policies())


class Group(click.Group):
    """A click group that turns SyncdbError into a one-line message and exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SyncdbError as e:
            raise click.ClickException(str(e)) from e
        except (OSError, sqlite3.OperationalError) as e:
            # What no command turned into a message of its own: a disk full, failing
            # or read-only under a file it uses. Still one line, and what to do.
            where = getattr(e, "filename", None) or "a folder this command uses"
            raise click.ClickException(str(storage_error(e, where))) from e


@click.group(cls=Group)
@click.version_option(__version__, prog_name="syncdb")
def cli():
    """Sync community population databases into one street-office store.

    Community PCs capture their changes and push them as signed, encrypted
    bundles; the street office merges them under declared conflict rules and
    publishes the result read-only in Datasette.
    """


@cli.group(cls=Group)
def schemas():
    """Inspect and check the domain schema files."""


@schemas.command(name="check")
@schemas_option
def schemas_check(schemas):
    """Load every schema file and report the first mistake in each.

    Exit status 1 names the file, table and column at fault.

    Example: syncdb schemas check --schemas ./schemas
    """
    domains = load_domains(schemas)
    for domain in domains.values():
        tables = ", ".join(domain.tables)
        click.echo(f"{domain.path.name}: {domain.name} ({domain.label}) v{domain.version}: {tables}")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people, json (one object per line) for machines.")
@click.option("--warnings/--no-warnings", default=True, show_default=True,
              help="Also print warnings (such as an ID number's retired region code).")
@schemas_option
def validate(paths, fmt, warnings, schemas):
    """Check working databases against the schemas and national standards.

    PATHS are working database files or community folders holding them.
    Prints each bad record as community / table / key / field / why and
    exits with status 1 if there is any; warnings alone exit 0.

    Example: syncdb validate communities/441900003001
    """
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
        click.echo(f"{errors} bad record(s), {warned} warning(s)", err=True)
    sys.exit(1 if errors else 0)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--code", required=True, help="The community's 12-digit code (统计用区划代码), e.g. 441900003001.")
@click.option("--residents", type=click.IntRange(min=1), default=2000, show_default=True,
              help="How many residents to generate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@schemas_option
def sample(directory, code, residents, seed, schemas):
    """Write a sample community's working databases (huji.db, shebao.db, minzheng.db).

    Realistic, valid and deterministic: households with heads and members,
    ID numbers that agree with birth dates and sexes, enrolments and benefits.

    Example: syncdb sample communities/441900003001 --code 441900003001 --residents 5000 --seed 1
    """
    from .sample import generate

    domains = load_domains(schemas)
    counts = generate(directory, code, residents, seed, domains)
    for table, count in counts.items():
        click.echo(f"{table}: {count} rows")


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False), default="demo-office")
@click.option("--communities", type=click.IntRange(min=1, max=50), default=3, show_default=True,
              help="How many sample communities to build.")
@click.option("--residents", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Residents per community.")
@click.option("--publish/--no-publish", "publishing", default=True, show_default=True,
              help="Then serve the result in Datasette until Ctrl-C.")
@click.option("--port", type=int, default=8001, show_default=True, help="Port for the published site.")
@schemas_option
def demo(directory, communities, residents, publishing, port, schemas):
    """Build a sample street office with its communities, run two nightly cycles, publish the result.

    Example: syncdb demo demo-office --communities 3 --residents 2000
    """
    from .demo import run_demo

    domains = load_domains(schemas)
    made = run_demo(directory, communities=communities, residents=residents, domains=domains, echo=click.echo)
    if publishing:
        import logging

        from .publish import serve as serve_lib

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        serve_lib(made["store"], made["secret"], domains, host="127.0.0.1", port=port,
                  ready=lambda url: click.echo(f"== Published read-only at {url} — sign in with an account "
                                               "above; Ctrl-C to stop"))


def _secret(confirm=False):
    from .crypto import Secret

    return Secret.from_environment(confirm=confirm)


@cli.group(cls=Group)
def office():
    """Set up the street office store and enrol communities."""


@office.command(name="init")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--suite", type=click.Choice(["std", "gm"]), default="std", show_default=True,
              help="std: AES-256-GCM and SHA-256; gm: SM4-GCM and SM3 (商用密码).")
@click.option("--code", default="office", show_default=True,
              help="The street office's own code, e.g. its 9-digit 街道 code.")
def office_init(store, suite, code):
    """Create the office store and its keys; print the office public key file.

    The keys are sealed under SYNCDB_PASSPHRASE (or a prompt) or SYNCDB_KEY_FILE.

    Example: SYNCDB_PASSPHRASE=… syncdb office init /srv/office --suite std
    """
    from . import office as office_lib

    pub = office_lib.init(store, _secret(confirm=True), suite, code)
    click.echo(f"Office store created in {store}")
    click.echo(f"Give every community this public key file: {pub}")


@office.command(name="enroll")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("code")
@click.argument("pubkey_file", type=click.Path(dir_okay=False, exists=True))
def office_enroll(store, code, pubkey_file):
    """Accept bundles signed by this community's key.

    Example: syncdb office enroll /srv/office 441900003001 441900003001.pub.json
    """
    from . import office as office_lib

    key = office_lib.enroll(store, code, pubkey_file)
    click.echo(f"Community {code} enrolled (key {key.id})")


@cli.group(cls=Group)
def community():
    """Set up a community folder for sync."""


@community.command(name="init")
@click.argument("workdir", type=click.Path(file_okay=False))
@click.option("--code", required=True, help="The community's 12-digit code, e.g. 441900003001.")
@click.option("--office-key", required=True, type=click.Path(dir_okay=False, exists=True),
              help="The office.pub.json written by `syncdb office init`.")
@schemas_option
def community_init(workdir, code, office_key, schemas):
    """Create the community's keys and set up change capture on its working databases.

    Writes CODE.pub.json into WORKDIR: carry it to the office for `office enroll`.

    Example: syncdb community init C:\\社区数据 --code 441900003001 --office-key office.pub.json
    """
    from . import community as community_lib

    pub = community_lib.init(workdir, code, office_key, load_domains(schemas), _secret(confirm=True))
    click.echo(f"Capture is set up in {workdir}")
    click.echo(f"Take this public key file to the street office: {pub}")


@cli.command()
@click.argument("workdir", type=click.Path(file_okay=False, exists=True))
@click.option("--to", "url", help="The office ingest URL, e.g. http://office.example:8765")
@click.option("--outbox", type=click.Path(file_okay=False),
              help="A folder (a USB stick) to copy the bundles into instead.")
@click.option("--retries", type=click.IntRange(min=0), default=5, show_default=True,
              help="Retries per bundle on connection errors and 5xx answers.")
@schemas_option
def push(workdir, url, outbox, retries, schemas):
    """Send what changed since the last acknowledged bundle.

    Makes a new bundle from the changes captured since the last push, then
    sends every bundle the office has not acknowledged, to a URL or a folder.
    Bundles stay in the community's outbox until the office acknowledges them.

    Example: syncdb push C:\\社区数据 --to http://192.0.2.10:8765
    """
    from . import community as community_lib
    from . import transport

    if bool(url) == bool(outbox):
        raise click.UsageError("give exactly one of --to URL or --outbox DIR")
    if url:
        transport.learn_limits(workdir, url)  # so the export makes bundles the office will take
    result = community_lib.export(workdir, load_domains(schemas), _secret(),
                                  notify=lambda m: click.echo(f"Note: {m}", err=True))
    if len(result.bundles) > 1:  # split to fit the office's limits
        for sequence, _, changes in result.bundles:
            click.echo(f"Bundle {sequence}: {changes} change(s)")
    if result.sequence:
        first, last = result.bundles[0][0], result.bundles[-1][0]
        made = f"Bundle {first}" if first == last else f"Bundles {first}-{last}"
        click.echo(f"{made}: {result.changes} change(s) {_counts(result.counts)}")
    else:
        click.echo("No new changes since the last push.")
    if outbox:
        copied = transport.push_to_folder(workdir, outbox)
        click.echo(f"Copied {len(copied)} unacknowledged bundle(s) to {outbox}")
    else:
        report = transport.push_to_url(workdir, url, retries=retries, echo=click.echo)
        click.echo(report.summary(), err=not report.ok)
        if not report.ok:
            sys.exit(1)


@cli.command()
@click.argument("workdir", type=click.Path(file_okay=False, exists=True))
@click.option("--from", "url", help="The office's address, e.g. http://192.0.2.10:8765 (what push --to uses).")
@click.option("--inbox", type=click.Path(file_okay=False, exists=True),
              help="A folder (a USB stick) holding a copy of the office's outbound/CODE folder.")
@schemas_option
def pull(workdir, url, inbox, schemas):
    """Apply the office's resolutions to the records this community owns.

    A value changed here since the last push is kept, not overwritten: it
    goes to the office at the next push.

    Example: syncdb pull D:\\shequ --from http://192.0.2.10:8765
    """
    from .pull import pull as pull_lib

    if bool(url) == bool(inbox):
        raise click.UsageError("give exactly one of --from URL or --inbox DIR")
    report = pull_lib(workdir, load_domains(schemas), _secret(), url=url, inbox=inbox)
    for line in report.lines():
        click.echo(line)


def _counts(counts):
    parts = []
    for table, ops in counts.items():
        done = ", ".join(f"{n} {op}" for op, n in ops.items() if n)
        parts.append(f"{table}: {done}")
    return "(" + "; ".join(parts) + ")" if parts else ""


@cli.command()
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on.")
@click.option("--max-bundle-mb", type=click.IntRange(min=1), default=256, show_default=True,
              help="Refuse uploads larger than this.")
@click.option("--merge/--no-merge", "merging", default=True, show_default=True,
              help="Merge accepted bundles into the store (needs the office passphrase or key file); "
                   "with --no-merge they wait in the inbox for `syncdb merge`.")
@schemas_option
def serve(store, host, port, max_bundle_mb, merging, schemas):
    """Run the office ingest service that `syncdb push --to` sends to.

    Accepted bundles are kept in the inbox, acknowledged, then merged.

    Example: SYNCDB_KEY_FILE=/root/office.key syncdb serve /srv/office --host 0.0.0.0 --port 8765
    """
    from . import server

    try:
        secret = _secret() if merging else None
    except SyncdbError as e:
        raise SyncdbError(f"{e}; or run `syncdb serve --no-merge` to only receive bundles") from None
    server.serve(store, host=host, port=port, max_body=max_bundle_mb * 1024 * 1024,
                 secret=secret, domains=load_domains(schemas) if merging else None)


@cli.command()
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@schemas_option
def merge(store, paths, schemas):
    """Merge bundle files or folders into the office store.

    Bundles are verified and received into the inbox first (exactly as if
    pushed), then every bundle whose predecessors are applied is merged, one
    transaction each. With no PATHS, merges what the inbox already holds.

    Example: syncdb merge /srv/office /media/usb/outbox
    """
    from . import merge as merge_lib

    with click.progressbar(length=1, label="Merging changes", show_pos=True, file=sys.stderr) as bar:
        def progress(done, total, name):
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        summary = merge_lib.merge(store, paths, _secret(), load_domains(schemas), progress=progress)
    for line in summary.lines():
        click.echo(line)
    # A bundle held for a cause (not merely waiting for an earlier one) needs a person too.
    if summary.refused or summary.rejected or summary.blocked:
        sys.exit(1)


@cli.group(cls=Group)
def conflicts():
    """List, show, review and settle the conflicts the rules left for a person."""


@conflicts.command(name="list")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option("--all", "show_all", is_flag=True, help="Closed conflicts too.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@schemas_option
def conflicts_list(store, show_all, fmt, schemas):
    """List open conflicts: table, record, column, kind and candidates.

    Example: syncdb conflicts list /srv/office
    """
    from .conflicts import list_conflicts

    for item in list_conflicts(store, _secret(), load_domains(schemas), include_closed=show_all):
        if fmt == "json":
            click.echo(json.dumps(item, ensure_ascii=False))
        else:
            candidates = "; ".join(f"{c['origin']}: {c['value']!r}{' (deleted)' if c['deleted'] else ''}"
                                   for c in item["candidates"])
            click.echo(f"#{item['id']} [{item['status']}] {item['table']} {item['record']} "
                       f"{item['column']} ({item['kind']}): {candidates}; provisional {item['winner']}")


def _when(version: str) -> str:
    """An HLC stamp's wall-clock part, as the office's local time."""
    import time

    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(version.split(".")[0]) / 1000))
    except (ValueError, IndexError, OverflowError, OSError):
        return version


def _show(store, item) -> None:
    click.echo(f"#{item['id']} [{item['status']}] {item['table']} {item['record']} · {item['column']} "
               f"{item['label']} ({item['kind']})")
    click.echo(f"opened {item['opened']}; provisional winner by {item['rule']}: {item['winner']}")
    if item["status"] != "open":
        click.echo(f"{item['status']} {item['closed']}: {item['note']}")
    click.echo("candidates:")
    for n, c in enumerate(item["candidates"], start=1):
        shown = "(deleted)" if c["deleted"] else repr(c["value"])
        click.echo(f"  {n}) {c['origin']:<14} {_when(c['version'])}  {shown}   [{c['version']}]")
    if item["record_cells"]:
        click.echo("the record in the store now:")
        for cell in item["record_cells"]:
            click.echo(f"  {cell['label']} ({cell['column']}): {cell['value'] if cell['value'] is not None else ''}")
    for other in item["others_open"]:
        click.echo(f"also open on this record: #{other['id']} ({other['column']})")


@conflicts.command(name="show")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("conflict_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@schemas_option
def conflicts_show(store, conflict_id, fmt, schemas):
    """Show one conflict in full: each candidate with its origin and time, and the record as stored.

    Example: syncdb conflicts show /srv/office 12
    """
    from .conflicts import show_conflict

    item = show_conflict(store, _secret(), load_domains(schemas), conflict_id)
    if fmt == "json":
        click.echo(json.dumps(item, ensure_ascii=False, indent=2))
        return
    _show(store, item)
    if item["status"] == "open":
        click.echo("settle it with one of:")
        for c in item["candidates"]:
            click.echo(f"  syncdb conflicts resolve {store} {conflict_id} --keep {c['origin']}")
        click.echo(f"  syncdb conflicts resolve {store} {conflict_id} --value TEXT")


@conflicts.command(name="review")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@schemas_option
def conflicts_review(store, schemas):
    """Walk through the open conflicts one by one and settle each, or skip it.

    For each: type a candidate's number to keep it, v to type a value, s to
    skip, q to stop. Each answer is an office resolution, as with `resolve`.

    Example: syncdb conflicts review /srv/office
    """
    from .conflicts import list_conflicts, show_conflict
    from .resolve import resolve_conflict

    secret, domains = _secret(), load_domains(schemas)
    queue = [item["id"] for item in list_conflicts(store, secret, domains)]
    if not queue:
        click.echo("No open conflicts.")
        return
    settled = skipped = 0
    for n, conflict_id in enumerate(queue, start=1):
        item = show_conflict(store, secret, domains, conflict_id)
        if item["status"] != "open":
            continue  # settled along with an earlier one (--keep keeps a whole record)
        click.echo(f"\n({n} of {len(queue)})")
        _show(store, item)
        choices = [str(i) for i in range(1, len(item["candidates"]) + 1)]
        answer = click.prompt(f"keep {'/'.join(choices)}, v = type a value, s = skip, q = quit",
                              type=click.Choice(choices + ["v", "s", "q"]), show_choices=False)
        if answer == "q":
            break
        if answer == "s":
            skipped += 1
            continue
        if answer == "v":
            summary = resolve_conflict(store, secret, domains, conflict_id,
                                       value=click.prompt(f"value for {item['label']}"))
        else:
            summary = resolve_conflict(store, secret, domains, conflict_id,
                                       keep=item["candidates"][int(answer) - 1]["version"])
        settled += 1
        for line in summary.lines()[1:]:
            click.echo(f"  {line}")
    left = len(list_conflicts(store, secret, domains))
    click.echo(f"\n{settled} settled, {skipped} skipped; {left} still open")


@conflicts.command(name="resolve")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("conflict_id", type=int)
@click.option("--keep", metavar="ORIGIN", help="Keep the candidate from this community (or with this version).")
@click.option("--value", help="Set this value instead of any candidate.")
@schemas_option
def conflicts_resolve(store, conflict_id, keep, value, schemas):
    """Settle an open conflict with an office resolution.

    The resolution is a change signed by the office, merged like any other and
    recorded in the audit ledger; it wins over every candidate it settles.

    Example: syncdb conflicts resolve /srv/office 12 --keep 441900003002
    """
    from .resolve import resolve_conflict

    if (keep is None) == (value is None):
        raise click.UsageError("give exactly one of --keep ORIGIN or --value TEXT")
    summary = resolve_conflict(store, _secret(), load_domains(schemas), conflict_id, keep=keep, value=value)
    click.echo(f"conflict #{conflict_id} resolved; conflicts closed: {summary.closed}")


@cli.group(cls=Group)
def audit():
    """Check the tamper-evident audit ledger."""


@audit.command(name="verify")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@schemas_option
def audit_verify(store, schemas):
    """Check every audit ledger entry against its seal; exit 1 naming the first bad one.

    Example: syncdb audit verify /srv/office
    """
    from . import audit as audit_lib
    from .merge import open_store

    from .publish import verify_views

    st = open_store(store, _secret(), load_domains(schemas))
    try:
        changes = audit_lib.verify(st)
        entries = st.conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
        views = verify_views(st)
    finally:
        st.conn.close()
    click.echo(f"audit ledger intact: {entries} entries recording {changes} changes")
    click.echo(f"page-view log intact: {views} views of plaintext")


@cli.command(name="export")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("table")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="csv (with a UTF-8 BOM for Excel) or json (one object per line).")
@click.option("--where", multiple=True, metavar="COLUMN=VALUE", help="Keep only rows where COLUMN equals VALUE.")
@click.option("-o", "--output", type=click.File("w", encoding="utf-8", lazy=True), default="-",
              help="File to write (default: standard output).")
@schemas_option
def export_table(store, table, fmt, where, output, schemas):
    """Export a table of the store, decrypted, for a keyholder.

    TABLE is domain.table, e.g. huji.persons. Mind where the output goes:
    it holds the plaintext of sensitive columns.

    Example: syncdb export /srv/office huji.persons --where status=normal -o persons.csv
    """
    from . import export as export_lib

    filters = {}
    for item in where:
        column, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"'{item}' is not COLUMN=VALUE", param_hint="--where")
        filters[column.strip()] = value.strip()
    domains = load_domains(schemas)
    domain, _, name = table.partition(".")
    if domain not in domains or name not in domains[domain].tables:
        raise click.BadParameter(f"no table {table}; use domain.table, e.g. huji.persons", param_hint="TABLE")
    columns = list(domains[domain].tables[name].columns)
    count = export_lib.write(export_lib.rows(store, _secret(), domains, table, filters), columns, fmt, output)
    click.echo(f"{count} row(s) exported", err=True)


@cli.group(cls=Group)
def keys():
    """Manage the office keys."""


@keys.command(name="rotate")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@schemas_option
def keys_rotate(store, schemas):
    """Re-encrypt every sensitive value under a new data key, resumably.

    Run it again after an interruption: it finishes the rotation it started.

    Example: syncdb keys rotate /srv/office
    """
    from . import keys as keys_lib

    counts = keys_lib.rotate(store, _secret(), load_domains(schemas))
    for what, n in counts.items():
        click.echo(f"{what}: {n} re-encrypted")


@cli.command()
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8001, show_default=True, help="Port to listen on.")
@click.option("--refresh", type=click.FloatRange(min=1), default=30, show_default=True,
              help="Seconds between looks at the store for newly merged data.")
@click.option("--title", help="The site's title (default 街道办人口数据).")
@click.option("--session-hours", type=click.FloatRange(min=0, min_open=True), default=8, show_default=True,
              help="How long a sign-in lasts.")
@schemas_option
def publish(store, host, port, refresh, title, session_hours, schemas):
    """Serve the store read-only in Datasette, for the office's staff.

    Decrypts into memory only: a masked database for every signed-in member
    of staff, a plaintext one for the view-pii role (each view logged). Needs
    the office passphrase or key file, and staff accounts (`syncdb users add`).

    Example: syncdb publish /srv/office --host 0.0.0.0 --port 8001
    """
    from .publish import serve as serve_lib

    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    serve_lib(store, _secret(), load_domains(schemas), host=host, port=port, refresh_seconds=refresh,
              title=title, session_hours=session_hours, ready=lambda url: click.echo(f"Publishing {store} at {url} (Ctrl-C to stop)", err=True))


@cli.group(cls=Group)
def users():
    """Staff accounts for `syncdb publish`."""


@users.command(name="add")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("name")
@click.option("--role", "roles", multiple=True, type=click.Choice(["view-pii", "admin"]),
              help="view-pii: may see plaintext (every view is logged); admin: may run SQL. Repeatable.")
@click.password_option(prompt="Password for the new account",
                       help="Prompted for (twice) when not given; at least 8 characters.")
def users_add(store, name, roles, password):
    """Add a member of staff, or give one a new password and roles.

    Example: syncdb users add /srv/office wangfang --role view-pii
    """
    from .publish import add_user

    add_user(store, name, password, roles)
    click.echo(f"{name}: {', '.join(sorted(roles)) or 'masked data only'}")


@users.command(name="list")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
def users_list(store):
    """List staff accounts and their roles.

    Example: syncdb users list /srv/office
    """
    from .publish import read_users

    for name, user in sorted(read_users(store).items()):
        click.echo(f"{name}\t{', '.join(user['roles']) or '-'}\tadded {user['added']}")


@users.command(name="remove")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("name")
def users_remove(store, name):
    """Remove a staff account; its signed-in sessions end at once.

    Example: syncdb users remove /srv/office wangfang
    """
    from .publish import remove_user

    remove_user(store, name)
    click.echo(f"removed {name}")
