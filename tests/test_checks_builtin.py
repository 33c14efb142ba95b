"""The built-in checks of plugins/checks_benefits.py and plugins/checks_people.py (issue 13).

On a sample street merged into a store, each check finds exactly what
``sample_planted.report`` and ``sample_planted.chance`` count in the
communities' files; then, check by check, records changed by hand in one
community's working databases, pushed and merged: the case appears, and a
record that is right raises none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import date

import pytest

from conftest import SYNCDB
from syncdb import sample_planted
from syncdb.masks import mask
from syncdb.plugins import manager, shipped
from syncdb.sample_people import TODAY
from syncdb.schema import load_domains
from test_checks import CODES, Street

MINE = ("benefit_unregistered", "dibao_employed", "probable_duplicate", "household_head", "elderly_allowance",
        "birth_sex_mismatch")


@pytest.fixture(scope="module")
def street(tmp_path_factory, domains):
    root = tmp_path_factory.mktemp("street")
    (root / "keyfile").write_bytes(b"b" * 32)
    return Street(root, domains, root / "keyfile", codes=CODES, residents=500)


@pytest.fixture
def small(tmp_path, domains):
    """One community of its own, for a test that changes records by hand."""
    (tmp_path / "keyfile").write_bytes(b"c" * 32)
    return Street(tmp_path, domains, tmp_path / "keyfile", codes=CODES[:1], residents=300)


def subjects(street: Street, check: str) -> set[str]:
    return {mask(c["subject"]) if c["subject_kind"] == "person" else c["subject"]
            for c in street.cases() if c["check"] == check}


def counted(lines) -> set[str]:
    return {line.split(":")[0] for line in lines}


def changed(street: Street, domain: str, statement: str, params=()) -> None:
    """Change a community's working database by hand, then push and merge (the merge runs the checks)."""
    street.sql(street.codes[0], domain, statement, params)
    street.push_and_merge()


def case_of(street: Street, check: str, subject: str) -> dict | None:
    return next((c for c in street.cases() if c["check"] == check and c["subject"] == subject), None)


# ---------------------------------------------------------------- the sample street

@pytest.mark.parametrize("check", [c for c in MINE if c != "birth_sex_mismatch"])
def test_finds_every_planted_and_chance_case_and_nothing_else(street, check):
    folders = [street.folder(code) for code in street.codes]
    planted, by_chance = sample_planted.report(*folders)[check], sample_planted.chance(*folders)[check]
    assert planted and not counted(planted) & counted(by_chance)
    found = [c for c in street.cases() if c["check"] == check]
    assert subjects(street, check) == counted(planted) | counted(by_chance)
    assert len(found) == len(planted) + len(by_chance)  # masked ID numbers may look alike: count them too


def test_the_sample_never_disagrees_on_birth_date_or_sex(street):
    assert subjects(street, "birth_sex_mismatch") == set()


def test_the_report_counts_by_the_checks_defaults():
    by_name = {c.name: c for result in manager().hook.cross_checks() for c in result or []}
    employed, elderly = by_name["dibao_employed"].settings, by_name["elderly_allowance"].settings
    assert employed["local_standard"] * employed["times"] == sample_planted.DIBAO_THRESHOLD
    assert elderly["age"] == sample_planted.ELDERLY_AGE


def test_a_finding_names_no_one_and_carries_its_figures(street):
    for case in street.cases():
        if case["check"] in MINE:
            assert not re.search(r"\d{17}[\dX]", case["message"])
            assert case["figures"] and case["records"]
    (dibao,) = [c for c in street.cases() if c["check"] == "dibao_employed"][:1]
    assert dibao["figures"]["highest_base"] > dibao["figures"]["threshold"] == 4290
    assert {r["table"] for r in dibao["records"]} >= {"minzheng.assistance", "shebao.enrolments"}


def test_chance_duplicates_are_reported_apart(tmp_path, domains):
    from syncdb.sample import generate

    generate(tmp_path, CODES[0], 10000, 1, domains)
    assert len(sample_planted.report(tmp_path)["probable_duplicate"]) == sample_planted.how_many(10000)
    assert sample_planted.chance(tmp_path)["probable_duplicate"]


# ---------------------------------------------------------------- check by check, records made by hand

def a_migrant(street: Street, where: str = "leaving_date IS NULL AND permit_no IS NOT NULL") -> str:
    return street.sql(street.codes[0], "liudong", f"SELECT id_number FROM migrants WHERE {where} LIMIT 1")[0][0]


