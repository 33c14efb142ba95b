"""`syncdb sample`: realistic, valid and deterministic sample communities."""

import hashlib
import sqlite3
from collections import Counter, defaultdict
from datetime import date

import pytest
from click.testing import CliRunner
from stdnum.cn import ric

from stdnum.cn import uscc

from syncdb import schema, workdir
from syncdb.cli import cli
from syncdb.errors import SyncdbError
from syncdb.sample import DOMAINS, TODAY, generate
from syncdb.sample_ids import PART_OF, IdNumbers
from syncdb.sample_origins import MIGRANT_PROVINCES
from syncdb.sample_people import age, birthday
from syncdb.sample_planted import CLASSES, how_many, report

CODE = "441900003001"
FILES = tuple(f"{d}.db" for d in DOMAINS)
TABLES = ["huji.households", "huji.persons", "shebao.enrolments", "minzheng.benefits", "minzheng.assistance",
          "wangge.grids",
          "dizhi.addresses", "fangwu.houses", "danwei.units", "liudong.migrants"]
# GB/T 4761 relationships that fix a member's sex.
MALE = {"11", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "41", "43", "51", "53", "55", "57",
        "61", "63"}
FEMALE = {"12", "30", "31", "32", "33", "34", "35", "36", "37", "38", "39", "42", "44", "52", "54", "56", "58",
          "62", "64"}
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


def masked(id_number):
    return id_number[:6] + "********" + id_number[-4:]


def years_between(earlier, later):
    return (date.fromisoformat(later) - date.fromisoformat(earlier)).days / 365.2425


def hashes(directory):
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in FILES}


@pytest.fixture(scope="module")
def community(tmp_path_factory, domains):
    """One community of 2000 residents, loaded back from its files."""
    directory = tmp_path_factory.mktemp("community")
    counts = generate(directory, CODE, 2000, 7, domains)
    loaded = {"dir": directory, "counts": counts}
    for qualified in TABLES:
        domain, table = qualified.split(".")
        loaded[table] = rows(directory / f"{domain}.db", f"SELECT * FROM {table}")
    return loaded


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
    assert list(counts) == TABLES
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
    planted_heads = {line.split(":")[0] for line in report(community["dir"])["household_head"]}
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
        if household["household_no"] not in planted_heads:  # household_head: the record names another member
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
    # Dongguan natives are almost all 汉族; the few minorities came from the inland provinces.
    natives = [p for p in persons if p["id_number"][:2] == "44"]
    assert len(natives) > 0.8 * len(persons)
    assert sum(p["ethnicity"] == "01" for p in natives) > 0.99 * len(natives)
    ethnicity = Counter(p["ethnicity"] for p in persons)
    assert 0.96 < ethnicity["01"] / len(persons) < 1
    assert not {"05", "04"} & {p["ethnicity"] for p in natives}  # no 维吾尔族 or 藏族 natives of Dongguan
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
    assert {"110", "310", "170", "390"} <= set(kinds)  # AAE140: employees' and residents' pension and medical
    assert any(e["retired"] == "1" for e in enrolments)
    for e in enrolments:
        person = persons[e["id_number"]]
        birth = date.fromisoformat(person["birth_date"])
        start = date.fromisoformat(e["start_date"])
        assert birth <= start <= TODAY
        assert e["community_code"] == CODE
        assert (e["end_date"] is not None) == (e["status"] == "3")
        if e["end_date"]:
            assert e["start_date"] <= e["end_date"] <= TODAY.isoformat()
        if e["insurance_type"] in ("110", "170"):
            assert start >= birthday(birth, 16)
        if e["insurance_type"] in ("110", "310", "210", "410"):
            assert start >= birthday(birth, 18)
            if e["status"] in ("1", "2") and e["retired"] == "0":
                assert e["employer"] and e["monthly_base"]
            if e["monthly_base"] is not None:
                assert 4000 <= e["monthly_base"] <= 30000 and e["monthly_base"] % 100 == 0
        else:
            assert e["employer"] is None and e["monthly_base"] is None
        # Retirement is apart from the payment status: a retiree is still insured, from a date.
        assert (e["retired_date"] is not None) == (e["retired"] == "1")
        if e["retired"] == "1":
            assert e["insurance_type"] in ("110", "310", "170")
            assert birthday(birth, 55 if person["sex"] == "2" else 60) <= date.fromisoformat(e["retired_date"])
            assert e["start_date"] <= e["retired_date"] <= TODAY.isoformat()
        if person["status"] == "deceased":
            assert e["status"] == "3"


