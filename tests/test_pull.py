"""`syncdb pull`: the office's resolutions back to the community that owns the record."""

import sqlite3

import pytest
from click.testing import CliRunner

from conftest import CODES, SECRET, OfficeServer, World, id_number, open_conflicts, person
from syncdb import merge, migrations, office, outbound, resolve
from syncdb.cli import cli
from syncdb.conflicts import list_conflicts
from syncdb.pull import pull


def local(w, code, n, column):
    conn = sqlite3.connect(w.folders[code] / "huji.db")
    try:
        return conn.execute(f"SELECT {column} FROM persons WHERE id_number = ?", (id_number(n),)).fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def settled(tmp_path, domains):
    """Resident 7 of community A: the office and A changed the name at once; the office settled it."""
    w = World(tmp_path, domains)
    a = CODES[0]
    w.register(a, person(7, a))
    w.both_rename(a, 7, "王小名", "王晓明")
    (conflict,) = list_conflicts(w.store, SECRET, domains)
    summary = resolve.resolve_conflict(w.store, SECRET, domains, conflict["id"], value="王晓名")
    assert summary.sent_back == {a: 2}  # the office's first edit went to A too
    return w, a


def test_a_resolution_reaches_the_owner_and_the_next_edit_merges_cleanly(settled, domains):
    w, a = settled
    report = pull(w.folders[a], w.domains, SECRET, inbox=str(outbound.outbound_dir(w.store, a)))
    assert report.applied == [1, 2] and report.kept == []
    assert local(w, a, 7, "name") == "王晓名"
    # What was pulled is not sent back as a change of A's own.
    assert w.push(a).path is None
    # The next local edit is based on the resolution: no conflict at the office.
    w.sql(a, "UPDATE persons SET phone = '13800138007'")
    w.push(a)
    summary = merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    assert summary.changes == 1 and summary.opened == 0 and open_conflicts(w.store) == []
    # Pulling again finds nothing new.
    again = pull(w.folders[a], w.domains, SECRET, inbox=str(outbound.outbound_dir(w.store, a)))
    # ... but that the office now holds the phone edit's bundle, which leaves the outbox.
    assert again.applied == [] and again.lines() == [
        "Nothing new from the office.", "The office holds this community's bundles up to 3: 1 removed from the outbox"]


def test_a_value_changed_here_since_the_last_push_is_kept(settled):
    w, a = settled
    w.sql(a, "UPDATE persons SET name = '王小明'")  # typed in after the last push, not yet sent
    report = pull(w.folders[a], w.domains, SECRET, inbox=str(outbound.outbound_dir(w.store, a)))
    assert report.applied == [1, 2] and any("/ name" in line for line in report.kept)
    assert local(w, a, 7, "name") == "王小明"
    assert w.push(a).path is not None  # it goes to the office at the next push


def test_pull_over_http_from_serve(settled, tmp_path):
    w, a = settled
    key_file = tmp_path / "office.key"
    key_file.write_bytes(SECRET.key_file_bytes)
    import os
    env = {k: v for k, v in os.environ.items() if k != "SYNCDB_PASSPHRASE"}
    env["SYNCDB_KEY_FILE"] = str(key_file)
    server = OfficeServer(w.store, env, tmp_path / "serve.log").start()
    try:
        result = CliRunner().invoke(cli, ["pull", str(w.folders[a]), "--from", server.url],
                                    env={"SYNCDB_KEY_FILE": str(key_file)})
        assert result.exit_code == 0, result.output
        assert "Applied 2 bundle(s) of resolutions from the office: " in result.output
        assert local(w, a, 7, "name") == "王晓名"
        # A number past any sequence is a plain 404, not a server error.
        import requests
        assert requests.get(f"{server.url}/v1/communities/{a}/outbound/99999999999999999999").status_code == 404
        assert requests.get(f"{server.url}/v1/communities/{a}/outbound/9").status_code == 404
    finally:
        server.kill()


