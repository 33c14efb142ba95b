"""Cross-domain checks (issue 13): the built-in checks on the sample street, the case workflow across
merges, incremental runs, sealing at rest, a check added as one plugin file, and the CLI."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import SYNCDB
from syncdb import audit, checks, community, merge, migrations, office, sample_planted, workdir
from syncdb.checks import Check, Finding
from syncdb.crypto import Secret
from syncdb.hookspecs import hookimpl
from syncdb.masks import mask
from syncdb.plugins import registered
from syncdb.sample import generate
from syncdb.sample_people import TODAY
from syncdb.store import open_store

CODES = ["441900003001", "441900003002", "441900003003"]


class Street:
    """A street office and sample communities (syncdb.sample, as the demo builds them), merged once."""

    def __init__(self, root: Path, domains, key_file: Path, codes=CODES, residents=600):
        self.root, self.domains, self.codes = root, domains, codes
        self.secret = Secret(key_file_bytes=key_file.read_bytes())
        self.store = root / "office"
        migrations.init(self.store, self.secret, domains=domains)
        # The sample's records are as of its own today; the checks count from the same day.
        (self.store / "checks.toml").write_text(f"today = {TODAY.isoformat()}\n", encoding="utf-8")
        for n, code in enumerate(codes, start=1):
            folder = self.folder(code)
            generate(folder, code, residents, seed=n, domains=domains)
            community.init(folder, code, office.public_key_path(self.store), domains, self.secret)
            office.enroll(self.store, code, folder / f"{code}.pub.json")
        self.summary = self.push_and_merge()

    def folder(self, code: str) -> Path:
        return self.root / "communities" / code

    def push_and_merge(self, *codes) -> merge.Summary:
        for code in codes or self.codes:
            community.export(self.folder(code), self.domains, self.secret)
        outboxes = [p for code in self.codes for p in sorted((self.folder(code) / ".syncdb").rglob("*.bundle"))]
        return merge.merge(self.store, outboxes, self.secret, self.domains)

    def sql(self, code: str, domain: str, statement: str, params=()):
        conn = workdir.connect(workdir.db_path(self.folder(code), domain))
        try:
            return conn.execute(statement, params).fetchall()
        finally:
            conn.close()

    def opened(self, write=False):
        return open_store(self.store, self.secret, self.domains, write=write)

    def planted(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for code in self.codes:
            for name, lines in sample_planted.report(self.folder(code)).items():
                found.setdefault(name, set()).update(line.split(":")[0].removeprefix("house ") for line in lines)
        return found

    def cases(self, states=("open", "confirmed")) -> list[dict]:
        with self.opened() as st:
            return checks.list_cases(st, states=states, masked=False)


@pytest.fixture(scope="module")
def street(tmp_path_factory, domains):
    root = tmp_path_factory.mktemp("street")
    (root / "keyfile").write_bytes(b"s" * 32)
    return Street(root, domains, root / "keyfile")


@pytest.fixture
def own_street(tmp_path, domains):
    """A street of one community of its own, for a test that changes records."""
    (tmp_path / "keyfile").write_bytes(b"t" * 32)
    return Street(tmp_path, domains, tmp_path / "keyfile", codes=CODES[:1], residents=500)


def env_for(street: Street, **extra) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("SYNCDB_PASSPHRASE", "SYNCDB_SCHEMAS")}
    env["SYNCDB_KEY_FILE"] = str(street.root / "keyfile")
    env.update(extra)
    return env


def shown(item: dict) -> str:
    return mask(item["subject"]) if item["subject_kind"] == "person" else item["subject"]


# ---------------------------------------------------------------- the sample street

def test_every_planted_case_is_found_and_nothing_else(street):
    planted = street.planted()
    assert all(planted[name] for name in ("deceased_paid", "permit_expired", "rental_overfull"))
    found: dict[str, set[str]] = {}
    for item in street.cases():
        found.setdefault(item["check"], set()).add(shown(item))
    assert found == planted
    assert f"checks: {len(checks.registered())} run" in "\n".join(street.summary.lines())


def test_a_finding_says_what_is_wrong_with_its_figures_and_records(street):
    (case,) = [c for c in street.cases() if c["check"] == "deceased_paid"][:1]
    assert case["message"].startswith("deceased on ") and "month(s) since the death" in case["message"]
    figures = case["figures"]
    assert figures["months"] > 0 and figures["amount"] > 0 and figures["paid"][0]["what"] in ("高龄津贴", "残疾人补贴")
    assert {r["table"] for r in case["records"]} == {"huji.persons", "minzheng.benefits"}
    assert case["community"] in CODES


def test_a_full_run_again_changes_nothing(street):
    with street.opened(write=True) as st:
        report = checks.run(st, everything=True)
    assert all(t.opened == t.reopened == t.fixed == 0 for t in report.tallies.values())
    assert report.looked == {c.name: None for c in checks.registered()}


def test_a_case_s_records_are_found_by_the_case_not_by_reading_every_case_s(own_street):
    """Each time a check finds a case its records are written again (cases._case_for): through an index on
    the case, where reading the whole of case_records made a run's cost grow with the square of the
    cases. A store made before the index gets it at its next run."""
    plan = "EXPLAIN QUERY PLAN DELETE FROM case_records WHERE case_id = ?"
    with own_street.opened(write=True) as st:
        assert "case_records_by_case" in str(st.conn.execute(plan, (1,)).fetchall())
        st.conn.execute("DROP INDEX case_records_by_case")  # as a store of an earlier release has it
    with own_street.opened() as st:
        assert "SCAN case_records" in str(st.conn.execute(plan, (1,)).fetchall())
    with own_street.opened(write=True) as st:
        checks.run(st)
    with own_street.opened() as st:
        found = str(st.conn.execute(plan, (1,)).fetchall())
        assert "case_records_by_case" in found and "SCAN" not in found, found


def test_no_file_of_the_office_holds_a_finding_in_plaintext(street):
    cases = street.cases()
    # The ID numbers of every person a finding names (a house code is no secret: the schema keeps it plain).
    secret_words = {c["subject"] for c in cases if c["subject_kind"] == "person"}
    secret_words |= {str(r["key"][0]) for c in cases for r in c["records"]
                     if r["table"] not in ("fangwu.houses", "huji.households", "minzheng.assistance")}  # 户号: plain
    assert len(secret_words) > 20
    for path in street.store.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            leaked = [w for w in secret_words if w.encode() in raw]
            assert leaked == [], f"{path} holds {len(leaked)} ID number(s) in plaintext"
    conn = sqlite3.connect(street.store / "store.db")
    try:
        for (subject,) in conn.execute("SELECT subject FROM cases"):
            assert len(subject) == 16 and subject.decode("latin-1") not in secret_words
    finally:
        conn.close()


def test_masked_for_a_masked_role_decrypted_for_the_others(street):
    with street.opened() as st:
        case = next(c for c in checks.list_cases(st, "permit_expired", masked=False))
        plain = checks.show_case(st, case["id"], masked=False)
        hidden = checks.show_case(st, case["id"], masked=True)
        per_community = checks.case_counts(st)
    assert plain["subject"] == case["subject"] and len(plain["subject"]) == 18
    assert hidden["subject"] == mask(case["subject"]) and hidden["records"][0]["key"] == [mask(case["subject"])]
    assert sum(n for states in per_community["permit_expired"].values() for n in states.values()) == \
        len(street.planted()["permit_expired"])


# ---------------------------------------------------------------- the case workflow across merges

def test_dismissed_stays_dismissed_fixed_closes_by_itself_and_the_ledger_says_who(own_street):
    street, code = own_street, CODES[0]
    by_check = {}
    for item in street.cases():
        by_check.setdefault(item["check"], []).append(item)
    paid, lapsed = by_check["deceased_paid"][0], by_check["permit_expired"][0]
    with street.opened(write=True) as st:
        checks.cases.decide(st, paid["id"], "dismissed", by="王芳", reason="paid back on 2026-05-01")
        checks.cases.decide(st, lapsed["id"], "confirmed", by="李雷")
    # A night where the community touches both records without putting anything right: still as they were.
    street.sql(code, "minzheng", "UPDATE benefits SET start_date = start_date WHERE id_number = ?", (paid["subject"],))
    street.sql(code, "liudong", "UPDATE migrants SET phone = '13800000000' WHERE id_number = ?", (lapsed["subject"],))
    street.push_and_merge()
    states = {c["id"]: c["state"] for c in street.cases(states=tuple(checks.cases.STATES))}
    assert states[paid["id"]] == "dismissed" and states[lapsed["id"]] == "confirmed"
    # The migrant renews the permit: the case closes by itself. The benefit is raised: other data, a new case.
    street.sql(code, "liudong", "UPDATE migrants SET permit_issued = ?, permit_endorsed = NULL, permit_expires = ? "
               "WHERE id_number = ?", (TODAY.isoformat(), TODAY.replace(year=TODAY.year + 3).isoformat(),
                                       lapsed["subject"]))
    street.sql(code, "minzheng", "UPDATE benefits SET monthly_amount = monthly_amount + 10 WHERE id_number = ?",
               (paid["subject"],))
    summary = street.push_and_merge()
    after = {c["id"]: c for c in street.cases(states=tuple(checks.cases.STATES))}
    assert after[lapsed["id"]]["state"] == "fixed" and after[lapsed["id"]]["changed_by"] == "syncdb"
    assert after[paid["id"]]["state"] == "dismissed" and after[paid["id"]]["reason"] == "paid back on 2026-05-01"
    new = [c for c in after.values() if c["subject"] == paid["subject"] and c["id"] != paid["id"]]
    assert [c["state"] for c in new] == ["open"]
    assert f"checks: {len(checks.registered())} run, 1 case(s) opened, 1 closed as fixed" in summary.lines()
    with street.opened() as st:
        audit.verify(st)
        entries = [e for (body,) in st.conn.execute("SELECT body FROM ledger WHERE bundle = 'checks'")
                   for e in audit.entries(body)]
    moves = [(e["detail"]["case"], e["detail"]["state"], e["detail"]["by"]) for e in entries]
    assert (paid["id"], "dismissed", "王芳") in moves and (lapsed["id"], "confirmed", "李雷") in moves
    assert (lapsed["id"], "fixed", "syncdb") in moves
    sealed_reason = next(e["detail"]["reason"] for e in entries if e["detail"]["state"] == "dismissed")
    assert "paid back" not in sealed_reason and bytes.fromhex(sealed_reason)


def test_a_merge_re_checks_only_what_it_touched(own_street):
    street, code = own_street, CODES[0]
    case = next(c for c in street.cases() if c["check"] == "rental_overfull")
    house = case["subject"]
    street.sql(code, "fangwu", "UPDATE houses SET capacity = 99 WHERE house_code = ?", (house,))
    community.export(street.folder(code), street.domains, street.secret)
    with street.opened(write=True) as st:
        point = st.change_point()
    street.push_and_merge()
    with street.opened(write=True) as st:
        assert set(st.changed_since(point)) >= {"fangwu.houses"}
        report = checks.run(st)  # nothing changed since the merge's own run
    assert report.looked == {"deceased_paid": 0, "permit_expired": 0, "rental_overfull": 0} or \
        all(v in (0, None) for v in report.looked.values())
    assert next(c for c in street.cases(states=("fixed",)) if c["id"] == case["id"])


def test_a_person_moving_out_of_an_overfull_house_closes_its_case(own_street):
    street, code = own_street, CODES[0]
    case = next(c for c in street.cases() if c["check"] == "rental_overfull")
    living = [(r["table"], r["key"][0]) for r in case["records"] if r["table"] != "fangwu.houses"]
    # The people's records change, the house's does not: its case is found through the records it was built on.
    for table, id_number in living[: case["figures"]["living"] - case["figures"]["capacity"]]:
        if table == "liudong.migrants":
            street.sql(code, "liudong", "UPDATE migrants SET leaving_date = ? WHERE id_number = ?",
                       (TODAY.isoformat(), id_number))
        else:  # registered at another address of the street now
            street.sql(code, "huji", "UPDATE persons SET address_code = NULL WHERE id_number = ?", (id_number,))
    street.push_and_merge()
    closed = {c["id"]: c["state"] for c in street.cases(states=("fixed",))}
    assert closed.get(case["id"]) == "fixed"


# ---------------------------------------------------------------- checks as plugins

class Exploding:
    @hookimpl
    def cross_checks(self):
        def find(records, subjects, settings):
            raise KeyError(next(iter(records.rows("huji.persons")))["name"])  # a bug quoting a resident's name
        return [Check("exploding", "always fails", ("huji.persons",), "person", find, lambda t, r: [r["id_number"]])]


def test_a_check_that_raises_never_fails_the_merge(own_street):
    street, code = own_street, CODES[0]
    (name,) = street.sql(code, "huji", "SELECT name FROM persons ORDER BY id_number LIMIT 1")[0]
    street.sql(code, "huji", "UPDATE persons SET phone = '13900000000' WHERE name = ?", (name,))
    with registered(Exploding()):
        summary = street.push_and_merge()
    lines = "\n".join(summary.lines())
    assert "changes: 1 applied" in lines
    assert "check exploding failed and was left as it was: KeyError at test_checks.py:" in lines
    assert name not in lines


ONE_FILE_CHECK = '''
"""An office's own check: a resident born before a date it sets may be a death never registered."""
from syncdb.checks import Check, Finding
from syncdb.hookspecs import hookimpl


