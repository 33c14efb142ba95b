"""The record rules (issue 11): references, implies and one_per, checked at the community by
`syncdb validate` and `push` (held back), and listed at the office by `syncdb status` as warnings.
Also the codes the rules lean on: community codes to the 统计用区划代码 rules, division codes, USCC."""

import sqlite3

import pytest
from click.testing import CliRunner

from conftest import SECRET, World, id_number, person, snapshot
from syncdb import merge, office
from syncdb import status as status_lib
from syncdb.cli import cli
from syncdb.errors import SyncdbError
from syncdb.validate import Invalid, community_code, division_code, uscc, validate_paths

A, B = "441900003001", "441900003002"
KEPT = ("huji", "dizhi", "fangwu", "liudong", "wangge")
ADDRESS = A + "000123"
HOUSE = ADDRESS


@pytest.fixture
def w(tmp_path, domains) -> World:
    """An office and community A keeping 户籍, addresses, houses, migrants and grids."""
    return World(tmp_path, domains, codes=[A], community_domains=KEPT)


def insert(w: World, code: str, db: str, table: str, **row) -> None:
    conn = sqlite3.connect(w.folders[code] / f"{db}.db")
    with conn:
        conn.execute(f"INSERT INTO [{table}] ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))
    conn.close()


def household(w, code, no, head=None):
    insert(w, code, "huji", "households", household_no=no, household_type="family", address="东城街道1号",
           community_code=code, **({"head_id_number": head} if head else {}))


def resident(w, code, n, sex="1", **extra):
    row = person(n, code, **extra)
    row["id_number"], row["sex"] = id_number(n, sex), sex
    insert(w, code, "huji", "persons", **row)
    return row["id_number"]


def findings(w, code=A):
    return [str(f) for f in validate_paths([w.folders[code]], w.all_domains)]


def house(w, code=A):
    insert(w, code, "dizhi", "addresses", address_code=ADDRESS, road="东城大道", door_no="1号", community_code=code)
    insert(w, code, "fangwu", "houses", house_code=HOUSE, address_code=ADDRESS, use="10", rented="1",
           community_code=code)


def migrant(w, code, n, house_code=HOUSE):
    insert(w, code, "liudong", "migrants", id_number=id_number(n), name=f"流动{n}", sex="1",
           birth_date="1980-01-01", house_code=house_code, arrival_date="2024-03-01", community_code=code)
    return id_number(n)


# ---------------------------------------------------------------- what validate shows

def test_a_person_in_a_missing_household(w):
    household(w, A, "H1")
    resident(w, A, 1, household_no="H1", relationship="02")
    head = resident(w, A, 2, household_no="H404", relationship="02")
    (line,) = findings(w)
    assert line == (f"{A} / huji.persons / {head} / household_no / H404 is no record of huji.households (户); "
                    "enter that record first, or correct the household_no")


def test_two_heads_in_one_household(w):
    household(w, A, "H1")
    first, second = resident(w, A, 1, household_no="H1", relationship="02"), \
        resident(w, A, 2, household_no="H1", relationship="02")
    lines = findings(w)
    assert sorted(lines) == sorted(
        f"{A} / huji.persons / {n} / relationship / household_no H1 has 2 records with relationship 02 (户主); "
        "exactly one may have it" for n in (first, second))


def test_a_deceased_head_still_coded_02_beside_the_new_head_is_no_second_head(w):
    """one_per's where: only members still registered here (status normal) count, so a household
    appoints its new head without recoding the one who died."""
    household(w, A, "H1")
    resident(w, A, 1, household_no="H1", relationship="02", status="deceased")
    resident(w, A, 2, household_no="H1", relationship="02")
    resident(w, A, 3, household_no="H1", relationship="20")
    assert findings(w) == []
    # … and a household whose only head died, with no new head yet, is still reported on its members.
    household(w, A, "H2")
    resident(w, A, 4, household_no="H2", relationship="02", status="deceased")
    orphan = resident(w, A, 5, household_no="H2", relationship="20")
    (line,) = findings(w)
    assert line.split(" / ")[2] == orphan and "household_no H2 has no record with relationship 02" in line


def test_a_household_with_no_head_is_reported_on_each_member(w):
    household(w, A, "H1")
    members = [resident(w, A, n, household_no="H1", relationship="20") for n in (1, 2)]
    lines = findings(w)
    assert len(lines) == 2 and all("household_no H1 has no record with relationship 02 (户主)" in x for x in lines)
    assert {x.split(" / ")[2] for x in lines} == set(members)


def test_a_husband_coded_female(w):
    household(w, A, "H1")
    resident(w, A, 1, household_no="H1", relationship="02")
    husband = resident(w, A, 2, sex="2", household_no="H1", relationship="11")
    (line,) = findings(w)
    assert line == (f"{A} / huji.persons / {husband} / sex / relationship 11 (夫) needs sex 1 (男性), "
                    "but it is 2 (女性); correct one of them")


def test_a_head_of_household_from_another_household(w):
    household(w, A, "H1", head=id_number(2))
    household(w, A, "H2")
    resident(w, A, 1, household_no="H1", relationship="02")
    resident(w, A, 2, household_no="H2", relationship="02")
    (line,) = findings(w)
    assert line.startswith(f"{A} / huji.households / H1 / head_id_number / huji.persons 110105")
    assert "has household_no H2, but this record's household_no is H1; they must be the same" in line
    assert id_number(2) not in line  # a sensitive value is masked, as keys are


def test_a_migrant_in_a_house_that_does_not_exist(w):
    house(w)
    migrant(w, A, 1)
    missing = migrant(w, A, 2, house_code=A + "000999")
    (line,) = findings(w)
    assert line.startswith(f"{A} / liudong.migrants / {missing} / house_code / {A}000999 is no record of "
                           "fangwu.houses (房屋)")


def test_a_reference_into_a_domain_the_community_does_not_keep_is_not_checked(w):
    migrant(w, A, 1)
    (w.folders[A] / "fangwu.db").unlink()
    assert findings(w) == []


def test_validate_command_reports_and_exits_1(w):
    household(w, A, "H1")
    resident(w, A, 1, household_no="H1", relationship="02")
    resident(w, A, 2, sex="2", household_no="H1", relationship="11")
    result = CliRunner().invoke(cli, ["validate", str(w.folders[A])])
    assert result.exit_code == 1, result.output
    assert "sex / relationship 11 (夫) needs sex 1 (男性), but it is 2 (女性)" in result.output


# ---------------------------------------------------------------- push holds, and lets go once fixed

def test_push_holds_the_record_and_sends_the_rest_then_lets_it_go_once_fixed(w):
    household(w, A, "H1")
    head = resident(w, A, 1, household_no="H1", relationship="02")
    stray = resident(w, A, 2, household_no="H2", relationship="02")
    result = w.push(A)
    (held,) = result.held
    assert held.startswith("huji.persons / 110105") and held.endswith(
        "/ household_no: H2 is no record of huji.households (户); enter that record first, or correct the household_no")
    assert stray not in held
    merge.merge(w.store, w.bundles, SECRET, w.all_domains)
    assert _people(w.store, w.all_domains) == {head}

    household(w, A, "H2")  # the household is entered: the person goes with the next push
    result = w.push(A)
    assert result.held == []
    merge.merge(w.store, w.bundles[-1:], SECRET, w.all_domains)
    assert _people(w.store, w.all_domains) == {head, stray}


def test_push_holds_a_husband_coded_female_until_corrected(w):
    household(w, A, "H1")
    resident(w, A, 1, household_no="H1", relationship="02")
    husband = resident(w, A, 2, sex="2", household_no="H1", relationship="11")
    (held,) = w.push(A).held
    assert held.endswith("/ sex: relationship 11 (夫) needs sex 1 (男性), but it is 2 (女性); correct one of them")
    conn = sqlite3.connect(w.folders[A] / "huji.db")
    with conn:
        conn.execute("UPDATE persons SET relationship = '12' WHERE id_number = ?", (husband,))  # she is the wife
    conn.close()
    assert w.push(A).held == []


def _people(store, domains) -> set[str]:
    rows, _ = snapshot(store, domains)
    return {dict(cells)["id_number"] for (tbl, _), (exists, cells) in rows.items()
            if tbl == "huji.persons" and exists}


# ---------------------------------------------------------------- the office warns, never refuses

def test_office_warns_of_a_broken_reference_and_applies_both_bundles_in_either_order(w, tmp_path):
    """B keeps no houses: its migrant's house (in A's fangwu.db) is not checked there, and goes."""
    w.freeze_empty_store()
    other = w.add_community(B, set_up=False)
    for name in ("fangwu", "dizhi", "wangge"):
        (other.path / f"{name}.db").unlink()
    w.set_up(B)
    house(w, A)
    lodger = migrant(w, B, 1)
    assert w.push(B).held == []
    assert w.push(A).held == []
    b_bundle, a_bundle = w.bundles
    for name in ("fresh-b", "fresh-a"):  # enrolled anew: B joined after the store was frozen
        store = w.fresh_store(name)
        office.enroll(store, B, other.path / f"{B}.pub.json")
    first = _merged(w, "fresh-b", [b_bundle])
    (line,) = _warnings(first, w)
    assert line == (f"{B} / liudong.migrants / {lodger[:6]}********{lodger[-4:]} / house_code: "
                    f"{HOUSE} is no record of fangwu.houses (房屋); enter that record first, or correct the house_code")
    assert lodger not in str(status_lib.office_status(first, w.all_domains, office.load_keyring(first, SECRET)).as_dict())
    _merged(w, "fresh-b", [a_bundle])
    _merged(w, "fresh-a", [a_bundle, b_bundle])
    assert snapshot(first, w.all_domains) == snapshot(tmp_path / "fresh-a", w.all_domains)
    assert _warnings(first, w) == []


def _merged(w, name, bundles):
    store = w.root / name
    for path in bundles:
        summary = merge.merge(store, [path], SECRET, w.all_domains)
        assert summary.rejected == []
    return store


def _warnings(store, w) -> list[str]:
    report = status_lib.office_status(store, w.all_domains, office.load_keyring(store, SECRET))
    (lines,) = [lines for heading, lines in report.sections if heading.startswith("Record rules broken")]
    return report.facts["record_rules"]


def test_office_status_without_the_keyring_says_the_rules_were_not_checked(w):
    report = status_lib.office_status(w.store, w.all_domains, None)
    (lines,) = [lines for heading, lines in report.sections if heading.startswith("Record rules broken")]
    assert "not checked" in lines[0]


# ---------------------------------------------------------------- the codes, to their standards

@pytest.mark.parametrize("code, segment", [
    ("441900000001", "township segment 000"),
    ("441900600001", "township segment 600"),
    ("441900003000", "village segment 000"),
    ("441900003400", "village segment 400"),
])
def test_a_community_code_with_a_bad_segment_is_refused(w, code, segment):
    with pytest.raises(Invalid, match=segment):
        community_code(code)
    with pytest.raises(SyncdbError, match=segment):
        office.enroll(w.store, code, w.folders[A] / f"{A}.pub.json")
    resident(w, A, 1)
    conn = sqlite3.connect(w.folders[A] / "huji.db")
    with conn:
        conn.execute("UPDATE persons SET community_code = ?", (code,))
    conn.close()
    (line,) = findings(w)
    assert f"/ community_code / has {segment}" in line


@pytest.mark.parametrize("code", ["441900003001", "110105001001", "441900100201", "441900599399", "820000001001"])
def test_community_codes_the_bureau_uses_pass(code):
    assert community_code(code) == []


def test_division_code():
    assert division_code("441900") == [] and division_code("110105") == [] and division_code("820000") == []
    for bad, words in (("44190", "6 digits"), ("４４１９００", "full-width"), ("991900", "no province code"),
                       ("701234", "no province code")):
        with pytest.raises(Invalid, match=words):
            division_code(bad)


def test_uscc_check_character():
    assert uscc("91110000600037341L") == [] and uscc("91441900MA4UJ5XK29") == []
    for bad, words in (("91110000600037341M", "expected L, got M"), ("91441900ma4uj5xk29", "lowercase"),
                       ("9144190OMA4UJ5XK29", "GB 32100"), ("91441900MA4UJ5XK2", "18 characters"),
                       (" 91110000600037341L", "spaces")):
        with pytest.raises(Invalid, match=words):
            uscc(bad)


def test_uscc_without_python_stdnum_gives_the_same_check_character(monkeypatch):
    from syncdb import validate

    codes = ["91110000600037341", "91441900MA4UJ5XK2", "12100000400000624", "Y1441900MA00000XX"]
    with_stdnum = [validate._uscc_check_character(c) for c in codes]
    monkeypatch.setattr(validate, "_stdnum_uscc", None)
    assert [validate._uscc_check_character(c) for c in codes] == with_stdnum
