"""`syncdb sample`: realistic, valid and deterministic sample communities."""

import hashlib
import sqlite3
from collections import Counter, defaultdict
from datetime import date

import pytest
from click.testing import CliRunner
from stdnum.cn import ric

from syncdb import schema, workdir
from syncdb.cli import cli
from syncdb.errors import SyncdbError
from syncdb.sample import TODAY, generate
from syncdb.sample_ids import IdNumbers
from syncdb.sample_people import age, birthday

CODE = "441900003001"
FILES = ("huji.db", "shebao.db", "minzheng.db")
# GB/T 4761 relationships that fix a member's sex.
MALE = {"11", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "41", "43", "51"}
FEMALE = {"12", "30", "31", "32", "33", "34", "35", "36", "37", "38", "39", "42", "44", "52"}
CHILDREN = {"20", "21", "22", "23", "24", "25", "26", "27", "30", "31", "32", "33", "34", "35", "36", "37"}
SPOUSE = {"10", "11", "12"}
MARRIED = {"20", "21", "22", "23"}


@pytest.fixture(scope="module")
def domains():
    return schema.load_domains()


def rows(path, sql):
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def years_between(earlier, later):
    return (date.fromisoformat(later) - date.fromisoformat(earlier)).days / 365.2425


def hashes(directory):
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in FILES}


@pytest.fixture(scope="module")
def community(tmp_path_factory, domains):
    """One community of 2000 residents, loaded back from its files."""
    directory = tmp_path_factory.mktemp("community")
    counts = generate(directory, CODE, 2000, 7, domains)
    return {
        "dir": directory,
        "counts": counts,
        "households": rows(directory / "huji.db", "SELECT * FROM households"),
        "persons": rows(directory / "huji.db", "SELECT * FROM persons"),
        "enrolments": rows(directory / "shebao.db", "SELECT * FROM enrolments"),
        "benefits": rows(directory / "minzheng.db", "SELECT * FROM benefits"),
    }


@pytest.fixture(scope="module")
def by_household(community):
    members = defaultdict(list)
    for person in community["persons"]:
        members[person["household_no"]].append(person)
    return members


def test_same_inputs_same_bytes(tmp_path, domains):
    generate(tmp_path / "a", CODE, 600, 3, domains)
    generate(tmp_path / "b", CODE, 600, 3, domains)
    assert hashes(tmp_path / "a") == hashes(tmp_path / "b")


@pytest.mark.parametrize("code, seed", [(CODE, 4), ("441900003002", 3)])
def test_other_code_or_seed_other_data(tmp_path, domains, code, seed):
    generate(tmp_path / "base", CODE, 600, 3, domains)
    generate(tmp_path / "other", code, 600, seed, domains)
    base, other = hashes(tmp_path / "base"), hashes(tmp_path / "other")
    assert all(base[name] != other[name] for name in FILES)
    persons = "SELECT name, birth_date FROM persons"
    assert rows(tmp_path / "base" / "huji.db", persons) != rows(tmp_path / "other" / "huji.db", persons)


def test_more_residents_more_data(tmp_path, domains):
    generate(tmp_path / "base", CODE, 600, 3, domains)
    generate(tmp_path / "more", CODE, 601, 3, domains)
    # The 601st resident is the 600 plus one more: a small community is the start of a bigger one.
    persons = "SELECT * FROM persons"
    assert rows(tmp_path / "base" / "huji.db", persons) == rows(tmp_path / "more" / "huji.db", persons)[:600]


def test_counts(community):
    directory, counts = community["dir"], community["counts"]
    assert list(counts) == ["huji.households", "huji.persons", "shebao.enrolments", "minzheng.benefits"]
    assert counts["huji.persons"] == 2000
    for qualified, count in counts.items():
        domain, table = qualified.split(".")
        assert rows(directory / f"{domain}.db", f"SELECT count(*) AS n FROM {table}")[0]["n"] == count