def find(records, subjects, settings):
    persons = records.rows("huji.persons") if subjects is None else records.where("huji.persons", "id_number", subjects)
    for p in persons:
        if p["status"] == "normal" and p["birth_date"] and p["birth_date"] < settings["born_before"]:
            yield Finding(p["id_number"], "出生日期早于设定日期，请核实是否已死亡", [p], {"birth_date": p["birth_date"]})


@hookimpl
def cross_checks():
    return [Check("too_old", "年龄异常", ("huji.persons",), "person", find,
                  lambda table, record: [record["id_number"]], severity="low",
                  settings={"born_before": "1906-01-01"})]
'''


def test_a_check_added_as_one_file_in_a_plugins_folder_runs(own_street, tmp_path):
    street, code = own_street, CODES[0]
    (street.store / "checks.toml").write_text('[too_old]\nborn_before = "1940-01-01"\n', encoding="utf-8")
    old = {i for (i,) in street.sql(code, "huji", "SELECT id_number FROM persons WHERE status = 'normal' "
                                                  "AND birth_date < '1940-01-01'")}
    assert old
    folder = tmp_path / "office-plugins"
    folder.mkdir()
    (folder / "too_old.py").write_text(textwrap.dedent(ONE_FILE_CHECK), encoding="utf-8")
    env = env_for(street, SYNCDB_PLUGINS=str(folder))
    ran = subprocess.run([SYNCDB, "checks", "run", str(street.store)], env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert f"checks: 1 run, {len(old)} case(s) opened" in ran.stdout
    listed = subprocess.run([SYNCDB, "checks", "list", str(street.store), "--check", "too_old", "--format", "json"],
                            env=env, capture_output=True, text=True)
    cases = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {c["subject"] for c in cases} == {mask(i) for i in old}
    assert {(c["title"], c["severity"], c["message"]) for c in cases} == {("年龄异常", "low", "出生日期早于设定日期，请核实是否已死亡")}


# ---------------------------------------------------------------- the command line

def test_the_cli_lists_shows_confirms_and_dismisses_with_clear_errors(own_street):
    street = own_street
    env, store = env_for(street), str(street.store)

    def syncdb(*args, **extra):
        return subprocess.run([SYNCDB, "checks", *args], env=dict(env, **extra), capture_output=True, text=True)

    listed = syncdb("list", store)
    assert listed.returncode == 0 and "Deceased or moved out, yet still paid" in listed.stdout
    first = int(listed.stdout.split()[0].lstrip("#"))
    show = syncdb("show", store, str(first))
    assert show.returncode == 0 and "records concerned:" in show.stdout and f"checks dismiss {store} {first}" in show.stdout
    assert syncdb("dismiss", store, str(first)).returncode == 2  # --reason is required
    done = syncdb("dismiss", store, str(first), "--reason", "already recovered", "--by", "王芳")
    assert done.returncode == 0 and "dismissed" in done.stdout and "王芳" in done.stdout
    again = syncdb("confirm", store, str(first))
    assert again.returncode == 0  # a person may confirm a dismissed case after all
    twice = syncdb("confirm", store, str(first))
    assert twice.returncode == 1 and "already confirmed" in twice.stderr
    missing = syncdb("show", store, "9999")
    assert missing.returncode == 1 and "there is no case #9999" in missing.stderr
    chinese = syncdb("list", store, "--checks", SYNCDB_LANG="zh_CN")
    assert chinese.returncode == 0 and "死亡或迁出仍在领取待遇" in chinese.stdout
    audit_ok = subprocess.run([SYNCDB, "audit", "verify", store], env=env, capture_output=True, text=True)
    assert audit_ok.returncode == 0, audit_ok.stderr


def test_office_thresholds_come_from_the_settings_file(own_street):
    street = own_street
    (street.store / "checks.toml").write_text(
        f"today = {TODAY.isoformat()}\n[permit_expired]\nno_such_setting = 1\n", encoding="utf-8")
    with street.opened(write=True) as st:
        report = checks.run(st, everything=True)
    assert [name for name, _why in report.failed] == ["permit_expired"]
    (street.store / "checks.toml").write_text(
        f"today = {TODAY.isoformat()}\n[rental_overfull]\nenabled = false\n", encoding="utf-8")
    with street.opened(write=True) as st:
        report = checks.run(st, everything=True)
    assert [name for name, _why in report.skipped] == ["rental_overfull"]