def test_benefits(community):
    persons = {p["id_number"]: p for p in community["persons"]}
    found = report(community["dir"])
    planted = {line.split(":")[0] for line in found["deceased_paid"]}
    elderly_planted = {line.split(":")[0] for line in found["elderly_allowance"]}
    # benefit_unregistered: paid to migrants who left, with no 户籍 here.
    benefits = [b for b in community["benefits"] if b["id_number"] in persons]
    assert len(community["benefits"]) - len(benefits) == len(found["benefit_unregistered"])
    keys = [(b["id_number"], b["benefit_type"]) for b in benefits]
    assert len(set(keys)) == len(keys)
    assert {b["benefit_type"] for b in benefits} == {"elderly", "disability"}  # person-level only (minzheng v2)
    elderly = {b["id_number"]: b for b in benefits if b["benefit_type"] == "elderly"}
    for person in persons.values():
        if person["status"] == "normal" and birthday(date.fromisoformat(person["birth_date"]), 80) <= TODAY \
                and masked(person["id_number"]) not in elderly_planted:
            assert elderly[person["id_number"]]["status"] == "active"
    for b in benefits:
        person = persons[b["id_number"]]
        birth = date.fromisoformat(person["birth_date"])
        assert birth <= date.fromisoformat(b["start_date"]) <= TODAY
        assert (b["end_date"] is not None) == (b["status"] == "ended")
        assert b["community_code"] == CODE
        if b["benefit_type"] == "elderly":
            assert 100 <= b["monthly_amount"] <= 500
            if masked(person["id_number"]) not in elderly_planted:
                assert date.fromisoformat(b["start_date"]) >= birthday(birth, 80)
        elif masked(person["id_number"]) not in planted:
            assert person["status"] == "normal"


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


def test_only_the_domains_given(tmp_path, domains):
    picked = {name: d for name, d in domains.items() if name in ("huji", "shebao")}
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


# -- every domain, and how they hang together (issue 11) ------------------------------

def test_every_domain_and_column_is_filled(community, domains):
    """Each table has rows, and each column of each table holds a value somewhere."""
    directory = community["dir"]
    for name, domain in domains.items():
        for table in domain.tables.values():
            for column in table.columns:
                filled = rows(directory / f"{name}.db", f"SELECT count([{column}]) AS n FROM [{table.name}]")
                assert filled[0]["n"] > 0, f"{name}.{table.name}.{column} is never filled"


def test_references_all_resolve(community, domains):
    """Every reference a schema declares names a record that exists (and agrees where it says 'same')."""
    checked = Counter()
    for name, domain in domains.items():
        for table in domain.tables.values():
            for column in table.columns.values():
                if not column.references:
                    continue
                target_domain, target_table = column.references.split(".")
                key = domains[target_domain].tables[target_table].key[0]
                targets = {r[key]: r for r in community[target_table]}
                for record in community[table.name]:
                    value = record[column.name]
                    if value is None:
                        continue
                    assert value in targets, (table.name, column.name, value)
                    for mine, theirs in column.same.items():
                        assert targets[value][theirs] == record[mine], (table.name, column.name, value)
                    checked[f"{table.name}.{column.name}"] += 1
    assert {"persons.household_no", "households.head_id_number", "persons.address_code",
            "households.address_code", "addresses.grid_code", "houses.address_code", "units.address_code",
            "migrants.address_code", "migrants.house_code"} <= set(checked)


def test_relationships_agree_with_the_schema_implies(community, domains):
    implies = domains["huji"].tables["persons"].columns["relationship"].implies
    assert implies
    for person in community["persons"]:
        for column, value in implies.get(person["relationship"], {}).items():
            assert person[column] == value, person