@pytest.mark.parametrize("residents", [1, 2, 13, 301])
def test_exactly_the_residents_asked_for(tmp_path, domains, residents):
    counts = generate(tmp_path, "440305007012", residents, 0, domains)
    assert counts["huji.persons"] == residents
    heads = rows(tmp_path / "huji.db", "SELECT relationship FROM persons")
    assert heads[0]["relationship"] == "02"


def test_validator_finds_no_errors(community, domains):
    from syncdb.validate import validate_paths

    findings = list(validate_paths([community["dir"]], domains))
    assert [str(f) for f in findings if f.severity == "error"] == []
    # Region codes are chosen as stdnum knows them for the birth year.
    assert sum(f.severity == "warning" for f in findings) <= 5


def test_households(community, by_household):
    households = community["households"]
    persons = {p["id_number"]: p for p in community["persons"]}
    numbers = [h["household_no"] for h in households]
    assert len(set(numbers)) == len(numbers) == community["counts"]["huji.households"]
    assert set(by_household) == set(numbers)
    types = Counter(h["household_type"] for h in households)
    assert types["family"] > 10 * types["collective"] > 0
    for household in households:
        assert household["household_no"].startswith(CODE[6:])
        assert household["community_code"] == CODE
        assert household["address"].startswith("广东省东莞市")
        members = by_household[household["household_no"]]
        heads = [p for p in members if p["relationship"] == "02"]
        assert len(heads) == 1
        assert household["head_id_number"] == heads[0]["id_number"]
        assert persons[household["head_id_number"]]["household_no"] == household["household_no"]
        assert all(p["address"] == household["address"] for p in members)


def test_relationships_agree_with_sex(community):
    for person in community["persons"]:
        if person["relationship"] in MALE:
            assert person["sex"] == "1", person
        if person["relationship"] in FEMALE:
            assert person["sex"] == "2", person


def test_families_are_plausible(community, by_household):
    types = {h["household_no"]: h["household_type"] for h in community["households"]}
    checked = Counter()
    for number, members in by_household.items():
        head = next(p for p in members if p["relationship"] == "02")
        spouses = [p for p in members if p["relationship"] in SPOUSE]
        assert len(spouses) <= 1
        # Collective households (company dormitories) have young workers at their head.
        youngest = 22 if types[number] == "family" else 18
        # 91 at most: a shared region, birth date and sex may move a birth a day or two earlier.
        assert youngest <= age(date.fromisoformat(head["birth_date"])) <= 91, head
        if types[number] == "collective":
            assert {p["relationship"] for p in members} <= {"02", "99"}
        for spouse in spouses:
            assert spouse["sex"] != head["sex"]
            assert abs(years_between(head["birth_date"], spouse["birth_date"])) <= 10
            assert head["marital_status"] in MARRIED and spouse["marital_status"] in MARRIED
            checked["spouse"] += 1
        for member in members:
            relationship = member["relationship"]
            if relationship in CHILDREN:
                for parent in [head] + spouses:
                    assert 18 <= years_between(parent["birth_date"], member["birth_date"]) <= 45
                checked["child"] += 1
            elif relationship in ("51", "52"):
                assert 18 <= years_between(member["birth_date"], head["birth_date"]) <= 45
                checked["parent"] += 1
            elif relationship in ("41", "42", "43", "44"):
                for grandparent in [head] + spouses:
                    assert years_between(grandparent["birth_date"], member["birth_date"]) >= 36
                checked["grandchild"] += 1
            if years_between(member["birth_date"], TODAY.isoformat()) < 20:
                assert member["marital_status"] == "10", member
    assert min(checked.values()) >= 10, checked


