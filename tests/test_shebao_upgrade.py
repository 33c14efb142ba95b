"""社保 version 2 (issue 11): a community and a store made under version 1's codes upgrade with nothing lost.

Version 1 coded 险种 with codes of its own (pension_employee …) and kept 退休 among the payment
statuses; version 2 codes 险种 as AAE140 and has the columns retired and retired_date. The schema's
[codes.NAME.was] tables map the old codes, `syncdb community upgrade` rewrites them in the working
database, and the next push carries them to the office: 险种 is part of the key, so each enrolment
moves to its new key as one `rekey`. The office's own upgrade changes no record meanwhile.
(tests/test_schema_upgrade.py covers the rest of the upgrade; tests/schemas_previous/ holds version 1.)
"""

import sqlite3
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from stdnum.cn import ric

from conftest import SECRET, World, snapshot
from syncdb import export, merge, office, projection, status
from syncdb.cli import cli
from syncdb.schema import Was, load_domains
from syncdb.store import open_store
from syncdb.workdir_upgrade import upgrade
from test_schema_upgrade import PREVIOUS, columns_of, previous, rows_of  # noqa: F401 (previous: a fixture)

A = "441900003001"


def id_number(birth: str, serial: str) -> str:
    body = f"441900{birth}{serial}"
    return body + ric.calc_check_digit(body + "0")


HEAD = id_number("19700304", "011")  # male: the 17th digit is odd
WIFE = id_number("19720506", "022")


OLD_ENROLMENTS = [  # (id_number, insurance_type, status, end_date, employer) as version 1 coded them
    (HEAD, "pension_employee", "retired", None, "东莞市宏图电子厂"),
    (HEAD, "medical_employee", "retired", None, "东莞市宏图电子厂"),
    (HEAD, "unemployment", "ended", "2030-06-30", "东莞市宏图电子厂"),
    (WIFE, "pension_resident", "active", None, None),
    (WIFE, "medical_resident", "suspended", None, None),
    (WIFE, "maternity", "ended", "2001-12-31", None),
]
# What version 2 holds for each: (insurance_type, status, retired).
NEW_CODES = {"pension_employee": "110", "medical_employee": "310", "unemployment": "210",
             "pension_resident": "170", "medical_resident": "390", "maternity": "510"}
NEW_STATUS = {"retired": ("1", "1"), "ended": ("3", None), "active": ("1", None), "suspended": ("2", None)}


