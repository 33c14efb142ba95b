"""Docs that cannot drift: what the code offers, the docs must say.

Every command is in docs/cli.md, which is what cog makes of --help; every
schema keyword, type, validator, conflict policy and national code table is
explained in docs/schemas.md; the README starts with the two commands and
names only commands and options that exist.
"""

import re
import tomllib
from pathlib import Path

import click
import pytest
from cogapp import Cog

from syncdb import codes, schema, validate
from syncdb.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def command_paths(command=cli, path=("syncdb",)):
    """Every command and group in the click tree, as 'syncdb office init'."""
    yield " ".join(path)
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            if not sub.hidden:
                yield from command_paths(sub, path + (name,))


def section(text: str, heading: str) -> str:
    """The text under a markdown heading, up to the next heading of the same or a higher level.

    Lines inside fenced code blocks are never headings (a TOML comment is not).
    """
    lines, out, level, fenced = text.splitlines(keepends=True), [], None, False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"(#+) (.*?)\s*$", line)
        if level is None:
            if match and match.group(2) == heading:
                level = len(match.group(1))
            continue
        if match and len(match.group(1)) <= level:
            break
        out.append(line)
    assert level is not None, f"no '{heading}' heading"
    return "".join(out)


def table_rows(text: str) -> dict[str, str]:
    """Rows of markdown tables whose first cell is a `name`: name → the rest of the row."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\|\s*`([^`]+)`\s*\|(.*)\|\s*$", text, re.M)}


def code_blocks(text: str, info=None) -> list[str]:
    """The bodies of fenced code blocks; with ``info``, only blocks marked with one of those languages."""
    return [body for lang, body in re.findall(r"^```([^\n]*)\n(.*?)^```", text, re.M | re.S)
            if info is None or lang.strip() in info]


# ---------------------------------------------------------------- docs/cli.md

@pytest.fixture(scope="session")
def documented_commands():
    return set(re.findall(r"^## (syncdb\b.*?)\s*$", (DOCS / "cli.md").read_text(encoding="utf-8"), re.M))


@pytest.mark.parametrize("command", list(command_paths()))
def test_commands_are_documented(documented_commands, command):
    assert command in documented_commands, f"'{command}' has no '## {command}' in docs/cli.md: run `make docs`"


def test_documented_commands_exist(documented_commands):
    assert documented_commands <= set(command_paths()), "docs/cli.md names a removed command: run `make docs`"


COGGED = sorted(p.name for p in DOCS.glob("*.md") if "[[[cog" in p.read_text(encoding="utf-8"))


def test_cli_reference_is_generated():
    assert "cli.md" in COGGED


@pytest.mark.parametrize("page", COGGED)
def test_generated_docs_are_current(page, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    status = Cog().main(["cog", "--check", "--diff", "--check-fail-msg=run `make docs`", f"docs/{page}"])
    assert status == 0, f"docs/{page} is stale: run `make docs`\n{capsys.readouterr().out}"


# ---------------------------------------------------------------- docs/schemas.md

@pytest.fixture(scope="session")
def schemas_md():
    return (DOCS / "schemas.md").read_text(encoding="utf-8")


KEYWORD_SECTIONS = {
    "Domain keywords": schema.DOMAIN_KEYWORDS,
    "Table keywords": schema.TABLE_KEYWORDS,
    "Column keywords": schema.COLUMN_KEYWORDS,
    "Code table keywords": schema.CODE_TABLE_KEYWORDS,
}


@pytest.mark.parametrize("heading,keyword", [
    (heading, keyword) for heading, keywords in KEYWORD_SECTIONS.items() for keyword in keywords
])
def test_schema_keywords_are_documented(schemas_md, heading, keyword):
    rows = table_rows(section(schemas_md, heading))
    assert f"`{keyword}`" in schemas_md
    assert keyword in rows, f"`{keyword}` is not explained under '{heading}' in docs/schemas.md"
    assert rows[keyword].strip(" |"), f"`{keyword}` has an empty explanation under '{heading}'"


@pytest.mark.parametrize("heading", list(KEYWORD_SECTIONS))
def test_documented_schema_keywords_exist(schemas_md, heading):
    unknown = set(table_rows(section(schemas_md, heading))) - set(KEYWORD_SECTIONS[heading])
    assert not unknown, f"docs/schemas.md explains keywords the loader does not know: {unknown}"


@pytest.mark.parametrize("type_name", list(schema.TYPES))
def test_types_are_documented(schemas_md, type_name):
    rows = table_rows(section(schemas_md, "Types"))
    assert f"`{type_name}`" in schemas_md
    assert type_name in rows, f"type `{type_name}` is not in the table under 'Types'"
    assert schema.TYPES[type_name] in rows[type_name], f"type `{type_name}`: say it is stored as {schema.TYPES[type_name]}"


@pytest.mark.parametrize("validator", schema.VALIDATORS)
def test_validators_are_documented(schemas_md, validator):
    rows = table_rows(section(schemas_md, "Validators"))
    assert f"`{validator}`" in schemas_md
    assert validator in rows and rows[validator].strip(" |"), f"validator `{validator}` is not explained"


def test_documented_validators_exist(schemas_md):
    assert set(table_rows(section(schemas_md, "Validators"))) <= set(validate.VALIDATORS)


@pytest.mark.parametrize("policy", schema.POLICIES)
def test_policies_are_documented(schemas_md, policy):
    rows = table_rows(section(schemas_md, "Conflict policies"))
    assert f"`{policy}`" in schemas_md
    assert policy in rows and rows[policy].strip(" |"), f"policy `{policy}` is not explained"


@pytest.mark.parametrize("name", list(codes.NATIONAL))
def test_national_code_tables_are_documented(schemas_md, name):
    rows = table_rows(section(schemas_md, "National code tables"))
    assert f"`{name}`" in schemas_md
    assert name in rows, f"national code table `{name}` is not under 'National code tables'"
    standard = validate.STANDARDS.get(name)
    if standard:
        assert standard in rows[name], f"`{name}`: name its standard, {standard}"


def test_schema_example_is_complete_and_loads(schemas_md, tmp_path):
    """The example under 'A complete small example' is a working domain using every keyword."""
    (example,) = code_blocks(section(schemas_md, "A complete small example"))
    doc = tomllib.loads(example)
    assert set(doc) == set(schema.DOMAIN_KEYWORDS)
    tables = list(doc["tables"].values())
    assert set().union(*(t.keys() for t in tables)) == set(schema.TABLE_KEYWORDS)
    columns = [c for t in tables for c in t["columns"].values()]
    assert set().union(*(c.keys() for c in columns)) == set(schema.COLUMN_KEYWORDS)
    assert {c.get("type", "text") for c in columns} == set(schema.TYPES)
    assert {c["validator"] for c in columns if "validator" in c} == set(schema.VALIDATORS)
    path = tmp_path / "yanglao.toml"
    path.write_text(example, encoding="utf-8")
    domain = schema.load_domain(path)
    assert domain.tables


def test_adding_a_domain_needs_no_code():
    """docs/schemas.md says liudong was added without touching syncdb/: keep it true.

    The sample generator (sample*.py) is exempt: it is content for the shipped domains, like their
    schema files, and the engine never needs it.
    """
    named = [p.name for p in (ROOT / "syncdb").glob("*.py")
             if not p.name.startswith("sample") and "liudong" in p.read_text(encoding="utf-8")]
    assert not named, f"syncdb/{named[0]} names the liudong domain; a domain must be a schema file only"


# ---------------------------------------------------------------- README.md and docs/index.md

@pytest.fixture(scope="session")
def readme():
    return README.read_text(encoding="utf-8")


def test_readme_starts_with_make_demo_and_make_test(readme):
    first = code_blocks(readme)[0]
    lines = [line.split("#")[0].strip() for line in first.splitlines()]
    assert "make demo" in lines and "make test" in lines


SHELL = ("sh", "bat", "console")
# The command itself: `syncdb`, .venv/bin/syncdb, or C:\…\Scripts\syncdb.exe, not a folder named syncdb.
SYNCDB = re.compile(r"^syncdb$|/bin/syncdb$|\\syncdb\.exe$")


def _invocations(text):
    """(line, command, command path, options) for every syncdb command in the shell blocks of a page."""
    for block in code_blocks(text, info=SHELL):
        for line in block.splitlines():
            if line.startswith("$ "):
                line = line[2:]
            words = line.split()
            for i, word in enumerate(words):
                if not SYNCDB.search(word):
                    continue
                rest = []
                for w in words[i + 1:]:
                    if w[0] in ">|&;" or w.startswith("2>"):
                        break
                    rest.append(w)
                command, path = cli, ["syncdb"]
                while rest and isinstance(command, click.Group) and rest[0] in command.commands:
                    command = command.commands[rest.pop(0)]
                    path.append(command.name)
                options = [w.split("=")[0] for w in rest if w.startswith("-")]
                yield line, command, " ".join(path), options
                break  # one command a line; later words are its arguments


@pytest.mark.parametrize("page", ["README.md", "docs/schemas.md", "docs/merge.md"])
def test_examples_use_real_commands_and_options(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    seen = 0
    for line, command, path, options in _invocations(text):
        seen += 1
        assert path != "syncdb" and not isinstance(command, click.Group), f"{page}: no such command in: {line}"
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        unknown = [o for o in options if o not in known]
        assert not unknown, f"{page}: `{path}` has no option {unknown[0]}, in: {line}"
    assert seen, f"{page} shows no syncdb command in a {'/'.join(SHELL)} code block"


def test_docs_index_lists_every_page():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        if page.name != "index.md":
            assert f"]({page.name})" in index, f"docs/index.md does not link {page.name}"


# ---------------------------------------------------------------- links

# Pages other people are writing alongside these docs; a link to one is
# skipped, not failed, until the page lands.
PROMISED = {"docs/bundle-format.md", "bench/README.md"}
PAGES = ["README.md", *(f"docs/{p.name}" for p in sorted(DOCS.glob("*.md")))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def prose(text: str) -> str:
    """A page without its code blocks and comments (cog's code lives in comments)."""
    return re.sub(r"^```.*?^```|<!--.*?-->", "", text, flags=re.M | re.S)


def anchors(page: Path) -> set[str]:
    text = prose(page.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"^#+ (.*?)\s*$", text, re.M)}


