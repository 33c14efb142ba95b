"""`syncdb export` as a clerk opens it in Excel: Chinese headers, codes with their meanings,
ID numbers and 户号 kept as text; `--where` in the words a clerk uses."""

from __future__ import annotations

import csv
import datetime
import io
import os
import sqlite3
import subprocess
import tempfile

import openpyxl
import pytest
from click.testing import CliRunner

from conftest import SECRET, SYNCDB, World, id_number, person
from syncdb import merge
from syncdb.cli import cli

A = "441900003001"
HOUSEHOLD = "0012345"  # 户号 with leading zeros, which Excel would drop from a number
HEAD = id_number(4, "2")  # ends in X
MEMBER = id_number(3, "1")  # 18 digits: Excel would show 4.41900E+17


@pytest.fixture
def office(tmp_path, domains):
    """One community's household (户号 0012345): a woman head whose ID number ends in X and her husband;
    and a resident who moved out."""
    w = World(tmp_path, domains, codes=[A])
    conn = sqlite3.connect(w.folders[A] / "huji.db")
    with conn:
        conn.execute("INSERT INTO households (household_no, household_type, head_id_number, address, community_code) "
                     "VALUES (?, 'family', ?, '东城街道1号', ?)", (HOUSEHOLD, HEAD, A))
    conn.close()
    assert HEAD.endswith("X") and MEMBER.isdigit()
    w.insert(A, person(4, A, id_number=HEAD, sex="2", household_no=HOUSEHOLD, relationship="02",
                       marital_status="20", phone="13800138000"))
    w.insert(A, person(3, A, id_number=MEMBER, household_no=HOUSEHOLD, relationship="11", ethnicity="03"))
    w.insert(A, person(5, A, status="moved_out"))
    w.push(A)
    merge.merge(w.store, w.bundles, SECRET, domains)
    key_file = tmp_path / "key"
    key_file.write_bytes(SECRET.key_file_bytes)
    return w.store, {"SYNCDB_KEY_FILE": str(key_file)}


def export(office, *args):
    store, env = office
    return CliRunner().invoke(cli, ["export", str(store), *args], env=env)


def sheet_rows(path):
    sheet = openpyxl.load_workbook(path).active
    return sheet, [[cell for cell in row] for row in sheet.iter_rows()]


def test_xlsx_keeps_id_numbers_and_household_numbers_as_text(office, tmp_path):
    out = tmp_path / "人员.xlsx"
    result = export(office, "huji.persons", "--format", "xlsx", "-o", str(out))
    assert result.exit_code == 0, result.output
    sheet, rows = sheet_rows(out)
    header = [c.value for c in rows[0]]
    assert header[:6] == ["公民身份号码", "姓名", "性别", "民族", "出生日期", "户号"]
    assert "id_number" not in header and "人员状态" in header
    by_id = {row[0].value: {h: c for h, c in zip(header, row)} for row in rows[1:]}
    assert set(by_id) == {HEAD, MEMBER, id_number(5)}
    head, member = by_id[HEAD], by_id[MEMBER]
    for cell in (head["公民身份号码"], member["公民身份号码"], head["户号"], member["户号"], head["联系电话"]):
        assert cell.data_type == "s" and cell.number_format == "@", cell.value
    assert member["公民身份号码"].value == MEMBER and len(MEMBER) == 18
    assert head["户号"].value == HOUSEHOLD and head["联系电话"].value == "13800138000"
    assert head["性别"].value == "2 女性" and member["性别"].value == "1 男性"
    assert member["民族"].value == "03 回族" and head["民族"].value == "01 汉族"
    assert head["与户主关系"].value == "02 户主" and member["与户主关系"].value == "11 夫"
    assert head["婚姻状况"].value == "20 已婚"
    assert head["人员状态"].value == "正常" and by_id[id_number(5)]["人员状态"].value == "迁出"
    assert head["出生日期"].value == datetime.datetime(1980, 1, 1)  # a date Excel sorts as one
    assert sheet.title == "人员" and sheet.freeze_panes == "A2"