def test_a_tampered_or_missing_resolutions_bundle_changes_nothing(settled, tmp_path):
    w, a = settled
    stick = tmp_path / "stick"
    stick.mkdir()
    resolutions = sorted(p for p in outbound.outbound_dir(w.store, a).iterdir() if "-r" in p.name)
    second = resolutions[1]
    (stick / second.name).write_bytes(second.read_bytes())
    with pytest.raises(Exception, match="resolutions 1 for .* are missing"):
        pull(w.folders[a], w.domains, SECRET, inbox=str(stick))
    first = resolutions[0]
    data = bytearray(first.read_bytes())
    data[-5] ^= 1
    (stick / first.name).write_bytes(bytes(data))
    with pytest.raises(Exception, match="refused"):
        pull(w.folders[a], w.domains, SECRET, inbox=str(stick))
    assert local(w, a, 7, "name") == "王晓明"


def test_only_the_owner_gets_it(settled):
    w, a = settled
    for code in CODES[1:]:
        assert outbound.available(w.store, code) == []


# --- from an adversarial read: each failed before the fix -------------------------------------

def _office_value(w, domains, n, column):
    st = migrations.open_upgraded(w.store, SECRET, domains)
    try:
        table = st.table("huji.persons")
        stored = st.read_row(table, st.blind_key(table, [id_number(n)]))
        return stored[column], stored["_exists"]
    finally:
        st.conn.close()


@pytest.fixture
def registered(tmp_path, domains):
    w = World(tmp_path, domains)
    a = CODES[0]
    w.register(a, person(7, a, phone="13800138000"))
    return w, a


def _pull(w, code):
    return pull(w.folders[code], w.domains, SECRET, inbox=str(outbound.outbound_dir(w.store, code)))


def test_an_office_value_the_merge_rejected_is_not_sent(registered, domains):
    w, a = registered
    summary = w.office_sets(7, phone="abc")
    assert summary.rejected and summary.sent_back == {}
    assert _pull(w, a).applied == [] and local(w, a, 7, "phone") == "13800138000"


def test_a_record_moved_to_another_community_reaches_both(registered, domains):
    w, a = registered
    b = CODES[1]
    summary = w.office_sets(7, community_code=b)
    assert summary.sent_back == {a: 1, b: 1}
    assert _pull(w, a).cells == 1 and local(w, a, 7, "community_code") == b
    assert _pull(w, b).missing  # b does not hold the record (yet): said, nothing else


def test_an_office_delete_reaches_the_owner(registered, domains):
    w, a = registered
    summary = resolve.office_edit(w.store, SECRET, domains, [
        {"table": "huji.persons", "key": {"id_number": id_number(7)}, "delete": True}])
    assert summary.sent_back == {a: 1}
    _pull(w, a)
    conn = sqlite3.connect(w.folders[a] / "huji.db")
    assert conn.execute("SELECT count(*) FROM persons").fetchone() == (0,)
    conn.close()
    assert w.push(a).path is None  # the delete is not sent back as the community's own


def test_a_value_whose_push_the_office_had_not_merged_is_not_overwritten(registered, domains):
    w, a = registered
    w.sql(a, "UPDATE persons SET phone = '13911112222'")
    w.push(a)  # on its way, not merged yet
    w.office_sets(7, phone=None)
    report = _pull(w, a)
    assert report.older == 1 and local(w, a, 7, "phone") == "13911112222"
    merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    assert _office_value(w, domains, 7, "phone")[0] == local(w, a, 7, "phone")  # no silent divergence