def test_households_share_their_region_and_address(community, by_household):
    types = {h["household_no"]: h for h in community["households"]}
    for number, members in by_household.items():
        household = types[number]
        assert all(p["address_code"] == household["address_code"] for p in members)
        if household["household_type"] == "family":
            # A family's ID numbers share their province; the county code may be its older name,
            # and 重庆 (50) was part of 四川 (51) before 1997.
            assert len({PART_OF.get(p["id_number"][:2], (p["id_number"][:2],))[0] for p in members}) == 1, members


def test_life_events(community):
    persons = community["persons"]
    education = schema.load_domains()["huji"].code_table("education")
    for person in persons:
        assert person["education"] is None or person["education"] in education
        if person["status"] == "deceased":
            assert person["phone"] is None
            assert person["birth_date"] < person["death_date"] < TODAY.isoformat()
            assert person["deregistration_reason"] == "1"
        else:
            assert person["death_date"] is None
        if person["status"] == "moved_out":
            assert person["deregistration_reason"] in ("2", "3") and person["deregistration_destination"]
        if person["status"] == "normal":
            assert person["deregistration_reason"] is None
        if person["move_in_date"]:
            assert person["birth_date"] <= person["move_in_date"] <= TODAY.isoformat()
        if age(date.fromisoformat(person["birth_date"])) < 7:
            assert person["education"] is None
    assert any(p["education"] in ("21", "31") for p in persons)
    assert any(p["former_name"] for p in persons) and any(p["workplace"] for p in persons)


def test_benefits_for_the_dead_end_with_them(community):
    persons = {p["id_number"]: p for p in community["persons"]}
    planted = {line.split(":")[0] for line in report(community["dir"])["deceased_paid"]}
    for b in community["benefits"]:
        person = persons.get(b["id_number"])  # None: planted, paid with no 户籍 here (benefit_unregistered)
        if person and person["status"] == "deceased" and masked(person["id_number"]) not in planted:
            assert b["status"] == "ended" and b["end_date"] == person["death_date"]
            assert b["start_date"] <= person["death_date"]
    for e in community["enrolments"]:
        person = persons[e["id_number"]]
        if person["status"] == "deceased":
            assert e["end_date"] == person["death_date"]


def test_assistance_is_per_household(community, by_household):
    """低保, 特困, 低保边缘 and 临时救助 (minzheng v2): one record per household and type, with the
    household's amount and how many of its living members receive it."""
    assistance = community["assistance"]
    keys = [(a["household_no"], a["assistance_type"]) for a in assistance]
    assert len(set(keys)) == len(keys)
    assert {a["assistance_type"] for a in assistance} == {"1", "2", "3", "4"}
    for a in assistance:
        living = [p for p in by_household[a["household_no"]] if p["status"] == "normal"]
        assert 1 <= a["members"] <= len(living)
        assert (a["end_date"] is not None) == (a["status"] == "ended")
        assert max(p["birth_date"] for p in living) <= a["start_date"] <= TODAY.isoformat()
        assert a["community_code"] == CODE
        if a["assistance_type"] == "1":  # 低保: 600 to 1,200 a member a month, for the household
            assert 600 * a["members"] <= a["monthly_amount"] <= 1200 * a["members"]
        if a["assistance_type"] == "2":  # 特困: someone alone
            assert len(by_household[a["household_no"]]) == 1 and a["members"] == 1
        if a["assistance_type"] == "3":
            assert a["monthly_amount"] is None
        if a["assistance_type"] == "4":
            assert a["start_date"] == a["end_date"] and a["monthly_amount"] >= 500


