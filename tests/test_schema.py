import shutil
import sqlite3

import pytest
from click.testing import CliRunner

from syncdb import workdir
from syncdb.cli import cli
from syncdb.errors import SchemaError
from syncdb.schema import DEFAULT_SCHEMAS, all_tables, load_domain, load_domains

DESIGN_COLUMNS = {
    "huji.households": ["household_no", "household_type", "head_id_number", "address", "community_code"],
    "huji.persons": ["id_number", "name", "sex", "ethnicity", "birth_date", "household_no", "relationship",
                     "marital_status", "phone", "address", "community_code", "status"],
    "shebao.enrolments": ["id_number", "insurance_type", "status", "start_date", "end_date", "employer",
                          "monthly_base", "community_code"],
    "minzheng.benefits": ["id_number", "benefit_type", "status", "monthly_amount", "start_date", "end_date",
                          "community_code"],
}


def test_shipped_domains_carry_the_designed_tables():
    domains = load_domains()
    assert {"huji", "shebao", "minzheng", "liudong", "wangge", "dizhi", "fangwu", "danwei"} <= set(domains)
    for qualified, columns in DESIGN_COLUMNS.items():
        domain, table = qualified.split(".")
        t = domains[domain].tables[table]
        assert list(t.columns)[: len(columns)] == columns or set(columns) <= set(t.columns)
        assert t.owner == "community_code"
    assert domains["shebao"].tables["enrolments"].key == ("id_number", "insurance_type")
    assert domains["minzheng"].tables["benefits"].key == ("id_number", "benefit_type")
    # minzheng v2 (issue 11): 低保/特困 per household in assistance; 优抚 went to 退役军人事务 in 2018.
    assert set(domains["minzheng"].code_table("benefit_type")) == {"disability", "elderly"}
    assistance = domains["minzheng"].tables["assistance"]
    assert assistance.key == ("household_no", "assistance_type")
    assert assistance.columns["household_no"].references == "huji.households"
    assert set(domains["minzheng"].code_table("assistance_type")) == {"1", "2", "3", "4"}
    assert assistance.columns["members"].type == "integer"
    persons = domains["huji"].tables["persons"]
    assert persons.key == ("id_number",)
    assert {"id_number", "name", "phone", "address"} <= set(persons.sensitive_columns)
    assert persons.columns["id_number"].required  # key columns always are
    assert domains["huji"].code_table("person_status").keys() == {"normal", "moved_out", "deceased"}


def test_a_new_domain_is_just_a_file(tmp_path):
    """liudong.toml ships as a plain file; copying only it gives a working domain."""
    folder = tmp_path / "schemas"
    folder.mkdir()
    shutil.copy(DEFAULT_SCHEMAS / "liudong.toml", folder)
    domains = load_domains(folder)
    assert list(domains) == ["liudong"]
    # Its references into dizhi and fangwu, absent here, are accepted and not checked.
    assert domains["liudong"].tables["migrants"].columns["house_code"].references == "fangwu.houses"
    workdir.create(tmp_path / "c", domains)
    conn = sqlite3.connect(tmp_path / "c" / "liudong.db")
    assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")} == {"migrants"}


def test_the_domains_the_office_works_by():
    """一标三实: grids, standard addresses, houses, units and migrants, each one file (issue 11)."""
    domains = load_domains()
    assert {"wangge", "dizhi", "fangwu", "danwei", "liudong"} <= set(domains)
    keys = {t.qualified: t.key for t in all_tables(domains)}
    assert keys["wangge.grids"] == ("grid_code",) and keys["dizhi.addresses"] == ("address_code",)
    assert keys["fangwu.houses"] == ("house_code",) and keys["danwei.units"] == ("credit_code",)
    assert "liudong.rentals" not in keys  # rentals are fangwu.houses with rented = "1"
    references = {f"{t.qualified}.{c.name}": c.references for t in all_tables(domains)
                  for c in t.columns.values() if c.references}
    assert references == {
        "dizhi.addresses.grid_code": "wangge.grids",
        "fangwu.houses.address_code": "dizhi.addresses",
        "danwei.units.address_code": "dizhi.addresses",
        "liudong.migrants.address_code": "dizhi.addresses",
        "liudong.migrants.house_code": "fangwu.houses",
        "huji.households.head_id_number": "huji.persons",
        "huji.households.address_code": "dizhi.addresses",
        "huji.persons.household_no": "huji.households",
        "huji.persons.address_code": "dizhi.addresses",
        "minzheng.assistance.household_no": "huji.households",  # 救助 per household (minzheng v2)
    }
    assert domains["dizhi"].tables["addresses"].sensitive_columns == []
    assert domains["fangwu"].tables["houses"].id_columns == ["owner_id_number"]
    assert domains["danwei"].tables["units"].columns["credit_code"].validator == "uscc"
    migrants = domains["liudong"].tables["migrants"]
    assert migrants.columns["id_number"].matches == {"birth_date": "birth_date", "sex": "sex"}
    assert {"id_number", "name", "permit_no", "phone"} == set(migrants.sensitive_columns)
    for table in all_tables(domains):
        assert table.owner == "community_code"
        assert all(c.label and not c.label.isascii() for c in table.columns.values())


