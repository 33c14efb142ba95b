"""Export a store table, decrypted, for a keyholder at the office.

CSV starts with a UTF-8 byte-order mark so that Excel opens Chinese text
correctly; JSON is one object per line. The output goes where the keyholder
sends it — syncdb writes no plaintext file of its own.
"""

from __future__ import annotations

import csv
import json
from typing import Iterator, TextIO

from .crypto import Secret
from .errors import SyncdbError
from .schema import Domain
from .store import open_store, table_name


def rows(store_dir, secret: Secret, domains: dict[str, Domain], qualified: str,
         where: dict[str, str] | None = None, include_deleted=False) -> Iterator[dict]:
    """The table's records, decrypted. The store is opened (and the key and filters
    checked) here, before the first record is asked for: an error comes before any output."""
    store = open_store(store_dir, secret, domains)
    try:
        table = store.table(qualified)
        for column in where or {}:
            if column not in table.columns:
                raise SyncdbError(f"--where names '{column}', which is not a column of {qualified} "
                                  f"(its columns: {', '.join(table.columns)})")
    except BaseException:
        store.close()
        raise
    return _records(store, table, where or {}, include_deleted)


def _records(store, table, where: dict[str, str], include_deleted: bool) -> Iterator[dict]:
    try:
        cols = list(table.columns)
        select = ", ".join(["_key", "_exists"] + [f"[{c}]" for c in cols])
        for key, exists, *values in store.conn.execute(f"SELECT {select} FROM [{table_name(table)}]"):
            if not exists and not include_deleted:
                continue
            record = {c: store.plain(table, c, v, key) for c, v in zip(cols, values)}
            if all(str(record[c]) == wanted for c, wanted in where.items()):
                yield record
    finally:
        store.conn.close()


def write(records: Iterator[dict], columns: list[str], fmt: str, out: TextIO) -> int:
    count = 0
    if fmt == "csv":
        out.write("\ufeff")
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for record in records:
            writer.writerow(record)
            count += 1
    else:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count