def test_benefit_unregistered(small):
    today = TODAY.isoformat()
    gone = a_migrant(small, "leaving_date IS NOT NULL")
    here = a_migrant(small, f"leaving_date IS NULL AND permit_issued <= '{today}' AND permit_expires >= '{today}'")
    for number in (gone, here):
        small.sql(small.codes[0], "minzheng", "INSERT INTO benefits VALUES (?, 'disability', 'active', 200, "
                  "'2024-01-01', NULL, ?)", (number, small.codes[0]))
    small.push_and_merge()
    assert case_of(small, "benefit_unregistered", gone)["figures"]["monthly_amount"] == 200
    assert case_of(small, "benefit_unregistered", here) is None  # a migrant living here with a valid permit
    changed(small, "minzheng", "UPDATE benefits SET status = 'ended', end_date = '2025-01-01' WHERE id_number = ?",
            (gone,))
    assert case_of(small, "benefit_unregistered", gone) is None  # fixed by itself


def test_dibao_employed(small):
    code = small.codes[0]
    number, member = small.sql(code, "huji", "SELECT household_no, id_number FROM persons WHERE status = 'normal' "
                                             "AND relationship = '02' AND birth_date < '2000-01-01' LIMIT 1")[0]
    for (someone,) in small.sql(code, "huji", "SELECT id_number FROM persons WHERE household_no = ?", (number,)):
        small.sql(code, "shebao", "DELETE FROM enrolments WHERE id_number = ?", (someone,))
    small.sql(code, "minzheng", "DELETE FROM assistance WHERE household_no = ?", (number,))
    small.sql(code, "minzheng", "INSERT INTO assistance VALUES (?, '1', 'active', 900, 1, '2024-01-01', NULL, ?)",
              (number, code))
    small.sql(code, "shebao", "INSERT INTO enrolments VALUES (?, '110', '1', '0', NULL, '2024-01-01', NULL, "
              "'某公司', 4200, ?)", (member, code))
    small.push_and_merge()
    assert case_of(small, "dibao_employed", number) is None  # 4,200 is under 3 × 1,430
    changed(small, "shebao", "UPDATE enrolments SET monthly_base = 9000 WHERE id_number = ?", (member,))
    found = case_of(small, "dibao_employed", number)
    assert found["figures"]["highest_base"] == 9000 and found["figures"]["employed"] == 1
    changed(small, "shebao", "UPDATE enrolments SET retired = '1', retired_date = '2025-01-01', monthly_base = NULL "
                             "WHERE id_number = ?", (member,))
    assert case_of(small, "dibao_employed", number) is None  # a pension is no wage


def test_probable_duplicate(small):
    code = small.codes[0]
    (first,) = small.sql(code, "liudong", "SELECT id_number FROM migrants WHERE leaving_date IS NULL LIMIT 1")[0]
    # The same person entered again with one digit of the birth date mistyped, the check character recomputed.
    twin = sample_planted._mistyped(first, set())
    row = small.sql(code, "liudong", "SELECT * FROM migrants WHERE id_number = ?", (first,))[0]
    small.sql(code, "liudong", f"INSERT INTO migrants VALUES ({', '.join('?' * len(row))})",
              (twin, row[1] + "甲", *row[2:4], f"{twin[6:10]}-{twin[10:12]}-{twin[12:14]}", *row[5:]))
    small.push_and_merge()
    pair = min(first, twin)
    assert case_of(small, "probable_duplicate", pair) is None  # another name: another person
    changed(small, "liudong", "UPDATE migrants SET name = ? WHERE id_number = ?", (row[1], twin))
    found = case_of(small, "probable_duplicate", pair)
    assert found["figures"]["reasons"] == ["id_number"]
    assert {r["key"][0] for r in found["records"]} == {first, twin}
    assert case_of(small, "probable_duplicate", max(first, twin)) is None  # one case per pair
    # Born the same day under another ID number: the sample's own 17th digit makes one.
    other = sample_planted._free_number("430102", date.fromisoformat(row[4]), row[2], {first, twin})
    small.sql(code, "liudong", f"INSERT INTO migrants VALUES ({', '.join('?' * len(row))})", (other, *row[1:]))
    small.push_and_merge()
    assert "birth_date" in case_of(small, "probable_duplicate", min(first, other))["figures"]["reasons"]


def test_household_head(small):
    code = small.codes[0]
    number, head, other = small.sql(
        code, "huji", "SELECT h.household_no, h.head_id_number, p.id_number FROM households h JOIN persons p "
                      "ON p.household_no = h.household_no AND p.relationship != '02' AND p.status = 'normal' LIMIT 1")[0]
    assert case_of(small, "household_head", number) is None
    changed(small, "huji", "UPDATE households SET head_id_number = ? WHERE household_no = ?", (other, number))
    assert case_of(small, "household_head", number)["figures"]["lapse"] == "record"
    changed(small, "huji", "UPDATE households SET head_id_number = ? WHERE household_no = ?", (head, number))
    assert case_of(small, "household_head", number) is None