def test_huji_v2_only_adds():
    """huji gains columns and rules; no column of version 1 is removed, renamed or recoded."""
    huji = load_domains()["huji"]
    assert huji.version == 2
    persons = huji.tables["persons"]
    assert list(persons.columns)[:12] == DESIGN_COLUMNS["huji.persons"]
    assert list(persons.columns)[12:] == [
        "former_name", "native_place", "education", "workplace", "address_code", "move_in_date", "death_date",
        "deregistration_reason", "deregistration_destination"]
    assert list(huji.tables["households"].columns)[:5] == DESIGN_COLUMNS["huji.households"]
    assert huji.code_table("education")["11"] == "博士研究生毕业" and huji.code_table("education")["90"] == "其他"
    assert persons.one_per.group == "household_no" and persons.one_per.value == "02"
    implies = persons.columns["relationship"].implies
    assert implies["11"] == {"sex": "1"} and implies["12"] == {"sex": "2"}
    assert implies["28"] == {"sex": "1"} and implies["38"] == {"sex": "2"}  # 女婿, 儿媳
    assert not {"01", "02", "10", "99"} & set(implies)  # 本人, 户主, 配偶, 非亲属 name no sex
    assert huji.tables["households"].columns["head_id_number"].same == {"household_no": "household_no"}


def test_fingerprint_is_stable_and_tracks_meaning(tmp_path):
    original = load_domain(DEFAULT_SCHEMAS / "huji.toml")
    text = (DEFAULT_SCHEMAS / "huji.toml").read_text(encoding="utf-8")
    (tmp_path / "huji.toml").write_text("# a comment\n" + text, encoding="utf-8")
    assert load_domain(tmp_path / "huji.toml").fingerprint == original.fingerprint
    (tmp_path / "huji.toml").write_text(text.replace('sensitive = true, required = true, policy = "manual"',
                                                     'required = true, policy = "manual"'), encoding="utf-8")
    assert load_domain(tmp_path / "huji.toml").fingerprint != original.fingerprint


BASE = """
label = "测试"
version = 1
[tables.things]
label = "东西"
key = ["thing_id"]
owner = "community_code"
[tables.things.columns]
thing_id = { type = "text", label = "编号" }
community_code = { type = "text", label = "社区代码", validator = "community_code" }
"""


