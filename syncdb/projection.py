"""The decrypted projection of the store that ``syncdb publish`` serves, and its masks.

Nothing decrypted ever reaches a disk. At start-up (and again after each
merge) the store is decrypted into two named in-memory databases:

    renkou          every sensitive value masked (441900********123X, 张*明,
                    138****0000): what any signed-in member of staff sees
    renkou_mingwen  the plaintext, for the ``view-pii`` role only

Keeping the masked values in a database of their own, rather than masking
cells as they are drawn, means no sort, facet, filter, CSV or JSON path can
reveal what a mask hides: permissions decide which database a person may
open at all. Tables and columns carry their Chinese labels from the schemas.
"""

from __future__ import annotations

import contextlib
import os

from . import conflicts
from .schema import Column, Domain, Table
from .masks import mask
from .store import Store, table_name

MASKED_DB = "renkou"
PLAIN_DB = "renkou_mingwen"
PERSON_COLUMN = "档案"  # the blind index of the record's ID number, shown as a link to the person page


# ---------------------------------------------------------------- masking

def mask_value(column: Column, value):
    """What staff without ``view-pii`` see of a sensitive value."""
    if value is None or value == "":
        return value
    text = str(value)
    if column.validator == "id_number":
        return mask(text)
    if column.validator == "phone" and len(text) >= 7:
        return text[:3] + "*" * (len(text) - 7) + text[-4:]
    if column.name.endswith("name"):
        # 张三 → 张*, 张小明 → 张*明, 欧阳小明 → 欧**明
        return text[0] + "*" if len(text) <= 2 else text[0] + "*" * (len(text) - 2) + text[-1]
    if column.name.endswith("address"):
        # Keep the district-level part a member of staff needs to route work.
        keep = min(6, len(text) // 2)
        return text[:keep] + "*" * (len(text) - keep)
    return mask(text)


# ---------------------------------------------------------------- the published tables

def published_name(domain: Domain, table: Table) -> str:
    return f"{domain.label}_{table.label}"


def person_column(table: Table) -> str | None:
    """The ID-number column whose blind index links a record to the person page."""
    ids = table.id_columns
    return ids[0] if ids else None


def birth_date_columns(table: Table) -> set[str]:
    """Columns holding the birth date an ID number carries: masked to the year.

    The ID mask hides exactly the eight birth-date digits, so a full date
    beside it would give the whole number back.
    """
    return {c.matches["birth_date"] for c in table.columns.values()
            if c.sensitive and c.validator == "id_number" and c.matches.get("birth_date")}


def indexed(table: Table) -> list[str]:
    """Labels of the columns naming another table's record: the person and address pages look records up by them."""
    return [c.label for c in table.columns.values() if c.references and c.name not in table.key]


def memory_uri(name: str) -> str:
    """The URI Datasette opens a named in-memory database with (shared by every connection of the process)."""
    return f"file:{name}?mode=memory&cache=shared"


CHUNK = 2000


def fill(store: Store, masked, plain, exclusive=contextlib.nullcontext) -> int:
    """Decrypt every live record into the two in-memory databases; return how many.

    ``masked`` and ``plain`` are connections (isolation_level=None) to them.
    ``exclusive()`` is held while the schema changes: an in-memory database's
    connections share one cache, where a page reading during a CREATE, DROP or
    RENAME would fail with "table is locked" instead of waiting.

    Streams in chunks, so memory holds the published databases and one chunk,
    never a Python copy of the store. Each table is built under a new name and
    swapped in at the end, so pages keep the old data until the new is whole.
    """
    records = 0
    built = []
    for domain in store.domains.values():
        for table in domain.tables.values():
            name = published_name(domain, table)
            names = list(table.columns)
            linked = person_column(table)
            born = birth_date_columns(table)
            labels = [table.columns[c].label for c in names] + ([PERSON_COLUMN] if linked else [])
            select = ", ".join(f"[{c}]" for c in names) + (f", [{linked}__bi]" if linked else "")
            with exclusive():
                for conn in (masked, plain):
                    conn.execute(f"DROP TABLE IF EXISTS [_new_{name}]")
                    conn.execute(f"CREATE TABLE [_new_{name}] ({', '.join(f'[{c}]' for c in labels)})")
            insert = f"INSERT INTO [_new_{name}] VALUES ({', '.join('?' * len(labels))})"
            cursor = store.conn.execute(f"SELECT _key, {select} FROM [{table_name(table)}] WHERE _exists = 1")
            while True:
                chunk = cursor.fetchmany(CHUNK)
                if not chunk:
                    break
                shown, hidden = [], []
                for key, *values in chunk:
                    row = [store.plain(table, c, v, key) for c, v in zip(names, values)]
                    masked_row = [mask_value(table.columns[c], v) if table.columns[c].sensitive
                                  else (v[:4] if c in born and isinstance(v, str) else v)
                                  for c, v in zip(names, row)]
                    if linked:
                        token = bytes(values[-1]).hex() if values[-1] is not None else None
                        row.append(token)
                        masked_row.append(token)
                    shown.append(row)
                    hidden.append(masked_row)
                for conn, rows in ((plain, shown), (masked, hidden)):
                    conn.execute("BEGIN")
                    conn.executemany(insert, rows)
                    conn.execute("COMMIT")
                records += len(chunk)
            built.append((name, indexed(table) + ([PERSON_COLUMN] if linked else [])))
    generation = os.urandom(4).hex()  # an index keeps its name through the RENAME: one name per build
    with exclusive():
        for conn in (masked, plain):
            for name, columns in built:
                for label in columns:
                    conn.execute(f"CREATE INDEX [{name}_{label}_{generation}] ON [_new_{name}] ([{label}])")
            conn.execute("BEGIN IMMEDIATE")
            for name, _ in built:
                conn.execute(f"DROP TABLE IF EXISTS [{name}]")
                conn.execute(f"ALTER TABLE [_new_{name}] RENAME TO [{name}]")
            conn.execute("COMMIT")
    return records


def referenced(domains: dict[str, Domain], column: Column) -> str:
    """What a column without a description of its own says: the published table its value names."""
    domain, _, name = (column.references or "").partition(".")
    target = domains[domain].tables.get(name) if domain in domains else None
    return f"对应「{published_name(domains[domain], target)}」中的记录" if target else ""


def metadata(domains: dict[str, Domain], title: str) -> dict:
    """Datasette metadata: who may see what, and the Chinese descriptions."""
    tables = {}
    for domain in domains.values():
        for table in domain.tables.values():
            tables[published_name(domain, table)] = {
                "description": table.description or f"{domain.label} · {table.label}",
                "columns": {c.label: c.description or referenced(domains, c) for c in table.columns.values()
                            if c.description or referenced(domains, c)}
                | ({PERSON_COLUMN: "该人员在各业务库中的全部记录"} if person_column(table) else {}),
            }
    return {
        "title": title,
        "description_html": (
            "只读发布：数据由各社区每晚同步，经街道办合并。"
            f'<ul><li><a href="/{MASKED_DB}">人口数据（脱敏）</a></li>'
            '<li><a href="/-/conflicts">待处理冲突</a></li><li><a href="/-/sync">同步状态</a></li>'
            '<li><a href="/-/logout">退出登录</a></li></ul>'),
        # Signed-in staff only; the plaintext database for view-pii; SQL for admins.
        "allow": {"id": "*"},
        "databases": {
            MASKED_DB: {"title": "人口数据（脱敏）", "allow_sql": {"roles": ["admin"]}, "tables": tables},
            PLAIN_DB: {"title": "人口数据（明文，访问留痕）", "allow": {"roles": ["view-pii"]},
                       "allow_sql": {"roles": ["admin"]}, "tables": tables},
        },
    }



def signature(store: Store) -> tuple:
    """Changes whenever a merge applied something or the queue moved: time to fill again."""
    return store.change_point(), tuple(conflicts.signature(store))
