"""`syncdb conflicts show` and `syncdb conflicts review`, as the data administrator uses them."""

import pytest
from click.testing import CliRunner

from conftest import CODES, SECRET, id_number, person, stored_values
from syncdb import migrations
from syncdb.cli import cli


@pytest.fixture
def queued(world, tmp_path):
    """Two residents whose names the office and the community changed at once: two open conflicts."""
    w = world
    a = CODES[0]
    w.register(a, person(7, a), person(8, a))
    assert [w.both_rename(a, n, f"办公室{n}", f"社区{n}").opened for n in (7, 8)] == [1, 1]
    key_file = tmp_path / "key"
    key_file.write_bytes(SECRET.key_file_bytes)
    return w, {"SYNCDB_KEY_FILE": str(key_file)}


def run(env, *args, input=None):
    return CliRunner().invoke(cli, list(args), env=env, input=input)


def names(w, domains):
    st = migrations.open_upgraded(w.store, SECRET, domains)
    try:
        return sorted(name for _key, name in stored_values(st, "huji.persons", "name"))
    finally:
        st.conn.close()


def test_show_gives_every_candidate_the_record_and_the_commands(queued):
    w, env = queued
    shown = run(env, "conflicts", "show", str(w.store), "1")
    assert shown.exit_code == 0, shown.output
    assert "'办公室7'" in shown.output and "'社区7'" in shown.output
    assert "姓名 (name)" in shown.output and "公民身份号码 (id_number): " + id_number(7) in shown.output
    assert f"syncdb conflicts resolve {w.store} 1 --keep office" in shown.output
    missing = run(env, "conflicts", "show", str(w.store), "99")
    assert missing.exit_code == 1 and "there is no conflict #99" in missing.output


def test_review_keeps_a_candidate_types_a_value_or_skips(queued, domains):
    w, env = queued
    first = run(env, "conflicts", "review", str(w.store), input="2\ns\n")
    assert first.exit_code == 0, first.output
    assert "1 settled, 1 skipped; 1 still open" in first.output
    second = run(env, "conflicts", "review", str(w.store), input="v\n王芳\n")
    assert second.exit_code == 0, second.output
    assert "1 settled, 0 skipped; 0 still open" in second.output
    assert names(w, domains) == ["王芳", "社区7"]
    assert run(env, "conflicts", "review", str(w.store)).output.strip() == "No open conflicts."


def test_review_goes_on_when_one_answer_cannot_be_kept(queued, domains):
    """A value the merge refuses (here: over the office's max_value) is reported, and review goes on."""
    w, env = queued
    from syncdb import limits

    too_long = "名" * (limits.DEFAULT.max_value + 1)
    result = run(env, "conflicts", "review", str(w.store), input=f"v\n{too_long}\n2\n")
    assert result.exit_code == 0, result.output
    assert "not settled: the merge refused the resolution of conflict #1" in result.output
    assert "1 settled, 1 skipped; 1 still open" in result.output