def test_xlsx_of_households_and_no_temporary_file(office, tmp_path):
    """The workbook is made in memory: with no temporary folder to write to, the export still works."""
    out = tmp_path / "户.xlsx"
    before = tempfile.tempdir
    tempfile.tempdir = str(tmp_path / "no-such-folder")  # any temporary file would fail to be made
    try:
        result = export(office, "huji.households", "--format", "xlsx", "-o", str(out))
    finally:
        tempfile.tempdir = before
    assert result.exit_code == 0, result.output
    _sheet, rows = sheet_rows(out)
    header = [c.value for c in rows[0]]
    row = {h: c for h, c in zip(header, rows[1])}
    assert row["户号"].value == HOUSEHOLD and row["户号"].number_format == "@"
    assert row["户别"].value == "家庭户" and row["户主公民身份号码"].value == HEAD


def test_csv_reads_in_excel_as_the_site_does(office, tmp_path):
    out = tmp_path / "人员.csv"
    result = export(office, "huji.persons", "-o", str(out))
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data.startswith("\ufeff".encode())
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    by_id = {r["公民身份号码"]: r for r in rows}
    # Digits only: written ="…" so that Excel keeps them text; an ID number ending in X is text anyway.
    assert set(by_id) == {HEAD, f'="{MEMBER}"', f'="{id_number(5)}"'}
    head = by_id[HEAD]
    assert head["户号"] == f'="{HOUSEHOLD}"' and head["性别"] == "2 女性" and head["人员状态"] == "正常"
    assert head["姓名"] == "居民4" and head["出生日期"] == "1980-01-01"
    assert '"=""0012345"""' in data.decode("utf-8-sig")  # as Excel reads a formula in a quoted field


def test_raw_csv_and_json_keep_names_and_codes_for_programs(office, tmp_path):
    raw = export(office, "huji.persons", "--raw", "--where", "status=normal")
    assert raw.exit_code == 0, raw.output
    rows = list(csv.DictReader(io.StringIO(raw.stdout.lstrip("\ufeff"))))
    assert {r["id_number"] for r in rows} == {HEAD, MEMBER}
    assert {r["sex"] for r in rows} == {"1", "2"} and {r["status"] for r in rows} == {"normal"}
    lines = export(office, "huji.persons", "--format", "json", "--where", "人员状态=迁出")
    assert lines.exit_code == 0, lines.output
    assert '"status": "moved_out"' in lines.stdout and id_number(5) in lines.stdout and HEAD not in lines.stdout


@pytest.mark.parametrize("where, found", [
    (["人员状态=正常"], {HEAD, MEMBER}),
    (["status=normal"], {HEAD, MEMBER}),
    (["性别=女"], {HEAD}),
    (["性别=女性"], {HEAD}),
    (["sex=2"], {HEAD}),
    (["性别=1 男性"], {MEMBER, id_number(5)}),
    (["民族=回族"], {MEMBER}),
    (["人员状态=迁出"], {id_number(5)}),
    (["户号=0012345", "与户主关系=户主"], {HEAD}),
])
def test_where_takes_labels_and_meanings(office, where, found):
    args = [a for w in where for a in ("--where", w)]
    result = export(office, "huji.persons", "--raw", *args)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout.lstrip("\ufeff"))))
    assert {r["id_number"] for r in rows} == found


def test_an_unknown_label_or_meaning_names_the_choices(office):
    unknown_column = export(office, "huji.persons", "--where", "性别码=2")
    assert unknown_column.exit_code == 1
    assert "性别码" in unknown_column.output and "性别 (sex)" in unknown_column.output
    assert "人员状态 (status)" in unknown_column.output
    unknown_meaning = export(office, "huji.persons", "--where", "人员状态=在册")
    assert unknown_meaning.exit_code == 1
    assert "在册" in unknown_meaning.output
    assert all(word in unknown_meaning.output for word in ("normal 正常", "moved_out 迁出", "deceased 死亡"))
    ambiguous = export(office, "huji.persons", "--where", "婚姻状况=再")  # 再婚 only: found
    assert ambiguous.exit_code == 0, ambiguous.output
    two = export(office, "huji.persons", "--where", "婚姻状况=未")  # 未婚 and 未说明的婚姻状况
    assert two.exit_code == 1 and "未婚" in two.output and "未说明的婚姻状况" in two.output


def test_a_table_that_is_not_there_is_a_usage_error(office):
    assert export(office, "huji.nothing").exit_code == 2


def test_the_refusal_is_in_chinese_for_a_chinese_clerk(office):
    store, env = office
    result = subprocess.run([SYNCDB, "export", str(store), "huji.persons", "--where", "人员状态=在册"],
                            env={**os.environ, **env, "SYNCDB_LANG": "zh_CN"}, capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert "“在册”不是有效的人员状态" in result.stderr and "normal 正常" in result.stderr