def test_elderly_allowance(small):
    code = small.codes[0]
    young = small.sql(code, "huji", "SELECT id_number FROM persons WHERE status = 'normal' AND birth_date "
                                    "BETWEEN '1950-01-01' AND '1960-01-01' LIMIT 1")[0][0]
    small.sql(code, "minzheng", "INSERT INTO benefits VALUES (?, 'elderly', 'active', 100, '2025-01-01', "
              "NULL, ?)", (young, code))
    small.push_and_merge()
    assert case_of(small, "elderly_allowance", young)["figures"]["lapse"] == "under"
    eighty = f"{TODAY.year - 80}{TODAY:%m%d}"
    living = {i for (i,) in small.sql(code, "huji", "SELECT id_number FROM persons WHERE status = 'normal'")}
    old = next(i for (i,) in small.sql(code, "minzheng", "SELECT id_number FROM benefits WHERE benefit_type = "
                                                         "'elderly' AND status = 'active' AND substr(id_number, 7, 8) "
                                                         "<= ?", (eighty,)) if i in living)
    assert case_of(small, "elderly_allowance", old) is None
    changed(small, "minzheng", "UPDATE benefits SET status = 'suspended' WHERE id_number = ? AND "
                               "benefit_type = 'elderly'", (old,))
    assert case_of(small, "elderly_allowance", old) is None  # stopped by someone who knew
    changed(small, "minzheng", "UPDATE benefits SET status = 'ended', end_date = ? WHERE id_number = ? AND "
                               "benefit_type = 'elderly'", (TODAY.isoformat(), old))
    assert case_of(small, "elderly_allowance", old)["figures"]["lapse"] == "over"


def test_birth_sex_mismatch_where_a_schema_does_not_bind_them(tmp_path):
    """The shipped schemas tie birth date and sex to the ID number in each record (``matches``); an
    office whose floating-population schema does not must still see the two domains disagree."""
    folder = tmp_path / "schemas"
    shutil.copytree(shipped("schemas"), folder)
    text = (folder / "liudong.toml").read_text(encoding="utf-8")
    (folder / "liudong.toml").write_text(re.sub(r', matches = \{[^}]*\}', "", text), encoding="utf-8")
    domains = load_domains(folder)
    (tmp_path / "keyfile").write_bytes(b"d" * 32)
    street = Street(tmp_path / "street", domains, tmp_path / "keyfile", codes=CODES[:1], residents=200)
    code = street.codes[0]
    number, sex = street.sql(code, "liudong", "SELECT id_number, sex FROM migrants LIMIT 1")[0]
    changed(street, "liudong", "UPDATE migrants SET sex = '9' WHERE id_number = ?", (number,))
    assert case_of(street, "birth_sex_mismatch", number) is None  # 未说明 says nothing
    changed(street, "liudong", "UPDATE migrants SET sex = ? WHERE id_number = ?", ("2" if sex == "1" else "1", number))
    found = case_of(street, "birth_sex_mismatch", number)
    assert found is not None and "sex" in found["message"]
    changed(street, "liudong", "UPDATE migrants SET sex = ?, birth_date = '1901-01-01' WHERE id_number = ?",
            (sex, number))
    assert "birth date" in case_of(street, "birth_sex_mismatch", number)["message"]
    # Masked, a birth date is its year, as the site shows it beside a masked ID number: the full date would
    # give back the eight digits the mask hides.
    carried = f"{number[6:10]}-{number[10:12]}-{number[12:14]}"
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCDB_PASSPHRASE",)}
    env.update(SYNCDB_KEY_FILE=str(tmp_path / "keyfile"), SYNCDB_SCHEMAS=str(folder))
    listed = subprocess.run([SYNCDB, "checks", "list", str(street.store), "--check", "birth_sex_mismatch",
                             "--format", "json"], capture_output=True, text=True, env=env, check=True).stdout
    (case,) = [json.loads(line) for line in listed.splitlines()]
    shown = subprocess.run([SYNCDB, "checks", "show", str(street.store), str(case["id"]), "--masked", "--format",
                            "json"], capture_output=True, text=True, env=env, check=True).stdout
    for out in (listed, shown):
        assert carried not in out and "1901-01-01" not in out and number not in out
        assert number[6:10] in out and "1901" in out
    assert json.loads(shown)["figures"]["id_birth_date"] == number[6:10]
    unmasked = subprocess.run([SYNCDB, "checks", "show", str(street.store), str(case["id"]), "--format", "json"],
                              capture_output=True, text=True, env=env, check=True).stdout
    assert carried in unmasked and "1901-01-01" in unmasked
