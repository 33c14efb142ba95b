"""Issue #9 item 9: a resolution's value is checked like any record's, before anything is written;
a code's meaning is taken as that code."""

import pytest
from click.testing import CliRunner

from conftest import CODES, SECRET, World, id_number, person
from syncdb import migrations
from syncdb.cli import cli
from syncdb.conflicts import list_conflicts
from syncdb.errors import SyncdbError
from syncdb.resolve import resolve_conflict

A, B = CODES[0], CODES[1]


def duplicate(tmp_path, domains):
    w = World(tmp_path, domains)
    w.register(A, person(1, A))
    w.register(B, person(1, B, name="别名"))
    queued = {c["column"]: c for c in list_conflicts(w.store, SECRET, domains)}
    return w, queued


def stored_status(w, domains):
    st = migrations.open_upgraded(w.store, SECRET, domains)
    try:
        table = st.table("huji.persons")
        return st.conn.execute("SELECT status FROM huji__persons WHERE _key = ?",
                               (st.blind_key(table, [id_number(1)]),)).fetchone()[0]
    finally:
        st.conn.close()


def test_item9_a_codes_meaning_is_taken_as_the_code(tmp_path, domains):
    w, queued = duplicate(tmp_path, domains)
    summary = resolve_conflict(w.store, SECRET, domains, queued["status"]["id"], value="迁出")
    assert summary.rejected == [] and stored_status(w, domains) == "moved_out"


@pytest.mark.parametrize("column, value, why", [("status", "走了", "unknown"), ("name", "", "required"),
                                                ("name", "   ", "required")])
def test_item9_an_invalid_value_is_refused_and_the_conflict_stays_open(tmp_path, domains, column, value, why):
    w, queued = duplicate(tmp_path, domains)
    conflict = queued[column]
    with pytest.raises(SyncdbError) as refused:
        resolve_conflict(w.store, SECRET, domains, conflict["id"], value=value)
    assert why in str(refused.value) and "nothing was changed" in str(refused.value)
    still = {c["id"] for c in list_conflicts(w.store, SECRET, domains)}
    assert conflict["id"] in still
    # And at the command line: exit 1, never "resolved".
    key_file = tmp_path / "key"
    key_file.write_bytes(SECRET.key_file_bytes)
    result = CliRunner().invoke(cli, ["conflicts", "resolve", str(w.store), str(conflict["id"]), "--value", value],
                                env={"SYNCDB_KEY_FILE": str(key_file)})
    assert result.exit_code == 1 and "resolved" not in result.output