def test_addresses_grids_houses_and_units(community):
    addresses, grids = community["addresses"], community["grids"]
    for address in addresses:
        assert address["address_code"].startswith(CODE) and len(address["address_code"]) == 18
        assert address["road"] and address["door_no"].endswith("号")
    assert any(a["building"] and a["room"] for a in addresses) and any(a["unit"] for a in addresses)
    assert any(not a["building"] for a in addresses)
    # Grids of 300–500 registered households, each with a grid worker.
    at = Counter(h["address_code"] for h in community["households"])
    per_grid = Counter()
    for address in addresses:
        per_grid[address["grid_code"]] += at[address["address_code"]]
    assert set(per_grid) == {g["grid_code"] for g in grids}
    assert all(300 <= n <= 500 for n in per_grid.values()), per_grid
    for grid in grids:
        assert grid["grid_code"].startswith(CODE) and len(grid["grid_code"]) == 15
        assert grid["worker_name"] and grid["worker_phone"]
    houses = community["houses"]
    rented = [h for h in houses if h["rented"] == "1"]
    assert 0.1 * len(houses) < len(rented) < len(houses)
    for house in houses:
        assert house["house_code"] in (house["address_code"], house["address_code"] + "01")
    for house in rented:
        assert house["landlord_phone"] and house["rental_registered"] < TODAY.isoformat() < house["rental_expires"]
        if house["use"] in ("10", "50"):
            assert house["rooms"] and house["capacity"]
    assert {"10", "20", "40", "50"} <= {h["use"] for h in houses}
    units = community["units"]
    assert len(units) >= 5 and {"1", "2"} <= {u["kind"] for u in units}
    assert all(uscc.is_valid(u["credit_code"]) for u in units)


def test_migrants_outnumber_residents_and_come_from_inland(community):
    migrants, houses = community["migrants"], {h["house_code"]: h for h in community["houses"]}
    assert len(migrants) > len(community["persons"])
    provinces = Counter(m["id_number"][:2] for m in migrants)
    assert set(provinces) <= set(MIGRANT_PROVINCES) | {"51"}  # 重庆 people born before 1997 carry 51
    assert {"43", "45", "51", "41", "36", "52", "42"} <= set(provinces)
    assert provinces["43"] > provinces["35"]
    for m in migrants:
        assert m["native_division"][:2] == m["id_number"][:2] or m["id_number"][:2] == "51"
        assert houses[m["house_code"]]["rented"] == "1"
        assert m["birth_date"] <= m["arrival_date"] <= TODAY.isoformat()
        if m["leaving_date"]:
            assert m["arrival_date"] < m["leaving_date"] <= TODAY.isoformat()
        if m["permit_no"]:
            issued, expires = date.fromisoformat(m["permit_issued"]), date.fromisoformat(m["permit_expires"])
            assert (issued - date.fromisoformat(m["arrival_date"])).days >= 183
            assert expires == birthday(issued, 3)
            if m["permit_endorsed"]:
                assert issued < date.fromisoformat(m["permit_endorsed"]) <= TODAY
    assert sum(bool(m["permit_no"]) for m in migrants) > 0.6 * len(migrants)


def test_planted_cases_are_there_and_only_there(community):
    """--report finds exactly the planted cases: the rest of the data never shows these problems."""
    found = report(community["dir"])
    assert set(found) == set(CLASSES)
    for name, cases in found.items():
        assert len(cases) == how_many(2000), (name, cases)
        assert all("*" in case or name in ("rental_overfull", "dibao_employed", "household_head") for case in cases)


def test_cli_report(tmp_path):
    result = CliRunner().invoke(cli, ["sample", str(tmp_path / "c"), "--code", CODE, "--residents", "2000",
                                      "--seed", "7", "--report"])
    assert result.exit_code == 0, result.output
    for name, label in CLASSES.items():
        assert f"{label} ({name}): {how_many(2000)}" in result.output
    assert "liudong.migrants: 2600 rows" in result.output


@pytest.mark.slow
def test_ten_thousand_residents_validate_with_no_errors(tmp_path, domains):
    from syncdb.validate import validate_paths

    counts = generate(tmp_path, CODE, 10000, 1, domains)
    assert counts["liudong.migrants"] > counts["huji.persons"] == 10000
    findings = list(validate_paths([tmp_path], domains))
    assert [str(f) for f in findings if f.severity == "error"] == []
    assert {name: len(cases) for name, cases in report(tmp_path).items()} == {name: 4 for name in CLASSES}