@pytest.fixture
def insured(tmp_path, previous):
    """A community keeping 户籍 and 社保 and its office, synced under the previous schemas, with
    enrolments under version 1's codes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYNCDB_SCHEMAS", str(tmp_path / "previous-schemas"))
        world = World(tmp_path, previous, codes=[A], community_domains=("huji", "shebao"))
    world.sql(A, "INSERT INTO households VALUES ('H001', 'family', ?, '东莞市南城街道宏图路8号', ?)", (HEAD, A))
    for number, name, sex, birth, relationship in [(HEAD, "陈志强", "1", "1970-03-04", "02"),
                                                   (WIFE, "林美华", "2", "1972-05-06", "12")]:
        world.insert(A, {"id_number": number, "name": name, "sex": sex, "ethnicity": "01", "birth_date": birth,
                         "household_no": "H001", "relationship": relationship, "community_code": A,
                         "status": "normal"})
    conn = world.connect(A, "shebao.db")
    conn.executemany("INSERT INTO enrolments (id_number, insurance_type, status, start_date, end_date, employer, "
                     "monthly_base, community_code) VALUES (?, ?, ?, '1995-07-01', ?, ?, 5200.0, ?)",
                     [(*row, A) for row in OLD_ENROLMENTS])
    conn.close()
    world.push(A)
    summary = merge.merge(world.store, world.bundles, SECRET, previous)
    assert summary.applied == 1 and not summary.rejected
    return world


def enrolments_at_the_office(store: Path, domains) -> dict[tuple, dict]:
    """(id_number, insurance_type) -> cells of every live enrolment in the store, decrypted."""
    rows, _ = snapshot(store, domains)
    return {(cells["id_number"], cells["insurance_type"]): cells
            for (table, _), (exists, cells) in ((t, (e, dict(c))) for t, (e, c) in rows.items())
            if table == "shebao.enrolments" and exists}


def test_shebao_codes_are_aae140_and_retirement_is_a_column_of_its_own():
    shebao = load_domains()["shebao"]
    assert shebao.version == 2
    assert set(shebao.code_table("insurance_type")) == {"110", "120", "170", "210", "310", "390", "410", "510"}
    assert shebao.code_table("enrolment_status") == {"1": "参保缴费", "2": "暂停缴费", "3": "终止参保"}
    enrolments = shebao.tables["enrolments"]
    assert enrolments.columns["retired"].codes == "yes_no" and enrolments.columns["retired_date"].type == "date"
    # Every code of version 1 has its successor.
    old = tomllib.loads((PREVIOUS / "shebao.toml").read_text(encoding="utf-8"))["codes"]
    assert set(shebao.was["insurance_type"]) == set(old["insurance_type"])
    assert set(shebao.was["enrolment_status"]) == set(old["enrolment_status"])
    assert shebao.was["enrolment_status"]["retired"] == Was("1", {"retired": "1"})


WAS_DOMAIN = """
label = "养老"
version = 2
[tables.care]
label = "照护"
key = ["id_number", "kind"]
owner = "community_code"
[tables.care.columns]
id_number = { type = "text", label = "公民身份号码" }
kind = { type = "text", label = "类别", codes = "kind" }
active = { type = "text", label = "在用", codes = "yes_no" }
community_code = { type = "text", label = "社区代码" }
[codes.kind]
1 = "居家"
2 = "机构"
[codes.yes_no]
1 = "是"
0 = "否"
"""


@pytest.mark.parametrize("was, why", [
    ('home = "3"', "old code 'home' maps to '3', which is not a code of the table; use one of 1, 2"),
    ('1 = "2"', "'1' is a code of the table now"),
    ('home = { code = "1", set = { nothing = "1" } }', "'home' sets 'nothing', which is not a column"),
    ('home = { code = "1", set = { kind = "2" } }', "'home' sets 'kind', which is not a column outside the key"),
    ('home = { code = "1", set = { active = "yes" } }', "sets 'active' to 'yes', which is not in code table 'yes_no'"),
    ('home = { code = "1", also = { active = "1" } }', "'home' must be \"NEW\" or { code = \"NEW\", set ="),
])
def test_schemas_check_refuses_a_was_that_maps_to_no_code(tmp_path, was, why):
    (tmp_path / "yanglao.toml").write_text(WAS_DOMAIN + f"[codes.kind.was]\n{was}\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["schemas", "check", "--schemas", str(tmp_path)])
    assert result.exit_code == 1 and why in result.output, result.output
    (tmp_path / "yanglao.toml").write_text(WAS_DOMAIN + '[codes.kind.was]\nhome = { code = "1", set = { active = "1" } }'
                                           '\nward = "2"\n', encoding="utf-8")
    domain = load_domains(tmp_path)["yanglao"]
    assert domain.was == {"kind": {"home": Was("1", {"active": "1"}), "ward": Was("2")}}
    assert set(domain.code_table("kind")) == {"1", "2"}  # `was` is no code


def test_old_codes_at_the_office_break_nothing_until_the_community_pushes(insured):
    """The store keeps version 1's codes until the community's next push: its upgrade changes no
    record, and status, export and the published databases read them as they are."""
    shipped = load_domains()
    before = enrolments_at_the_office(insured.store, insured.all_domains)
    after = enrolments_at_the_office(insured.store, shipped)  # open_upgraded, as the next merge runs it
    assert set(after) == set(before) == {(n, t) for n, t, *_ in OLD_ENROLMENTS}
    assert all(after[k]["retired"] is None and after[k]["status"] == before[k]["status"] for k in after)
    keyring = office.load_keyring(insured.store, SECRET)
    report = status.status(insured.store, shipped, keyring)
    assert not report.needs_person, report.lines()
    exported = list(export.rows(insured.store, SECRET, shipped, "shebao.enrolments"))
    assert sorted(r["insurance_type"] for r in exported) == sorted(t for _, t, *_ in OLD_ENROLMENTS)
    masked, plain = (sqlite3.connect(":memory:", isolation_level=None) for _ in range(2))
    with open_store(insured.store, SECRET, shipped) as store:
        assert projection.fill(store, masked, plain) >= len(OLD_ENROLMENTS)
    name = projection.published_name(shipped["shebao"], shipped["shebao"].tables["enrolments"])
    published = plain.execute(f"SELECT [险种类型] FROM [{name}]").fetchall()  # published under its label
    assert sorted(t for (t,) in published) == sorted(t for _, t, *_ in OLD_ENROLMENTS)


def test_a_community_upgrade_moves_enrolments_to_aae140_and_the_office_follows(insured, previous):
    """`community upgrade` rewrites version 1's codes; the next push sends each enrolment as one key
    change, and after the merge the store holds the same enrolments under AAE140 codes, none
    under the old ones, nothing lost and no conflict opened."""
    shipped = load_domains()
    kept = {name: shipped[name] for name in ("huji", "shebao")}
    at_office, conflicts = snapshot(insured.store, shipped)
    before = enrolments_at_the_office(insured.store, shipped)
    done = upgrade(insured.folders[A], kept)
    assert done.added["shebao.enrolments"] == ["retired", "retired_date"]
    assert done.recoded_rows == 2 * len(OLD_ENROLMENTS)  # the type and the status of each
    assert any(line.startswith("shebao.enrolments.insurance_type: old codes rewritten (pension_employee → 110: 1;")
               for line in done.recoded)
    assert any("retired → 1, retired 1: 2" in line for line in done.recoded)
    working = rows_of(insured.folders[A] / "shebao.db", "enrolments")
    names = columns_of(insured.folders[A] / "shebao.db", "enrolments")
    assert sorted((r[0], r[1], r[2], r[names.index("retired")]) for r in working) == sorted(
        (n, NEW_CODES[t], *NEW_STATUS[s]) for n, t, s, *_ in OLD_ENROLMENTS)
    assert not upgrade(insured.folders[A], kept).changed  # once rewritten, the old codes are gone

    insured.all_domains = shipped
    insured.communities[A].domains = kept
    result = insured.push(A)
    assert result.held == []
    assert result.counts == {"shebao.enrolments": {"insert": 0, "update": 0, "delete": 0,
                                                   "rekey": len(OLD_ENROLMENTS)}}
    summary = merge.merge(insured.store, insured.bundles[-1:], SECRET, shipped)
    assert (summary.applied, summary.rejected, summary.held, summary.opened) == (1, [], [], 0)
    after = enrolments_at_the_office(insured.store, shipped)
    assert set(after) == {(n, NEW_CODES[t]) for n, t, *_ in OLD_ENROLMENTS}  # none left under an old code
    for (number, old_type, old_status, *_) in OLD_ENROLMENTS:
        old, new = before[(number, old_type)], after[(number, NEW_CODES[old_type])]
        assert (new["status"], new["retired"]) == NEW_STATUS[old_status]
        unchanged = ("start_date", "end_date", "employer", "monthly_base", "community_code")
        assert {c: new[c] for c in unchanged} == {c: old[c] for c in unchanged}  # nothing lost
    rows, after_conflicts = snapshot(insured.store, shipped)
    assert after_conflicts == conflicts == set()
    # The rest of the store is as it was.
    assert {k: v for k, v in rows.items() if k[0] != "shebao.enrolments"} == \
        {k: v for k, v in at_office.items() if k[0] != "shebao.enrolments"}


def test_an_old_code_whose_new_key_is_taken_is_kept_and_named(insured):
    """A worker who entered the AAE140 code by hand beside the old one: the upgrade rewrites the
    rest, keeps that record under its old code (the push would otherwise lose one of the two) and
    says which, masked."""
    shipped = load_domains()
    kept = {name: shipped[name] for name in ("huji", "shebao")}
    folder = insured.folders[A]
    conn = sqlite3.connect(folder / "shebao.db")
    with conn:
        conn.execute("INSERT INTO enrolments (id_number, insurance_type, status, start_date, community_code) "
                     "VALUES (?, '510', 'active', '2002-01-01', ?)", (WIFE, A))
    conn.close()
    done = upgrade(folder, kept)
    (note,) = [line for line in done.recoded if line.startswith("note:")]
    assert "shebao.enrolments.insurance_type: 1 record(s) keep the old code 'maternity'" in note
    assert WIFE not in note and f"{WIFE[:6]}********{WIFE[-4:]} / maternity" in note
    types = sorted(t for n, t, *_ in rows_of(folder / "shebao.db", "enrolments") if n == WIFE)
    assert types == ["170", "390", "510", "maternity"]
    runner = CliRunner()
    result = runner.invoke(cli, ["community", "upgrade", str(folder)],
                           env={"SYNCDB_SCHEMAS": str(Path(shipped["shebao"].path).parent)})
    assert result.exit_code == 0 and "keep the old code 'maternity'" in result.output, result.output
