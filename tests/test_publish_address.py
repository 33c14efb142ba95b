"""`syncdb publish`: the standard address page, and the person page's address, house and grid
(issue 11 item 6). Real Datasette on 127.0.0.1, over HTTP, with staff signed in."""

import hashlib
import re
import sqlite3

import pytest
import requests

from conftest import id_number
from syncdb import merge
from syncdb.projection import MASKED_DB, PERSON_COLUMN, PLAIN_DB
from syncdb.schema import schemas_dir

CODE = "441900003001"
GRID = CODE + "001"
ADDRESS = CODE + "000123"  # 莞太路12号3栋2单元501房
ELSEWHERE = CODE + "000124"  # 莞太路14号
HOUSE = ADDRESS  # the one house on the address: its code is the address code
READ_AS = "莞太路12号3栋2单元501房"
WORKER = "陈秀英"
MIGRANT = {"id_number": id_number(41, "2"), "name": "覃春燕"}  # lives in the house, no address code of her own
MOVED_IN = {"id_number": id_number(42), "name": "蒙志刚"}  # names the address, no house
AWAY = {"id_number": id_number(43), "name": "韦国强"}  # lives at the other address
OWNER = {"id_number": id_number(40), "name": "黄志强"}
HEAD = {"id_number": id_number(30), "name": "张伟"}  # 户主 of H001, registered at the address
WIFE = {"id_number": id_number(31, "2"), "name": "李娜"}
NEIGHBOUR = {"id_number": id_number(33), "name": "陈国华"}  # 户主 of H002, at the other address


def _insert(path, table, row):
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))
    conn.close()


def _migrant(who, sex, **places):
    return dict(who, sex=sex, birth_date="1980-01-01", native_division="450521", reason="1",
                arrival_date="2023-03-01", permit_no="4419" + who["id_number"][-8:], permit_expires="2025-03-01",
                phone="13700000041", community_code=CODE, **places)


@pytest.fixture
def street(office_store, make_community, domains, syncdb_secret):
    """One community with a grid, two addresses, a rented house, a household registered at the address
    and one at the other, and migrants living there (in the house, or at the address) and elsewhere."""
    for needed in ("wangge", "dizhi", "fangwu", "liudong"):
        assert needed in domains, f"schemas/{needed}.toml is missing"
    a = make_community(CODE)
    _insert(a.path / "wangge.db", "grids", {"grid_code": GRID, "name": "第一网格", "worker_name": WORKER,
                                           "worker_phone": "13912345678", "community_code": CODE})
    for code, door, building, unit, room in ((ADDRESS, "12", "3", "2", "501"), (ELSEWHERE, "14", None, None, None)):
        _insert(a.path / "dizhi.db", "addresses", {
            "address_code": code, "road": "莞太路", "door_no": door, "building": building, "unit": unit,
            "room": room, "grid_code": GRID, "community_code": CODE})
    _insert(a.path / "fangwu.db", "houses", {
        "house_code": HOUSE, "address_code": ADDRESS, "use": "10", "owner_id_number": OWNER["id_number"],
        "owner_name": OWNER["name"], "rented": "1", "rooms": 3, "capacity": 4, "landlord_phone": "13800001111",
        "rental_registered": "2023-01-01", "rental_expires": "2026-01-01", "community_code": CODE})
    for household, head, code in (("H001", HEAD, ADDRESS), ("H002", NEIGHBOUR, ELSEWHERE)):
        _insert(a.path / "huji.db", "households", {
            "household_no": household, "household_type": "family", "head_id_number": head["id_number"],
            "address": "东莞市南城街道莞太路", "address_code": code, "community_code": CODE})
    for who, sex, household, relationship, code in ((HEAD, "1", "H001", "02", ADDRESS),
                                                     (WIFE, "2", "H001", "12", ADDRESS),
                                                     (NEIGHBOUR, "1", "H002", "02", ELSEWHERE)):
        _insert(a.path / "huji.db", "persons", dict(
            who, sex=sex, ethnicity="01", birth_date="1980-01-01", household_no=household,
            relationship=relationship, marital_status="20", phone="13600000030", address="东莞市南城街道莞太路",
            address_code=code, community_code=CODE, status="normal"))
    _insert(a.path / "liudong.db", "migrants", _migrant(MIGRANT, "2", house_code=HOUSE))
    _insert(a.path / "liudong.db", "migrants", _migrant(MOVED_IN, "1", address_code=ADDRESS))
    _insert(a.path / "liudong.db", "migrants", _migrant(AWAY, "1", address_code=ELSEWHERE))
    result = a.export()
    summary = merge.merge(office_store, [result.path], syncdb_secret, domains)
    # 1 grid, 2 addresses, 1 house, 2 households, 3 registered persons, 3 migrants
    assert summary.rejected == [] and summary.changes == 12, summary
    return office_store, HEAD["id_number"]


def _files(store):
    """store.db byte for byte, and what its WAL holds (a reader leaves an empty one behind, never a frame)."""
    wal = store / "store.db-wal"
    return hashlib.sha256((store / "store.db").read_bytes()).hexdigest(), wal.stat().st_size if wal.exists() else 0


def _token(session, url, table, id_column, real_id):
    rows = session.get(f"{url}/{PLAIN_DB}/{table}.json", params={"_shape": "array", id_column: real_id}).json()
    assert len(rows) == 1, rows
    return str(rows[0][PERSON_COLUMN])  # as the person page's address spells it


def _views(store):
    conn = sqlite3.connect(store / "publish.db")
    try:
        return [tuple(row) for row in conn.execute("SELECT actor, page FROM page_views ORDER BY id")]
    finally:
        conn.close()


