"""A community's working folder: one SQLite working database per domain.

``WORKDIR/huji.db``, ``WORKDIR/shebao.db``, ``WORKDIR/minzheng.db`` … are plain
SQLite files that the community's own programs read and write; syncdb only
adds its capture triggers and change log to them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .schema import Domain


def db_path(workdir, domain: str) -> Path:
    return Path(workdir) / f"{domain}.db"


class Undecodable(str):
    """A TEXT cell whose bytes are not UTF-8, read as text with U+FFFD where they fail.

    ``raw`` keeps the bytes. A push holds such a record back and names it,
    instead of failing on it and sending nothing of the whole community.
    """

    raw: bytes


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        value = Undecodable(data.decode("utf-8", "replace"))
        value.raw = data
        return value


def connect(path) -> sqlite3.Connection:
    """Open a working database the way every syncdb module does."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    # Some other program may have written bytes that are not UTF-8 into a TEXT cell.
    conn.text_factory = _text
    return conn


def create(workdir, domains: dict[str, Domain]) -> list[Path]:
    """Create the working databases and their tables; existing ones are kept."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    made = []
    for domain in domains.values():
        path = db_path(workdir, domain.name)
        conn = connect(path)
        try:
            with conn:
                conn.execute("BEGIN")
                for table in domain.tables.values():
                    conn.execute(table.create_sql())
        finally:
            conn.close()
        made.append(path)
    return made


def domain_of(path, domains: dict[str, Domain]) -> Domain | None:
    """The domain a working database file belongs to, by its name."""
    return domains.get(Path(path).stem)