def test_realistic_mix(community):
    persons = community["persons"]
    ethnicity = Counter(p["ethnicity"] for p in persons)
    assert 0.8 < ethnicity["01"] / len(persons) < 0.97
    assert len(ethnicity) > 5
    status = Counter(p["status"] for p in persons)
    assert status["normal"] > 0.95 * len(persons)
    assert status["moved_out"] > 0 and status["deceased"] > 0
    marital = Counter(p["marital_status"] for p in persons)
    assert marital["30"] > 0 and marital["40"] > 0
    phones = [p["phone"] for p in persons if p["phone"]]
    assert 0.5 * len(persons) < len(phones) < len(persons)
    assert all(len(phone) == 11 and phone.startswith("1") for phone in phones)
    assert all(p["phone"] is None for p in persons if p["birth_date"] > "2008-06-30")
    assert len({p["name"] for p in persons}) > 0.8 * len(persons)


def test_id_numbers(community):
    numbers = [p["id_number"] for p in community["persons"]]
    assert len(set(numbers)) == len(numbers)
    own = 0
    for person in community["persons"]:
        number = person["id_number"]
        assert len(number) == 18 and number[:17].isdigit()
        assert number[-1] == ric.calc_check_digit(number)
        assert ric.get_birth_date(number).isoformat() == person["birth_date"]
        assert int(number[16]) % 2 == (person["sex"] == "1")
        assert 2 <= int(number[14:17]) <= 995
        own += number[:6] == CODE[:6]
    # Most residents were born here, some elsewhere (and Dongguan had older codes).
    assert 0.15 * len(numbers) < own < 0.9 * len(numbers)


def test_id_numbers_unique_across_communities(tmp_path, domains):
    seen = {}
    # Same seed on purpose: neighbours, another street, another county.
    for code in (CODE, "441900003002", "441900004001", "440305007012"):
        generate(tmp_path / code, code, 1500, 1, domains)
        for row in rows(tmp_path / code / "huji.db", "SELECT id_number FROM persons"):
            assert row["id_number"] not in seen, (code, seen.get(row["id_number"]))
            seen[row["id_number"]] = code
    assert len(seen) == 6000


def test_one_street_office_never_shares_an_order_slot():
    slots = [IdNumbers(f"441900003{n:03d}").slot for n in range(1, 249)]
    assert len(set(slots)) == len(slots)


def test_enrolments(community):
    persons = {p["id_number"]: p for p in community["persons"]}
    enrolments = community["enrolments"]
    keys = [(e["id_number"], e["insurance_type"]) for e in enrolments]
    assert len(set(keys)) == len(keys)
    kinds = Counter(e["insurance_type"] for e in enrolments)
    assert {"pension_employee", "medical_employee", "pension_resident", "medical_resident"} <= set(kinds)
    for e in enrolments:
        person = persons[e["id_number"]]
        birth = date.fromisoformat(person["birth_date"])
        start = date.fromisoformat(e["start_date"])
        assert birth <= start <= TODAY
        assert e["community_code"] == CODE
        assert (e["end_date"] is not None) == (e["status"] == "ended")
        if e["end_date"]:
            assert e["start_date"] <= e["end_date"] <= TODAY.isoformat()
        if e["insurance_type"].startswith("pension"):
            assert start >= birthday(birth, 16)
        if e["insurance_type"] in ("pension_employee", "medical_employee", "unemployment", "injury"):
            assert start >= birthday(birth, 18)
            if e["status"] in ("active", "suspended"):
                assert e["employer"] and e["monthly_base"]
            if e["monthly_base"] is not None:
                assert 4000 <= e["monthly_base"] <= 30000 and e["monthly_base"] % 100 == 0
        else:
            assert e["employer"] is None and e["monthly_base"] is None
        if e["status"] == "retired":
            assert birthday(birth, 55 if person["sex"] == "2" else 60) <= TODAY
        if person["status"] == "deceased":
            assert e["status"] == "ended"


