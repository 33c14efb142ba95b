"""The plugin manager: the test guard, plugins added for a while, schemas that ask the plugins."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from syncdb import merge, plugins, schema
from syncdb.errors import SchemaError
from syncdb.hookspecs import hookimpl
from syncdb.plugins import pm, registered
from syncdb.row import Row
from syncdb.rules import Holding

A, B = "441900003001", "441900003002"

# A domain whose one column uses a policy no built-in rule knows.
PERMITS = textwrap.dedent("""\
    label = "居住证"
    version = 1

    [tables.permits]
    label = "居住证"
    key = ["permit_no"]
    owner = "community_code"

    [tables.permits.columns]
    permit_no      = { type = "text", label = "证号" }
    expires        = { type = "date", label = "有效期至", policy = "newest_permit" }
    community_code = { type = "text", label = "社区", validator = "community_code" }
""")


class NewestPermit:
    """Adds the policy ``newest_permit`` (the later expiry date wins)."""

    __name__ = "newest-permit"

    @hookimpl
    def conflict_policies(self):
        return ["newest_permit"]


def _run(code: str, env: dict) -> str:
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCDB_PLUGINS", "SYNCDB_SCHEMAS", "PYTHONPATH")}
    env.update(extra)
    return env


# --- the test guard --------------------------------------------------------------------------

def test_the_guard_keeps_installed_plugins_out_under_tests(tmp_path):
    # A real installed distribution declaring a plugin in the `syncdb` entry-point group.
    (tmp_path / "syncdb_permits.py").write_text(
        "from syncdb.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef conflict_policies():\n    return ['newest_permit']\n", encoding="utf-8")
    info = tmp_path / "syncdb_permits-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: syncdb-permits\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[syncdb]\npermits = syncdb_permits\n", encoding="utf-8")
    env = _env(PYTHONPATH=str(tmp_path))
    ask = "from syncdb import plugins; print(sorted(plugins.policies()))"

    assert "newest_permit" in _run(ask, env)  # outside the tests, it is loaded
    assert "newest_permit" not in _run("import sys; sys._called_from_test = True; " + ask, env)
    # And this process runs under the guard conftest.py sets.
    assert getattr(sys, "_called_from_test", False)
    assert "syncdb_permits" not in {getattr(p, "__name__", "") for p in pm.get_plugins()}


def test_the_built_in_rules_and_the_shipped_folder_are_loaded():
    names = {name for name, _ in plugins.manager().list_name_plugin()}
    assert {"syncdb.rules", "transfer"} <= names
    assert plugins.manager() is pm


# --- a plugin added for a while --------------------------------------------------------------

class NewestClaimHolds:
    """Two communities registering one resident: the newer registration holds it, no person asked."""

    __name__ = "newest-claim-holds"

    def __init__(self):
        self.rows = []

    @hookimpl
    def record_holder(self, table, claims, row):
        self.rows.append((row, table, dict(claims)))
        newest = max(claims, key=lambda code: claims[code].version)
        return Holding(newest, duplicate=False, rule="plugin:newest-claim")


def _registered_in_both(a, b):
    """The same resident entered as `normal` at two communities (their n-th residents share an ID)."""
    a.add_persons(1)
    b.add_persons(1)
    return a.export().path, b.export().path


def test_a_registered_plugin_decides_a_real_merge_and_is_gone_after(make_community, office_store, syncdb_secret,
                                                                    domains):
    a, b = make_community(A), make_community(B)
    rule = NewestClaimHolds()
    first = _registered_in_both(a, b)
    merge.merge(office_store, [first[0]], syncdb_secret, domains)

    with registered(rule):
        assert pm.has_plugin("newest-claim-holds")
        summary = merge.merge(office_store, [first[1]], syncdb_secret, domains)

    assert summary.applied == 1 and summary.opened == 0  # the plugin decided before the transfer rule
    assert rule.rows, "the merge never asked the registered plugin"
    row, table, claims = rule.rows[0]
    assert isinstance(row, Row) and row.table is table and table.qualified == "huji.persons"
    assert isinstance(row.key, bytes) and row.exists and row.office_code
    assert set(claims) == {A, B} and row.claims() == claims
    assert {c.origin for c in row.candidates("status")} == {A, B}
    assert row.winner("status").value == "normal"

    assert not pm.has_plugin("newest-claim-holds")
    calls = len(rule.rows)
    second = _registered_in_both(a, b)
    summary = merge.merge(office_store, list(second), syncdb_secret, domains)
    assert len(rule.rows) == calls
    assert summary.opened >= 1  # the shipped transfer rule again: a duplicate registration for a person


def test_a_plugin_is_unregistered_even_when_the_block_fails():
    with pytest.raises(RuntimeError):
        with registered(NewestPermit()):
            raise RuntimeError("a failing test")
    assert not pm.has_plugin("newest-permit")


def test_a_folder_of_plugin_files_is_registered_for_a_while(tmp_path):
    folder = tmp_path / "my-plugins"
    folder.mkdir()
    (folder / "permits.py").write_text(
        "from syncdb.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef conflict_policies():\n    return ['newest_permit']\n", encoding="utf-8")
    with registered(folder=folder):
        assert pm.has_plugin("permits") and "newest_permit" in plugins.policies()
    assert not pm.has_plugin("permits") and "newest_permit" not in plugins.policies()


def test_a_broken_plugin_folder_leaves_the_manager_as_it_was(tmp_path):
    folder = tmp_path / "my-plugins"
    folder.mkdir()
    (folder / "a_good.py").write_text("from syncdb.hookspecs import hookimpl\n", encoding="utf-8")
    (folder / "b_broken.py").write_text("import no_such_module_here\n", encoding="utf-8")
    before = pm.list_name_plugin()
    with pytest.raises(ImportError):
        plugins.load_folder(folder)
    assert pm.list_name_plugin() == before


# --- schemas ask the plugins for their policies ----------------------------------------------

def test_load_domains_as_a_library_accepts_a_policy_only_a_plugin_provides(tmp_path):
    (tmp_path / "permits.toml").write_text(PERMITS, encoding="utf-8")
    with pytest.raises(SchemaError, match="unknown conflict policy 'newest_permit'"):
        schema.load_domains(tmp_path)

    with registered(NewestPermit()):
        domains = schema.load_domains(tmp_path)  # no extra_policies: the schema asks the plugins
        assert domains["permits"].tables["permits"].columns["expires"].policy == "newest_permit"
        assert schema.load_domain(tmp_path / "permits.toml").tables["permits"].columns["expires"].policy \
            == "newest_permit"
        # A policy nobody provides is still refused, naming the file, table and column.
        (tmp_path / "permits.toml").write_text(PERMITS.replace("newest_permit", "oldest_permit"), encoding="utf-8")
        with pytest.raises(SchemaError, match="unknown conflict policy 'oldest_permit'") as refused:
            schema.load_domains(tmp_path)
        assert "permits.toml" in str(refused.value) and "expires" in str(refused.value)


def test_the_cli_and_the_library_load_the_same_schemas(tmp_path):
    from syncdb import cli

    (tmp_path / "permits.toml").write_text(PERMITS, encoding="utf-8")
    with registered(NewestPermit()):
        assert cli.load_domains(str(tmp_path)).keys() == schema.load_domains(tmp_path).keys()


def test_a_plugin_file_may_import_syncdb_schema_and_row(tmp_path):
    """Plugin files are loaded when the plugins are first asked, never while syncdb.schema is half imported."""
    folder = tmp_path / "my-plugins"
    folder.mkdir()
    (folder / "typed.py").write_text(textwrap.dedent("""\
        from syncdb.hookspecs import hookimpl
        from syncdb.row import Row
        from syncdb.schema import Table

        @hookimpl
        def conflict_policies():
            return ["typed_policy"]
    """), encoding="utf-8")
    out = _run("import syncdb.schema as s; from syncdb import plugins; s.load_domains(); "
               "print(sorted(plugins.policies()))", _env(SYNCDB_PLUGINS=str(folder)))
    assert "typed_policy" in out


# --- the worked example of docs/plugins.md, in a real merge ----------------------------------

def _example_plugin() -> str:
    text = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = text.split("## A one-file plugin", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_documented_example_plugin_queues_two_mobile_numbers(tmp_path, make_community, office_store,
                                                                 syncdb_secret, syncdb_key_file):
    from click.testing import CliRunner

    from syncdb import resolve
    from syncdb.cli import cli

    folder, schemas = tmp_path / "my-plugins", tmp_path / "schemas"
    folder.mkdir()
    (folder / "prefer_mobile.py").write_text(_example_plugin(), encoding="utf-8")
    shutil.copytree(schema.DEFAULT_SCHEMAS, schemas)
    huji = (schemas / "huji.toml").read_text(encoding="utf-8")
    phone = 'validator = "phone", policy = "prefer_non_null" }'
    assert huji.count(phone) == 1
    (schemas / "huji.toml").write_text(huji.replace(phone, 'validator = "phone", policy = "prefer_mobile" }'),
                                       encoding="utf-8")
    a = make_community(A)
    a.add_persons(1)
    merge.merge(office_store, [a.export().path], syncdb_secret, a.domains)
    (id_number,) = sqlite3.connect(a.path / "huji.db").execute("SELECT id_number FROM persons").fetchone()

    with registered(folder=folder):
        domains = schema.load_domains(schemas)
        assert domains["huji"].tables["persons"].columns["phone"].policy == "prefer_mobile"
        # The office and the community change the number at once, each to another mobile.
        resolve.office_edit(office_store, syncdb_secret, domains, [
            {"table": "huji.persons", "key": {"id_number": id_number}, "cells": {"phone": "13911112222"}}])
        with sqlite3.connect(a.path / "huji.db") as conn:
            conn.execute("UPDATE persons SET phone = '13722223333' WHERE id_number = ?", (id_number,))
        summary = merge.merge(office_store, [a.export().path], syncdb_secret, domains)
    assert summary.opened == 1  # the built-in prefer_non_null would have settled it unseen

    listed = CliRunner().invoke(cli, ["conflicts", "list", str(office_store), "--format", "json"],
                                env={"SYNCDB_KEY_FILE": str(syncdb_key_file), "SYNCDB_PASSPHRASE": None})
    assert listed.exit_code == 0, listed.output
    (item,) = [json.loads(line) for line in listed.output.splitlines()]
    assert item["column"] == "phone" and item["kind"] == "two-mobiles"
    assert {c["value"] for c in item["candidates"]} == {"13911112222", "13722223333"}