def test_a_crash_while_queueing_loses_nothing_and_a_copy_never_holds_an_unrecorded_bundle(
        registered, domains, monkeypatch, tmp_path):
    w, a = registered

    def cut(*args, **kwargs):
        raise KeyboardInterrupt  # the power goes while the office's resolution is being queued
    monkeypatch.setattr(outbound, "send_back", cut)
    with pytest.raises(KeyboardInterrupt):
        w.office_sets(7, address="地址一")
    monkeypatch.undo()
    assert _office_value(w, domains, 7, "address")[0] is None  # merge and queue: both or neither
    # One transaction made the edit's bundle, merged and queued it: the crash left none of it, nor a
    # file a copy of the folder could take for a bundle. The person sees the error and edits again.
    assert not list(office.inbox_dir(w.store).glob("office-*"))
    assert not [p for p in (w.store / "outbound").rglob("*") if "-r" in p.name]  # no resolutions bundle
    assert merge.merge(w.store, [], SECRET, domains).sent_back == {}
    assert w.office_sets(7, address="地址一").sent_back == {a: 1}
    # Between the commit and the final name, a copy of the folder holds nothing to apply.
    monkeypatch.setattr(outbound, "finish", lambda store_dir: None)
    w.office_sets(7, phone="13700137000")
    monkeypatch.undo()
    stick = tmp_path / "stick"
    import shutil
    shutil.copytree(outbound.outbound_dir(w.store, a), stick)
    assert pull(w.folders[a], w.domains, SECRET, inbox=str(stick)).applied == [1]
    assert outbound.available(w.store, a) == [1, 2]  # finishes the second's name
    assert _pull(w, a).applied == [2] and local(w, a, 7, "phone") == "13700137000"


# --- from a second adversarial read -----------------------------------------------------------

def test_a_value_that_lost_to_the_office_by_rule_comes_back(registered, domains):
    """lww: the office decided later than a push still on its way; the rule picks the office's value."""
    w, a = registered
    w.sql(a, "UPDATE persons SET address = '社区新址'")
    w.push(a)  # on its way
    w.office_sets(7, address="办事处址")
    summary = merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    assert summary.opened == 0 and summary.sent_back == {a: 2}
    _pull(w, a)
    assert local(w, a, 7, "address") == _office_value(w, domains, 7, "address")[0] == "办事处址"
    assert w.push(a).path is None


def test_a_kept_local_value_that_then_loses_by_rule_comes_back(registered, domains):
    """prefer_non_null: the community blanked the phone, the office set it; the office's wins."""
    w, a = registered
    w.sql(a, "UPDATE persons SET phone = NULL")  # typed, not pushed
    w.office_sets(7, phone="13911112222")
    assert _pull(w, a).kept  # not overwritten unseen
    w.push(a)
    merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    _pull(w, a)
    assert local(w, a, 7, "phone") == _office_value(w, domains, 7, "phone")[0] == "13911112222"


def test_every_community_whose_version_a_resolution_settles_gets_it(registered, domains):
    from syncdb.conflicts import list_conflicts

    w, a = registered
    b = CODES[1]
    w.insert(b, person(7, b, phone="13800138000", name="居民七"))  # b registers the same resident, another name
    w.push(b)
    merge.merge(w.store, w.bundles[-1:], SECRET, domains)
    # A duplicate registration, queued on the status and on the name (a manual column) they disagree on.
    queued = list_conflicts(w.store, SECRET, domains)
    assert sorted((c["kind"], c["column"]) for c in queued) == [
        ("duplicate-registration", "name"), ("duplicate-registration", "status")]
    (registration,) = [c for c in queued if c["column"] == "status"]
    summary = resolve.resolve_conflict(w.store, SECRET, domains, registration["id"], keep=a)
    assert set(summary.sent_back) == {a, b}
    _pull(w, a)
    assert local(w, a, 7, "name") == _office_value(w, domains, 7, "name")[0]
    # b learns that its name was not kept, never a's name (issue #8 item 8: tests/test_outbound_privacy.py)
    assert any("/ name" in line for line in _pull(w, b).superseded) and local(w, b, 7, "name") == "居民七"


def test_a_merge_names_resolutions_a_stopped_run_left_pending(registered, domains, monkeypatch):
    w, a = registered
    monkeypatch.setattr(outbound, "finish", lambda store_dir: None)  # killed between commit and naming
    w.office_sets(7, address="办事处址")
    monkeypatch.undo()
    assert [p.name for p in outbound.outbound_dir(w.store, a).iterdir()
            if not p.name.startswith("office-ack")] == [".office-r00000001.bundle.pending"]
    merge.merge(w.store, [], SECRET, domains)  # a plain merge, nothing new to apply
    assert sorted(p.name for p in outbound.outbound_dir(w.store, a).iterdir()) == [
        "office-ack.bundle", "office-r00000001.bundle"]