def test_the_address_page_lists_registered_residents_and_migrants_masked_or_logged(street, publisher):
    store, registered = street
    before = _files(store)
    site = publisher(store, "--schemas", str(schemas_dir()))
    assert requests.get(f"{site.url}/-/address/{ADDRESS}", allow_redirects=False).status_code == 302
    wang = site.sign_in("wangfang")
    person = _token(wang, site.url, "户籍_人员", "公民身份号码", registered)
    migrant = _token(wang, site.url, "流动人口_流动人员", "公民身份号码", MIGRANT["id_number"])
    moved_in = _token(wang, site.url, "流动人口_流动人员", "公民身份号码", MOVED_IN["id_number"])
    away = _token(wang, site.url, "流动人口_流动人员", "公民身份号码", AWAY["id_number"])
    logged = len(_views(store))

    # Plaintext for view-pii, and on record.
    page = wang.get(f"{site.url}/-/address/{ADDRESS}")
    assert page.status_code == 200, page.text[:300]
    assert READ_AS in page.text and "第一网格" in page.text and WORKER in page.text
    assert "住宅" in page.text and "page-view log" in page.text
    for token in (person, migrant, moved_in):
        assert f'href="/-/person/{token}"' in page.text
    for elsewhere in (away, AWAY["name"], NEIGHBOUR["name"], NEIGHBOUR["id_number"]):
        assert elsewhere not in page.text
    assert registered in page.text and WIFE["name"] in page.text
    assert MIGRANT["name"] in page.text and MIGRANT["id_number"] in page.text
    assert _views(store)[logged:] == [("wangfang", f"/-/address/{ADDRESS}")]

    # Masked for staff without it, exactly as the tables are, and not logged.
    li = site.sign_in("lilei")
    page = li.get(f"{site.url}/-/address/{ADDRESS}")
    assert page.status_code == 200 and READ_AS in page.text and "Sensitive values are masked" in page.text
    for token in (person, migrant, moved_in):
        assert f'href="/-/person/{token}"' in page.text
    for secret in (WORKER, "13912345678", registered, HEAD["name"], WIFE["name"], MIGRANT["name"],
                   MIGRANT["id_number"], MOVED_IN["name"], OWNER["name"], "13800001111"):
        assert secret not in page.text, secret
    assert "陈*英" in page.text and "覃*燕" in page.text and re.search(r"110105\*{8}\d{3}[\dX]", page.text)

    # An unknown code is a 404, logged for no one.
    assert wang.get(f"{site.url}/-/address/{CODE}999999").status_code == 404
    assert li.get(f"{site.url}/-/address/{CODE}999999").status_code == 404
    assert len(_views(store)) == logged + 1
    site.stop()
    assert _files(store) == before


def test_the_person_page_shows_the_address_house_and_grid(street, publisher):
    store, registered = street
    before = _files(store)
    site = publisher(store, "--schemas", str(schemas_dir()))
    wang = site.sign_in("wangfang")
    person = _token(wang, site.url, "户籍_人员", "公民身份号码", registered)
    migrant = _token(wang, site.url, "流动人口_流动人员", "公民身份号码", MIGRANT["id_number"])

    li = site.sign_in("lilei")
    for token in (person, migrant):
        page = li.get(f"{site.url}/-/person/{token}")
        assert page.status_code == 200
        assert f'<a href="/-/address/{ADDRESS}">{READ_AS}</a>' in page.text
        assert "第一网格" in page.text and "陈*英" in page.text and WORKER not in page.text
        assert "住宅" in page.text and "核定居住人数 4" in page.text and "是否出租屋 1 是" in page.text  # a code with its meaning
        assert HEAD["name"] not in page.text and MIGRANT["name"] not in page.text
    # The registered resident's place comes from 户籍, the migrant's from the house she lives in.
    assert "户籍_人员" in li.get(f"{site.url}/-/person/{person}").text
    page = wang.get(f"{site.url}/-/person/{migrant}")
    assert WORKER in page.text and READ_AS in page.text and "13912345678" in page.text
    site.stop()
    assert _files(store) == before


def test_the_new_tables_are_published_with_their_labels_and_the_address_table_links_its_page(street, publisher):
    store, _ = street
    site = publisher(store, "--schemas", str(schemas_dir()))
    li = site.sign_in("lilei")
    tables = {t["name"] for t in li.get(f"{site.url}/{MASKED_DB}.json").json()["tables"]}
    assert {"网格_网格", "标准地址_标准地址", "实有房屋_房屋", "实有单位_单位", "流动人口_流动人员"} <= tables
    grids = li.get(f"{site.url}/{MASKED_DB}/网格_网格.json", params={"_shape": "array"}).json()
    assert grids == [{"rowid": 1, "网格编码": GRID, "网格名称": "第一网格", "网格员姓名": "陈*英",
                      "网格员联系电话": "139****5678", "社区代码": CODE}]
    houses = li.get(f"{site.url}/{MASKED_DB}/实有房屋_房屋.json", params={"_shape": "array"}).json()
    assert houses[0]["产权人姓名"] == "黄*强" and houses[0]["产权人公民身份号码"] != OWNER["id_number"]
    assert houses[0][PERSON_COLUMN]  # the owner's records, on the person page
    page = li.get(f"{site.url}/{MASKED_DB}/标准地址_标准地址")
    assert page.status_code == 200 and f'<a href="/-/address/{ADDRESS}">{ADDRESS}</a>' in page.text
    migrants = li.get(f"{site.url}/{MASKED_DB}/流动人口_流动人员").text
    assert f'href="/-/address/{ELSEWHERE}"' in migrants  # every address code links to its page
    described = li.get(f"{site.url}/-/metadata.json").json()
    columns = described["databases"][MASKED_DB]["tables"]["流动人口_流动人员"]["columns"]
    assert "标准地址_标准地址" in columns["居住地址"]
