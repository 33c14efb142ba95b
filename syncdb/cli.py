"""The ``syncdb`` command: thin click commands over the library.

Parse options, call the library, print. Library errors (SyncdbError) are
printed once here and exit with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import json
import sys

import click

from . import __version__
from .errors import SyncdbError
from .schema import load_domains

schemas_option = click.option(
    "--schemas",
    type=click.Path(file_okay=False, exists=True),
    envvar="SYNCDB_SCHEMAS",
    help="Folder of domain schema files (default: the shipped schemas/).",
)


class Group(click.Group):
    """A click group that turns SyncdbError into a one-line message and exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SyncdbError as e:
            raise click.ClickException(str(e)) from e


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
@schemas_option
def demo(directory, communities, residents, schemas):
    """Build a sample street office with its communities and run the nightly cycle.

    Example: syncdb demo demo-office --communities 3 --residents 2000
    """
    from .demo import run_demo

    run_demo(directory, communities=communities, residents=residents,
             domains=load_domains(schemas), echo=click.echo)