def links(page: str):
    text = prose((ROOT / page).read_text(encoding="utf-8"))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target):
            yield page, target


@pytest.mark.parametrize("page,target", sorted({link for page in PAGES for link in links(page)}))
def test_links_resolve(page, target):
    path, _, anchor = target.partition("#")
    file = (ROOT / page).parent / path if path else ROOT / page
    name = file.resolve().relative_to(ROOT).as_posix()
    if not file.exists() and name in PROMISED:
        pytest.skip(f"{name} is not written yet")
    assert file.exists(), f"{page} links to {target}, which does not exist"
    if anchor and file.suffix == ".md":
        assert anchor in anchors(file), f"{page} links to {target}: {name} has no such heading"


def _hookspecs():
    from syncdb import hookspecs

    return [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "syncdb_spec")]


@pytest.mark.parametrize("hook", _hookspecs())
def test_plugin_hooks_are_documented(hook):
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert f"### `{hook}(" in text, f"hook {hook} has no section in docs/plugins.md"


def test_every_hook_is_found():
    assert {"resolve_conflict", "conflict_policies"} <= set(_hookspecs())


@pytest.mark.parametrize("policy", schema.POLICIES)
def test_policies_are_explained_in_merge_md(policy):
    assert f"`{policy}`" in (ROOT / "docs" / "merge.md").read_text(encoding="utf-8")