def test_benefits(community, by_household):
    persons = {p["id_number"]: p for p in community["persons"]}
    benefits = community["benefits"]
    keys = [(b["id_number"], b["benefit_type"]) for b in benefits]
    assert len(set(keys)) == len(keys)
    assert {"elderly", "dibao", "disability"} <= {b["benefit_type"] for b in benefits}
    elderly = {b["id_number"]: b for b in benefits if b["benefit_type"] == "elderly"}
    for person in persons.values():
        if person["status"] == "normal" and birthday(date.fromisoformat(person["birth_date"]), 80) <= TODAY:
            assert elderly[person["id_number"]]["status"] == "active"
    for b in benefits:
        person = persons[b["id_number"]]
        birth = date.fromisoformat(person["birth_date"])
        assert birth <= date.fromisoformat(b["start_date"]) <= TODAY
        assert (b["end_date"] is not None) == (b["status"] == "ended")
        assert b["community_code"] == CODE
        if b["benefit_type"] == "elderly":
            assert date.fromisoformat(b["start_date"]) >= birthday(birth, 80)
            assert 100 <= b["monthly_amount"] <= 500
        else:
            assert person["status"] == "normal"
        if b["benefit_type"] == "dibao":
            assert 600 <= b["monthly_amount"] <= 1200
        if b["benefit_type"] == "tekun":
            assert len(by_household[person["household_no"]]) == 1


@pytest.mark.parametrize("code, why", [
    ("44190000300", "12 digits"),
    ("4419000030011", "12 digits"),
    ("44190000300a", "12 digits"),
    ("４４１９０００３０００１", "12 digits"),
    (" 441900003001", "12 digits"),
    ("", "12 digits"),
    ("991900003001", "no province code"),
])
def test_refuses_a_bad_code(tmp_path, domains, code, why):
    with pytest.raises(SyncdbError, match=why):
        generate(tmp_path / "c", code, 10, 0, domains)
    assert not (tmp_path / "c").exists()


def test_refuses_a_folder_with_data(tmp_path, domains):
    generate(tmp_path, CODE, 50, 0, domains)
    before = hashes(tmp_path)
    with pytest.raises(SyncdbError, match="new folder"):
        generate(tmp_path, CODE, 50, 1, domains)
    assert hashes(tmp_path) == before


def test_refuses_a_folder_with_other_files_named_like_databases(tmp_path, domains):
    (tmp_path / "shebao.db").write_text("not a database")
    with pytest.raises(SyncdbError, match="new folder"):
        generate(tmp_path, CODE, 50, 0, domains)


def test_fills_empty_working_databases(tmp_path, domains):
    workdir.create(tmp_path, {d: domains[d] for d in ("huji", "shebao", "minzheng")})
    assert generate(tmp_path, CODE, 50, 0, domains)["huji.persons"] == 50


def test_only_the_three_domains(tmp_path, domains):
    picked = {name: d for name, d in domains.items() if name != "minzheng"}
    counts = generate(tmp_path, CODE, 50, 0, picked)
    assert set(counts) == {"huji.households", "huji.persons", "shebao.enrolments"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huji.db", "shebao.db"]


def test_files_are_ordinary_sqlite(community):
    for name in FILES:
        path = community["dir"] / name
        assert rows(path, "PRAGMA journal_mode")[0]["journal_mode"] == "delete"
        assert rows(path, "PRAGMA integrity_check")[0]["integrity_check"] == "ok"
        assert not (community["dir"] / f"{name}-wal").exists()


def test_cli(tmp_path):
    runner = CliRunner()
    target = tmp_path / "c"
    result = runner.invoke(cli, ["sample", str(target), "--code", CODE, "--residents", "300", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert "huji.persons: 300 rows" in result.output
    assert "minzheng.benefits:" in result.output
    again = runner.invoke(cli, ["sample", str(target), "--code", CODE, "--residents", "300"])
    assert again.exit_code == 1
    assert "new folder" in again.output
    bad = runner.invoke(cli, ["sample", str(tmp_path / "d"), "--code", "4419"])
    assert bad.exit_code == 1
    assert "12 digits" in bad.output
