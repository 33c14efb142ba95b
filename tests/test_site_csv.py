"""The site's CSV reads in Excel as `syncdb export`'s does: ID numbers and 户号 as text, codes with
their meanings, nothing Excel would run. Real `syncdb publish` over HTTP (the family of
test_household.py), and the stream rewriter fed Datasette's CSV cut at every byte."""

from __future__ import annotations

import csv
import io

from test_household import FAMILY, HEAD, NEIGHBOURS, WIFE, family  # noqa: F401
from syncdb import site_csv
from syncdb.schema import Column, schemas_dir


def read(content: bytes) -> list[dict]:
    assert content.startswith("\ufeff".encode()), "no byte-order mark: Excel would read the Chinese as garbage"
    return list(csv.DictReader(io.StringIO(content.decode("utf-8-sig"), newline="")))


def test_the_site_csv_keeps_ids_as_text_and_codes_with_their_meanings(family, publisher):  # noqa: F811
    site = publisher(family, "--schemas", str(schemas_dir()))
    for who, database in (("wangfang", "renkou_mingwen"), ("lilei", "renkou")):
        session = site.sign_in(who)
        for query in ("", "?_stream=on", "?_labels=on", "?_dl=1&_size=1"):
            got = session.get(f"{site.url}/{database}/户籍_人员.csv{query}")
            assert got.status_code == 200, got.text[:300]
            rows = read(got.content)
            assert len(rows) == (1 if "_size=1" in query else 4), (who, query)
            assert not any(name.endswith("_label") for name in rows[0]), (who, query, list(rows[0]))
            assert rows[0]["户号"] in (f'="{FAMILY}"', f'="{NEIGHBOURS}"'), rows[0]  # rows in blind-key order
            if len(rows) == 1:
                continue
            head = next(r for r in rows if r["姓名"] in (HEAD["name"], "张*"))
            assert (head["性别"], head["民族"], head["与户主关系"], head["人员状态"]) == ("1 男性", "01 汉族", "02 户主", "正常")
            assert head["户号"] == f'="{FAMILY}"', head["户号"]
            if database == "renkou_mingwen":
                assert head["公民身份号码"] == f'="{HEAD["id_number"]}"'
                wife = next(r for r in rows if r["公民身份号码"] == WIFE["id_number"])  # ends in X: text already
                assert wife["性别"] == "2 女性"
            else:
                assert "********" in head["公民身份号码"]
    # A JSON client still reads what the database holds.
    rows = site.sign_in("wangfang").get(f"{site.url}/renkou_mingwen/户籍_人员.json?_shape=array").json()
    assert {r["户号"] for r in rows} >= {FAMILY}


CSV = ('rowid,姓名,性别,性别_label,住址,金额\r\n'
       '1,=HYPERLINK("http://x"),2,女性,"莞太路\r\n12号",-5\r\n'
       '2,0012,1,男性,+cmd|x,12.5\r\n').encode()


def rewritten(domains, chunks: list[bytes]) -> str:
    huji = domains["huji"]
    persons = huji.tables["persons"].columns
    columns = {"姓名": (huji, persons["name"]), "性别": (huji, persons["sex"]), "住址": (huji, persons["address"]),
               "金额": (huji, Column("amount", "real", "金额", "lww"))}
    rewriter = site_csv.Rewriter(columns.get, masked=False)
    out = b"".join(rewriter.feed(chunk) for chunk in chunks) + rewriter.feed(b"", last=True)
    return out.decode("utf-8")


def test_the_rewriter_gives_the_same_records_however_the_stream_is_cut(domains):
    whole = rewritten(domains, [CSV])
    assert whole == ('\ufeffrowid,姓名,性别,住址,金额\r\n'
                     '1,"=""=HYPERLINK(""""http://x"""")""",2 女性,"莞太路\r\n12号",-5\r\n'
                     '2,"=""0012""",1 男性,"=""+cmd|x""",12.5\r\n')
    for cut in range(1, len(CSV)):
        assert rewritten(domains, [CSV[:cut], CSV[cut:]]) == whole, cut
    assert rewritten(domains, [CSV[i:i + 1] for i in range(len(CSV))]) == whole