@pytest.mark.parametrize("change, table, column, words", [
    (('thing_id = { type = "text", label = "编号" }', 'thing_id = { type = "text", label = "编号", policy = "newest" }'),
     "things", "thing_id", "unknown conflict policy 'newest'"),
    (('key = ["thing_id"]', 'key = ["thing_no"]'), "things", "thing_no", "not a column"),
    (('owner = "community_code"', 'owner = "community"'), "things", "community", "'owner'"),
    (('type = "text", label = "编号"', 'type = "txt", label = "编号"'), "things", "thing_id", "unknown type 'txt'"),
    (('label = "编号"', 'label = "编号", codes = "colours"'), "things", "thing_id", "unknown code table 'colours'"),
    (('label = "编号"', 'label = "编号", validator = "isbn"'), "things", "thing_id", "unknown validator 'isbn'"),
    (('label = "编号"', 'label = "编号", sensitve = true'), "things", "thing_id", "unknown keyword 'sensitve'"),
    (('label = "编号"', 'label = "编号", matches = { sex = "sex" }'), "things", "thing_id", "'matches' only applies"),
    (('label = "东西"', 'label = "东西"\npolicy = "coinflip"'), "things", None, "unknown conflict policy 'coinflip'"),
    (('version = 1', 'version = "one"'), None, None, "'version' must be a positive integer"),
    (('label = "测试"', ''), None, None, "'label' must be a non-empty string"),
])
def test_schema_mistakes_name_file_table_and_column(tmp_path, change, table, column, words):
    path = tmp_path / "things.toml"
    old, new = change
    assert old in BASE
    path.write_text(BASE.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(SchemaError) as e:
        load_domain(path)
    message = str(e.value)
    assert str(path) in message and words in message
    if table:
        assert f"table '{table}'" in message
    if column:
        assert f"column '{column}'" in message


def test_broken_toml_names_the_file(tmp_path):
    (tmp_path / "bad.toml").write_text("label = \n", encoding="utf-8")
    with pytest.raises(SchemaError, match="bad.toml.*not valid TOML"):
        load_domains(tmp_path)


def test_empty_schemas_folder_is_refused(tmp_path):
    with pytest.raises(SchemaError, match="no \\*.toml"):
        load_domains(tmp_path)


def test_extra_policies_from_plugins_are_accepted(tmp_path):
    path = tmp_path / "things.toml"
    path.write_text(BASE.replace('label = "编号" }', 'label = "编号", policy = "transfer" }', 1), encoding="utf-8")
    with pytest.raises(SchemaError):
        load_domain(path)
    assert load_domain(path, extra_policies=["transfer"]).tables["things"].columns["thing_id"].policy == "transfer"


def test_schemas_check_command(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["schemas", "check"])
    assert result.exit_code == 0, result.output
    assert "huji.toml: huji (户籍)" in result.output
    (tmp_path / "things.toml").write_text(BASE.replace('key = ["thing_id"]', 'key = ["nope"]'), encoding="utf-8")
    result = runner.invoke(cli, ["schemas", "check", "--schemas", str(tmp_path)])
    assert result.exit_code == 1
    assert "table 'things', column 'nope'" in result.output


@pytest.mark.slow
def test_a_wheel_ships_the_schemas_and_plugins(tmp_path):
    """`pip install .` (not editable) must find the shipped domains and the transfer rule."""
    import subprocess
    import sys
    import zipfile

    root = DEFAULT_SCHEMAS.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("syncdb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("schemas/huji.toml", "schemas/liudong.toml", "plugins/transfer.py"):
        assert any(n.endswith(f".data/data/share/syncdb/{expected}") for n in names), expected


# The record rules (issue 11): references, implies, one_per.
PEOPLE = """
label = "人"
version = 1
[tables.families]
label = "户"
key = ["family_no"]
owner = "community_code"
[tables.families.columns]
family_no = { type = "text", label = "户号" }
head = { type = "text", label = "户主", references = { table = "people.members", same = { family_no = "family_no" } } }
community_code = { type = "text", label = "社区代码", validator = "community_code" }
[tables.members]
label = "成员"
key = ["member_id"]
owner = "community_code"
one_per = { group = "family_no", column = "relationship", value = "02" }
[tables.members.columns]
member_id = { type = "text", label = "编号" }
family_no = { type = "text", label = "户号", references = "people.families" }
sex = { type = "text", label = "性别", codes = "sex" }
relationship = { type = "text", label = "关系", codes = "relationship", implies = { "11" = { sex = "1" }, "12" = { sex = "2" } } }
native = { type = "text", label = "籍贯", validator = "division_code" }
employer = { type = "text", label = "单位", validator = "uscc" }
community_code = { type = "text", label = "社区代码", validator = "community_code" }
[tables.visits]
label = "来访"
key = ["member_id", "day"]
owner = "community_code"
[tables.visits.columns]
member_id = { type = "text", label = "编号" }
day = { type = "date", label = "日期" }
community_code = { type = "text", label = "社区代码", validator = "community_code" }
"""


def test_record_rules_are_read_into_columns_and_tables(tmp_path):
    (tmp_path / "people.toml").write_text(PEOPLE, encoding="utf-8")
    people = load_domains(tmp_path)["people"]
    members = people.tables["members"]
    assert members.columns["family_no"].references == "people.families"
    assert members.columns["family_no"].same == {}
    head = people.tables["families"].columns["head"]
    assert (head.references, head.same) == ("people.members", {"family_no": "family_no"})
    assert members.columns["relationship"].implies == {"11": {"sex": "1"}, "12": {"sex": "2"}}
    assert (members.one_per.group, members.one_per.column, members.one_per.value) == ("family_no", "relationship", "02")
    assert members.columns["native"].validator == "division_code"
    assert members.columns["employer"].validator == "uscc"


@pytest.mark.parametrize("old, new, table, column, words", [
    ('implies = { "11"', 'implies = { "x1"', "members", "relationship", "code 'x1', which is not in code table 'relationship'"),
    ('{ "11" = { sex = "1" }', '{ "11" = { gender = "1" }', "members", "relationship", "names 'gender'"),
    ('label = "编号" }\nfamily_no', 'label = "编号", implies = { "1" = { sex = "1" } } }\nfamily_no', "members",
     "member_id", "'implies' only applies to a column with a code table"),
    ('group = "family_no"', 'group = "household_no"', "members", None, "'one_per' group names 'household_no'"),
    ('column = "relationship"', 'column = "relation"', "members", None, "'one_per' column names 'relation'"),
    ('value = "02" }', 'value = 2 }', "members", None, "'one_per' must be"),
    ('same = { family_no = "family_no" }', 'same = { family = "family_no" }', "families", "head",
     "'same' names 'family', which is not a column of the table"),
    ('references = "people.families"', 'references = "families"', "members", "family_no", "\"domain.table\""),
    ('references = "people.families"', 'references = { tabel = "people.families" }', "members", "family_no",
     "not tabel"),
])
def test_record_rule_mistakes_name_file_table_and_column(tmp_path, old, new, table, column, words):
    assert old in PEOPLE
    (tmp_path / "people.toml").write_text(PEOPLE.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(SchemaError) as e:
        load_domains(tmp_path)
    message = str(e.value)
    assert "people.toml" in message and words in message, message
    assert f"table '{table}'" in message
    if column:
        assert f"column '{column}'" in message


@pytest.mark.parametrize("old, new, words", [
    ('references = "people.families"', 'references = "people.familes"', "domain 'people' has no table 'familes'"),
    ('references = "people.families"', 'references = "people.visits"', "is not one column"),
    ('same = { family_no = "family_no" }', 'same = { family_no = "family" }',
     "'same' names 'family', which is not a column of people.members"),
])
def test_references_are_checked_against_the_referenced_table(tmp_path, old, new, words):
    (tmp_path / "people.toml").write_text(PEOPLE.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(SchemaError, match=words):
        load_domains(tmp_path)


def test_a_reference_into_a_domain_not_in_the_folder_is_left_unchecked(tmp_path):
    """A folder may hold only some domains (a new domain is just a file)."""
    (tmp_path / "people.toml").write_text(
        PEOPLE.replace('references = "people.families"', 'references = "dizhi.addresses"'), encoding="utf-8")
    assert load_domains(tmp_path)["people"].tables["members"].columns["family_no"].references == "dizhi.addresses"


def test_references_in_the_shipped_schemas_resolve():
    domains = load_domains()
    for table in all_tables(domains):
        for column in table.columns.values():
            if column.references:
                target_domain, target_table = column.references.split(".")
                assert len(domains[target_domain].tables[target_table].key) == 1


@pytest.mark.parametrize("old, new", [
    (', references = "people.families"', ''),
    (', same = { family_no = "family_no" }', ''),
    ('"12" = { sex = "2" }', '"12" = { sex = "1" }'),
    ('value = "02"', 'value = "01"'),
])
def test_fingerprint_covers_the_record_rules(tmp_path, old, new):
    path = tmp_path / "people.toml"
    path.write_text(PEOPLE, encoding="utf-8")
    before = load_domain(path).fingerprint
    path.write_text(PEOPLE.replace(old, new, 1), encoding="utf-8")
    assert load_domain(path).fingerprint != before
