"""The site's CSV keeps the person's number (档案, a column publish adds) as text for Excel; a column of a
schema's own whose label is 档案, in a table with no person's number, is still written by its schema."""

import shutil

from syncdb import projection
from syncdb.schema import load_domains, schemas_dir
from syncdb.site_csv import Rewriter


def _rewritten(domains, table: str, data: bytes) -> list[str]:
    columns = projection.published_columns(domains)
    out = Rewriter(lambda name: columns.get((table, name)), masked=False).feed(data, last=True)
    return out.decode("utf-8").lstrip("\ufeff").split("\r\n")


def test_a_schema_column_labelled_like_the_person_number_keeps_its_meaning(tmp_path):
    folder = tmp_path / "schemas"
    shutil.copytree(schemas_dir(), folder)
    toml = folder / "minzheng.toml"
    text = toml.read_text(encoding="utf-8")
    assert text.count('label = "救助状态"') == 1
    toml.write_text(text.replace('label = "救助状态"', f'label = "{projection.PERSON_COLUMN}"'), encoding="utf-8")
    domains = load_domains(folder)
    assistance = domains["minzheng"].tables["assistance"]
    assert projection.person_column(assistance) is None  # no person's number is published beside it
    table = projection.published_name(domains["minzheng"], assistance)
    header, row, _end = _rewritten(domains, table, f"rowid,救助类别,{projection.PERSON_COLUMN}\r\n1,,active\r\n"
                                   .encode("utf-8"))
    assert row.split(",")[-1] == "享受中", row  # the code's meaning, as every coded column
    # In a table that has it, the person's number is text, as before.
    persons = projection.published_name(domains["huji"], domains["huji"].tables["persons"])
    _header, row, _end = _rewritten(domains, persons, f"rowid,{projection.PERSON_COLUMN}\r\n1,9201705504489035620\r\n"
                                    .encode("utf-8"))
    assert row == '1,"=""9201705504489035620"""', row
