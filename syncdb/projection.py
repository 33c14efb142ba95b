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

Codes read as words (meanings.py): each code table a column uses is published
as a table of its own (``代码_性别``: 代码, 名称), and the column is a foreign
key to it, so Datasette's own labels show the meaning on table pages and in
facets while filters and facets still work on the code; ``code_cell`` draws a
coded cell as ``2 女性`` (or ``正常``) on table and row pages.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import sqlite3
import time

from markupsafe import escape

from . import conflicts, meanings
from .i18n import _
from .schema import Column, Domain, Table
from .masks import mask
from .store import SQLITE_LEAST, SQLITE_MOST, Cells, Store, table_name

MASKED_DB = "renkou"
PLAIN_DB = "renkou_mingwen"
PERSON_COLUMN = "档案"  # the person's number (person_token), shown as a link to the person page
PERSON_TOKEN_BITS = 63


def person_token(blind: bytes) -> int:
    """The person's number: what the 档案 column holds and the person page is addressed by.

    The first 63 bits of the blind index of their ID number, so a whole number SQLite keeps in
    8 bytes: as 32 hex characters it took 33 bytes in each database's tables and as much again
    in each one's index on it, and the number saves about a fifth of publish's memory
    (docs/publish.md "Memory"). Two people of a street of two million share a number with a
    chance of about 2 in 10 million; nobody can make it happen on purpose without the office's
    index key, which no community holds.
    """
    return int.from_bytes(bytes(blind)[:8], "big") >> (64 - PERSON_TOKEN_BITS)


def read_person_token(text: str) -> int | None:
    """The person's number a person page's address carries, or None where no person can have it."""
    if not text.isascii() or not text.isdigit():
        return None
    number = int(text)
    return number if number < 2 ** PERSON_TOKEN_BITS and str(number) == text else None


# ---------------------------------------------------------------- masking

CODE_MASK = "***"


def mask_value(column: Column, value):
    """What staff without ``view-pii`` see of a sensitive value.

    Masked as the plaintext database keeps it: SQLite keeps true as 1 and NaN as NULL, and a refresh
    tells a masked cell changed by its plaintext cell alone (``_writes``), so a mask of 'True' beside
    a plaintext 1 would stay after a night that sent 1 for true (a text column takes any JSON value)."""
    if value.__class__ is bool:
        value = int(value)
    elif value.__class__ is float and value != value:
        value = None
    if value is None or value == "":
        return value
    text = str(value)
    if column.codes:
        # A sensitive code is its meaning: masked whole and every code alike ('n****l' and 'm*******t'
        # would say normal and moved_out, and a facet on the masked database would count them apart).
        return CODE_MASK
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


# ---------------------------------------------------------------- code tables

CODE_TABLE_PREFIX = "代码"
CODE, MEANING = "代码", "名称"  # the columns of a published code table


def coded_columns(domains: dict[str, Domain]):
    """(domain, table, column) of every column with a code table, in schema order."""
    for domain in domains.values():
        for table in domain.tables.values():
            for column in table.columns.values():
                if column.codes:
                    yield domain, table, column


def _source(domain: Domain, column: Column) -> tuple[str, str]:
    """Which code table a column uses: the domain's own one of that name, or the national one."""
    return (domain.name if column.codes in domain.codes else "", column.codes)


def code_table_names(domains: dict[str, Domain]) -> dict[tuple[str, str, str], str]:
    """(domain, table, column) -> the published code table it is a foreign key to.

    Named after the column's label (代码_性别); columns with the same label and the
    same code table share one; a label two different code tables answer to is
    told apart by the domain (代码_户籍_状态), then by the table.
    """
    sources: dict[str, set] = {}
    for domain, table, column in coded_columns(domains):
        sources.setdefault(column.label, set()).add(_source(domain, column))
    names, claimed = {}, {}
    for domain, table, column in coded_columns(domains):
        source = _source(domain, column)
        for parts in ([column.label], [domain.label, column.label], [domain.label, table.label, column.label]):
            if len(parts) == 1 and len(sources[column.label]) > 1:
                continue
            name = "_".join([CODE_TABLE_PREFIX, *parts])
            if claimed.setdefault(name, source) == source:
                break
        names[(domain.name, table.name, column.name)] = name
    return names


def labelled(column: Column, masked: bool) -> bool:
    """Is the column linked to its code table in this database? Never a sensitive one in the
    masked database: the meaning of a masked value would tell what the mask hides."""
    return bool(column.codes) and not (masked and column.sensitive)


def _fill_code_tables(domains: dict[str, Domain], masked, plain, exclusive) -> list[str]:
    """Each published code table under its new name; returns the names."""
    tables = {}
    for (domain, table, column_name), name in code_table_names(domains).items():
        column = domains[domain].tables[table].columns[column_name]
        tables.setdefault(name, meanings.code_table(domains[domain], column))
    for name, codes in tables.items():
        with exclusive():
            for conn in (masked, plain):
                conn.execute(f"DROP TABLE IF EXISTS [_new_{name}]")
                conn.execute(f"CREATE TABLE [_new_{name}] ([{CODE}] TEXT PRIMARY KEY, [{MEANING}] TEXT)")
        for conn in (masked, plain):
            conn.execute("BEGIN")
            conn.executemany(f"INSERT INTO [_new_{name}] VALUES (?, ?)", list(codes.items()))
            conn.execute("COMMIT")
    return list(tables)


def _definition(domains: dict[str, Domain], table: Table, names: list[str], linked: bool, masked: bool) -> str:
    """The published table's columns, a coded one a foreign key to its code table."""
    code_tables = code_table_names(domains)
    columns = []
    for name in names:
        column = table.columns[name]
        target = code_tables.get((table.domain, table.name, name))
        columns.append(f"[{column.label}]" + (f" REFERENCES [{target}]([{CODE}])"
                                              if target and labelled(column, masked) else ""))
    # INTEGER: the person's number, compared as a number with the text of a filter (?档案=…).
    return ", ".join(columns + ([f"[{PERSON_COLUMN}] INTEGER"] if linked else []))


# ---------------------------------------------------------------- filling the databases

def memory_uri(name: str) -> str:
    """The URI Datasette opens a named in-memory database with (shared by every connection of the process)."""
    return f"file:{name}?mode=memory&cache=shared"


def prepare_database(conn) -> None:
    """Set up a new in-memory database before any table is made in it.

    Temporary sorts stay in memory (plaintext on no disk), and auto_vacuum=INCREMENTAL
    lets give_back_memory return the pages a build or refresh freed.
    """
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")


CHUNK = 2000  # rows decrypted and written at a time at a full build
GIVE_WAY = 1.0  # while pages are served, a build or refresh rests as long as its last chunk or batch took
BATCH = 500  # records re-read, decrypted and written in one short transaction at a refresh


def facet_columns(table: Table) -> list[str]:
    """Labels of the columns staff facet and filter on: codes and the owning community.

    Indexed, so a facet, a filter and the count beside it read an index instead of
    scanning the table (and Datasette's suggested facets stop at an index's first groups).
    """
    return [c.label for c in table.columns.values() if c.codes or c.name == table.owner]


def _indexed_columns(table: Table, facets: bool = True) -> list[str]:
    """The labels a published table is indexed on: the columns pages look records up by, and
    (``facets``) the columns staff facet on."""
    linked = [PERSON_COLUMN] if person_column(table) else []
    return list(dict.fromkeys(indexed(table) + linked + (facet_columns(table) if facets else [])))


class _Layout:
    """How one store table is published: its columns read, its published labels, its masks."""

    def __init__(self, domains: dict[str, Domain], domain: Domain, table: Table):
        self.table, self.name = table, published_name(domain, table)
        self.names = list(table.columns)
        self.linked = person_column(table)
        self.born = birth_date_columns(table)
        self.labels = [table.columns[c].label for c in self.names] + ([PERSON_COLUMN] if self.linked else [])
        self.cells = Cells(table, self.names)
        # A sealed value is JSON, which keeps any whole number; SQLite keeps 64 bits (see rows).
        self.sealed_at = [i for i, c in enumerate(self.names) if table.columns[c].sensitive]
        self.select = self.cells.sql + (f", [{self.linked}__bi]" if self.linked else "")
        self.definitions = {hides: _definition(domains, table, self.names, bool(self.linked), hides)
                            for hides in (True, False)}
        self._places: dict[frozenset, tuple[tuple[int, ...], bool]] = {}

    def places(self, moved: frozenset) -> tuple[tuple[int, ...], bool]:
        """(the places in ``labels`` the ``moved`` columns of a stored record fill, whether one of them is
        sealed): a column's own, and the person's number where the linked ID number moved."""
        found = self._places.get(moved)
        if found is None:
            at = tuple(i for i, c in enumerate(self.names) if c in moved)
            if self.linked in moved:
                at += (len(self.names),)
            found = self._places[moved] = (at, any(self.table.columns[self.names[i]].sensitive
                                                   for i in at if i < len(self.names)))
        return found

    def rows(self, store: Store, chunk, open_seal: bool = True) -> tuple[list, list]:
        """(plaintext rows, masked rows) of stored rows (``_key`` first). Without ``open_seal``, the
        sensitive cells are None (for a caller that writes only plain ones)."""
        shown, hidden = [], []
        columns = [self.table.columns[c] for c in self.names]
        for key, *values in chunk:
            row = self.cells.values(store.seals, key, values, open_seal)
            for i in self.sealed_at:
                # A text column takes any JSON value: a whole number past SQLite's 64 bits is published
                # as its digits, where binding it raised OverflowError and no build or refresh could end.
                if row[i].__class__ is int and not SQLITE_LEAST <= row[i] <= SQLITE_MOST:
                    row[i] = str(row[i])
            masked_row = [mask_value(column, v) if column.sensitive
                          else (v[:4] if column.name in self.born and isinstance(v, str) else v)
                          for column, v in zip(columns, row)]
            if self.linked:
                token = person_token(values[-1]) if values[-1] is not None else None
                row.append(token)
                masked_row.append(token)
            shown.append(row)
            hidden.append(masked_row)
        return shown, hidden

    def insert(self, target: str, verb: str = "INSERT") -> str:
        columns = ", ".join(["rowid"] + [f"[{label}]" for label in self.labels])
        return f"{verb} INTO [{target}] ({columns}) VALUES ({', '.join('?' * (len(self.labels) + 1))})"


def shape(domains: dict[str, Domain]) -> tuple:
    """What the published databases' tables and columns are made from: a change means a full build."""
    return tuple((d.name, t.name, tuple((c.name, c.label, c.sensitive, c.codes) for c in t.columns.values()))
                 for d in domains.values() for t in d.tables.values())


class Published:
    """The two in-memory databases as this process filled them, and what a refresh needs.

    ``masked`` and ``plain`` are connections (isolation_level=None) to them. Each
    record's published row has the same rowid in both; which rowid is kept in a
    private in-memory database of this object (blind key -> rowid), never in the
    published ones, where staff would see it. ``point`` is the store's change point
    the databases show; ``decrypted`` counts the records the last build or refresh
    decrypted (a refresh after a night decrypts only what the night changed), and
    ``built`` says whether that was a full build (the first, after a schema change, or
    after a restored backup) rather than a refresh.
    ``serving``, if given, says whether pages are being served (publish's Gate):
    a build or refresh then rests between its chunks (``_give_way``).
    """

    def __init__(self, masked, plain, serving=None):
        self.masked, self.plain = masked, plain
        self.rowids = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.rowids.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before any table: see give_back_memory
        self.point: int | None = None
        self.mark: bytes | None = None  # the store's change_mark at ``point``
        self.shape: tuple | None = None
        self.decrypted = 0
        self.built = False
        self.next_rowid: dict[str, int] = {}
        self.torn = False  # a refresh's batch is in some of the three databases and not yet in the others
        self.serving = serving or (lambda: False)  # are pages being served? a fill then gives way (_give_way)

    def update(self, store: Store, exclusive=contextlib.nullcontext, progress=None, stop=None) -> int:
        """Bring both databases up to the store; return how many records were decrypted.

        ``progress(records, table)``, if given, is told after each chunk of a full build how many
        records it has decrypted so far and the published table it is filling, then once more, with
        ``table`` None, as the new tables are indexed and swapped in; and after each batch of a
        refresh, ``progress(records, table, total)``, ``total`` the changed records it re-reads.
        ``stop()``, if given, is asked between the steps (each chunk, each batch, each row of the ledger
        read for what changed): it raises to stop the build or refresh, rolled back as any fault of it.

        The first time, when the schemas changed, or when the store went back in its
        history (a restored backup), a full build; otherwise only the records the audit
        ledger saw change since the last update. The point is read first: a merge
        committing meanwhile is read again next time, which costs a little and loses nothing.
        """
        point = store.change_point()
        # A store that went back in its history (a backup put back) is built whole, even once a merge has
        # taken its ledger past the point again: the entries since then are another history's.
        building = (self.point is None or point < self.point or self.shape != shape(store.domains)
                    or store.change_mark(self.point) != self.mark)
        try:
            if building:
                self.decrypted = self.build(store, exclusive, progress, stop)
            elif point == self.point:
                self.decrypted = 0
            else:
                self.decrypted = self.refresh(store, store.cells_changed_since(self.point, between=stop), progress,
                                              stop)
        except BaseException:
            # A build or refresh stopped half way (memory, a fault): its transaction is rolled back. A
            # build, or a refresh whose batch one database has and another not, leaves what is unknown:
            # the next update builds everything again. A refresh stopped between its batches, or in its
            # first write of one, is refreshed again from the same point (its batches written again are
            # the same rows): a full build needs the old tables and the new at once, about twice the
            # memory of a refresh that may have just run out of it.
            for conn in (self.masked, self.plain, self.rowids):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            if building or self.torn:
                self.point = None
            self.torn = False
            raise
        self.point, self.mark = point, store.change_mark(point)
        self.shape, self.built = shape(store.domains), building
        return self.decrypted

    # ------------------------------------------------------------ a full build

    def build(self, store: Store, exclusive=contextlib.nullcontext, progress=None, stop=None) -> int:
        """Decrypt every live record into new tables, swapped in when whole; return how many.

        ``exclusive()`` is held while the schema changes: an in-memory database's
        connections share one cache, where a page reading during a CREATE, DROP or
        RENAME would fail with "table is locked" instead of waiting. Streams in chunks,
        so memory holds the published databases and one chunk, never a Python copy of
        the store; pages keep the old data until the new is whole.
        """
        records = 0
        built = [(name, [], []) for name in _fill_code_tables(store.domains, self.masked, self.plain, exclusive)]
        for domain in store.domains.values():
            for table in domain.tables.values():
                layout = _Layout(store.domains, domain, table)
                records += self._build_table(store, layout, exclusive, progress, records, stop)
                # The plaintext database, which only view-pii opens, without the facet indexes: its
                # facets count as plain Datasette's do, and it holds a fifth less (docs/publish.md).
                built.append((layout.name, _indexed_columns(table), _indexed_columns(table, facets=False)))
        if progress:
            progress(records, None)
        self._swap(built, exclusive)
        return records

    def _build_table(self, store: Store, layout: _Layout, exclusive, progress=None, before: int = 0,
                     stop=None) -> int:
        """Fill a new table of ``layout``; return its records. ``progress`` and ``stop`` as ``update``
        says, the ``before`` records of the tables filled before this one counted in."""
        name = layout.name
        with exclusive():
            for conn, hides in ((self.masked, True), (self.plain, False)):
                conn.execute(f"DROP TABLE IF EXISTS [_new_{name}]")
                conn.execute(f"CREATE TABLE [_new_{name}] ({layout.definitions[hides]})")
        self.rowids.execute(f"DROP TABLE IF EXISTS [_new_{name}]")
        self.rowids.execute(f"CREATE TABLE [_new_{name}] (key BLOB PRIMARY KEY, published INTEGER NOT NULL) WITHOUT ROWID")
        insert = layout.insert(f"_new_{name}")
        # In the store's key order: the private index of rowids is written in order, so it packs tight.
        cursor = store.conn.execute(f"SELECT _key, {layout.select} FROM [{table_name(layout.table)}] "
                                    f"WHERE _exists = 1 ORDER BY _key")
        rowid, started = 0, time.perf_counter()
        while chunk := cursor.fetchmany(CHUNK):
            shown, hidden = layout.rows(store, chunk)
            rowids = range(rowid + 1, rowid + 1 + len(chunk))
            rowid += len(chunk)
            for conn, rows in ((self.plain, shown), (self.masked, hidden)):
                conn.execute("BEGIN")
                conn.executemany(insert, ([r, *row] for r, row in zip(rowids, rows)))
                conn.execute("COMMIT")
            self.rowids.execute("BEGIN")
            self.rowids.executemany(f"INSERT INTO [_new_{name}] VALUES (?, ?)",
                                    ((bytes(row[0]), r) for r, row in zip(rowids, chunk)))
            self.rowids.execute("COMMIT")
            if progress:
                progress(before + rowid, name)
            if stop:
                stop()
            self._give_way(started)
            started = time.perf_counter()
        self.next_rowid[f"_new_{name}"] = rowid + 1
        return rowid

    def _swap(self, built: list[tuple[str, list[str], list[str]]], exclusive) -> None:
        """The new tables in place of the old, each indexed (masked database, plaintext database)."""
        generation = os.urandom(4).hex()  # an index keeps its name through the RENAME: one name per build
        with exclusive():
            for at, conn in ((1, self.masked), (2, self.plain)):
                for entry in built:
                    name = entry[0]
                    for label in entry[at]:
                        conn.execute(f"CREATE INDEX [{name}_{label}_{generation}] ON [_new_{name}] ([{label}])")
                conn.execute("BEGIN IMMEDIATE")
                for name, *_columns in built:
                    conn.execute(f"DROP TABLE IF EXISTS [{name}]")
                    conn.execute(f"ALTER TABLE [_new_{name}] RENAME TO [{name}]")
                conn.execute("COMMIT")
        for name, *_columns in built:
            if f"_new_{name}" in self.next_rowid:
                self.rowids.execute(f"DROP TABLE IF EXISTS [{name}]")
                self.rowids.execute(f"ALTER TABLE [_new_{name}] RENAME TO [{name}]")
                self.next_rowid[name] = self.next_rowid.pop(f"_new_{name}")
        give_back_memory(self.masked, self.plain, self.rowids)

    def _give_way(self, started: float) -> None:
        """While pages are being served, rest as long as the work since ``started`` took.

        A fill and a page compete for the interpreter and for the shared cache of the in-memory
        database (a page's query holds it through each step, a batch's writes through theirs):
        with both busy, a page took up to 1.9x its time (bench/refresh_pages.py). Resting between
        batches gives the pages the process alone half the time, while never stopping the fill:
        a page that never ends (a client that stops reading) makes it twice as long at most.
        """
        if self.serving():
            time.sleep((time.perf_counter() - started) * GIVE_WAY)

    # ------------------------------------------------------------ a refresh

    def refresh(self, store: Store, changed: dict[str, dict[bytes, frozenset | None]], progress=None,
                stop=None) -> int:
        """Re-read, decrypt and write only the ``changed`` records in place: table -> blind key -> the
        columns the ledger says moved, None for every one (``Store.cells_changed_since``).

        A record already published whose moved columns are known is written in those cells alone,
        read from the store (its seal opened only where one of them is sensitive) and not compared:
        a night moves a column or two. A new record, or one that came back, went or changed its key,
        is read whole and compared with its published row (``_writes``). Each batch is its own short
        transaction, so pages (which read uncommitted, see datasette_plugin.prepare_connection) never
        wait long and never fail; a record deleted or no longer live leaves both databases.
        """
        tables = [(domain, table) for domain in store.domains.values() for table in domain.tables.values()]
        # ``total`` and ``done`` count the changed records, deleted ones too (``records``, the live ones
        # decrypted); a table of a domain no longer published is not among them.
        records, done, total = 0, 0, sum(len(changed.get(table.qualified, ())) for _domain, table in tables)
        for domain, table in tables:
            moved = changed.get(table.qualified) or {}
            keys = sorted(moved)
            if not keys:
                continue
            layout = _Layout(store.domains, domain, table)
            for start in range(0, len(keys), BATCH):
                started, batch = time.perf_counter(), keys[start:start + BATCH]
                records += self._refresh_batch(store, layout, batch, moved)
                done += len(batch)
                if progress:
                    progress(done, layout.name, total)
                if stop:
                    stop()
                self._give_way(started)
        if records:
            give_back_memory(self.masked, self.plain, self.rowids)
        return records

    def _refresh_batch(self, store: Store, layout: _Layout, keys: list[bytes],
                       moved: dict[bytes, frozenset | None]) -> int:
        name, marks = layout.name, ", ".join("?" * len(keys))
        live = store.conn.execute(f"SELECT _key, {layout.select} FROM [{table_name(layout.table)}] "
                                  f"WHERE _exists = 1 AND _key IN ({marks})", keys).fetchall()
        known = dict(self.rowids.execute(f"SELECT key, published FROM [{name}] WHERE key IN ({marks})", keys))
        gone = [(key, known.pop(key)) for key in set(known) - {bytes(row[0]) for row in live}]
        new = []
        whole, parts = [], {}  # rows read whole; rows of which only some cells moved, by those cells' places
        for row in live:
            key = bytes(row[0])
            cells = moved.get(key)
            if key not in known:
                known[key] = self.next_rowid[name]
                self.next_rowid[name] += 1
                new.append((key, known[key]))
                whole.append(row)
            elif cells is None:
                whole.append(row)
            elif cells:
                parts.setdefault(layout.places(cells), []).append(row)
        writes: tuple[list, list] = ([], [])
        if whole:  # a night's batch has none: the plaintext database is then not read at all
            shown, hidden = layout.rows(store, whole)
            fresh = {rowid for _key, rowid in new}
            writes = _writes(self.plain, layout, [known[bytes(row[0])] for row in whole], shown, hidden, fresh)
        for (places, sealed), rows in parts.items():
            if not places:
                continue  # only columns this release does not publish moved
            shown, hidden = layout.rows(store, rows, open_seal=sealed)
            rowids = [known[bytes(row[0])] for row in rows]
            update = _update(name, layout.labels, places)
            for at, cells_of in ((0, shown), (1, hidden)):
                writes[at].append((update, [[*(cells[i] for i in places), rowid]
                                            for cells, rowid in zip(cells_of, rowids)]))
        for conn, statements in zip((self.plain, self.masked), writes):
            conn.execute("BEGIN")
            conn.executemany(f"DELETE FROM [{name}] WHERE rowid = ?", ((rowid,) for _key, rowid in gone))
            for sql, values in statements:
                conn.executemany(sql, values)
            conn.execute("COMMIT")
            self.torn = True
        self.rowids.execute("BEGIN")
        self.rowids.executemany(f"DELETE FROM [{name}] WHERE key = ?", ((key,) for key, _rowid in gone))
        self.rowids.executemany(f"INSERT INTO [{name}] VALUES (?, ?)", new)
        self.rowids.execute("COMMIT")
        self.torn = False
        return len(live)


def _update(name: str, labels: list[str], places) -> str:
    """The UPDATE of a published row's cells at ``places`` (values in their order, then the rowid)."""
    return f"UPDATE [{name}] SET {', '.join(f'[{labels[i]}] = ?' for i in places)} WHERE rowid = ?"


def _writes(plain, layout: _Layout, rowids: list[int], shown: list[list], hidden: list[list],
            fresh: set[int]) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    """The statements that make the rows at ``rowids`` what they are, in the plaintext database (rows
    ``shown``) and in the masked one (rows ``hidden``): an INSERT for a new record, and for one already
    published an UPDATE of only the cells that differ, grouped by which cells they are (none when none
    differ).

    A night changes a column or two of a record; rewriting the whole row would rewrite each of
    its index entries too (the masked database indexes every facet column), which cost most of a
    refresh and held the shared cache the pages read meanwhile. A cell is the same when its value
    and its type are, a zero its sign too (the published columns have no affinity but 档案, an
    INTEGER column given whole numbers only: a value reads back as written; see _differs). Only
    the plaintext row is read and compared: a masked cell is made from its plaintext cell alone
    (``_Layout.rows``), so where that is the same the masked one is too, and the masked database
    the pages read is not read here at all.
    """
    name, labels = layout.name, layout.labels
    kept = [rowid for rowid in rowids if rowid not in fresh]  # a refresh's batch: at most BATCH of them
    published = {row[0]: row[1:] for row in plain.execute(
        f"SELECT rowid, {', '.join(f'[{label}]' for label in labels)} FROM [{name}] "
        f"WHERE rowid IN ({', '.join('?' * len(kept))})", kept)}
    inserts: tuple[list, list] = ([], [])
    updates: dict[tuple, tuple[list, list]] = {}
    places = range(len(labels))
    for rowid, row, masked_row in zip(rowids, shown, hidden):
        old = published.get(rowid)
        if old is None:
            inserts[0].append([rowid, *row])
            inserts[1].append([rowid, *masked_row])
            continue
        row = tuple(row)
        if old == row and list(map(type, old)) == list(map(type, row)) and 0.0 not in row:
            continue
        differ = tuple(i for i in places if _differs(old[i], row[i]))
        if differ:
            both = updates.setdefault(differ, ([], []))
            both[0].append([*(row[i] for i in differ), rowid])
            both[1].append([*(masked_row[i] for i in differ), rowid])
    out: tuple[list, list] = ([], [])
    for at in (0, 1):
        if inserts[at]:
            out[at].append((layout.insert(name, "INSERT OR REPLACE"), inserts[at]))
        for differ, values in updates.items():
            out[at].append((_update(name, labels, differ), values[at]))
    return out


def _differs(published, value) -> bool:
    """Must a published cell be written with ``value``? When the two differ in value or type, or are
    zeros of opposite sign: 0.0 and -0.0 are equal to Python and to SQLite's =, but a column without
    affinity keeps each as written and the site shows it so (a bundle may carry either)."""
    return (published != value or type(published) is not type(value)
            or (value == 0 and type(value) is float and math.copysign(1.0, published) != math.copysign(1.0, value)))


def give_back_memory(*connections) -> None:
    """Return the pages a build or refresh freed: an in-memory database keeps them otherwise.

    The published databases are made with auto_vacuum=INCREMENTAL (prepare_database),
    so incremental_vacuum truncates the freed pages off their end; shrink_memory then
    hands the page cache's spare memory back to the allocator, and trim_heap the
    allocator's free memory back to the system.
    """
    for conn in connections:
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        while free:
            # VACUUM_STEP pages a transaction: a build over the last moves every page of the new tables into
            # the old ones' place, and one transaction's journal would hold a copy of each page it moved
            # (a peak of nearly three times the published data where two are enough). executescript: execute()
            # steps a statement with no result columns once, which frees a single page.
            conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP})")
            free, before = conn.execute("PRAGMA freelist_count").fetchone()[0], free
            if free >= before:
                break  # made without auto_vacuum: nothing to give back this way
        conn.execute("PRAGMA shrink_memory")
    trim_heap()


VACUUM_STEP = 1000  # pages (4 MiB) given back in one transaction


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


_LIBC = _libc() if os.name == "posix" else None  # glibc; None elsewhere (musl, macOS, Windows)


def trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc's malloc_trim; a no-op elsewhere).

    What a build or refresh decrypted, sorted and dropped is freed, but glibc keeps
    free memory inside its heaps, where it counts in the process's resident size for
    good: a refresh after each night would leave a little more behind.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_heaps(arenas: int = 2) -> None:
    """Have glibc keep at most ``arenas`` heaps for all threads (a no-op elsewhere).

    By default each thread that allocates gets a heap of its own, up to eight per core:
    the thread filling the databases and each of Datasette's query threads keep the free
    memory of theirs apart from the others', and the process grows with the threads
    that ever ran (bench/city.py: 1.12x the start-up RSS after three refreshes, 1.02x with
    two heaps and trim_heap). Python's threads seldom allocate at the same moment, so two
    heaps are seldom waited for.
    """
    if _LIBC is not None:
        _LIBC.mallopt(M_ARENA_MAX, arenas)


def fill(store: Store, masked, plain, exclusive=contextlib.nullcontext) -> int:
    """Decrypt every live record into the two in-memory databases; return how many (a full build)."""
    return Published(masked, plain).build(store, exclusive)


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
                | ({PERSON_COLUMN: _("All this person's records across the domains")} if person_column(table) else {}),
            }
    for name in set(code_table_names(domains).values()):
        # Datasette labels a foreign key with this column; hidden from the table list, where
        # dozens of code tables would bury the records, but open to anyone following a link.
        tables[name] = {"label_column": MEANING, "hidden": True, "description": _("Code table: codes and their meanings")}
    return {
        "title": title,
        "description_html": (
            escape(_("Read-only: each community syncs its data every night; the street office merges them."))
            + "<ul>" + "".join(f'<li><a href="{href}">{escape(words)}</a></li>' for href, words in (
                (f"/{MASKED_DB}", _("Population data (masked)")),
                ("/-/dashboard", _("Dashboard")),
                ("/-/checks", _("Cross-domain checks")),
                ("/-/conflicts", _("Open conflicts")),
                ("/-/sync", _("Sync status")),
                ("/-/logout", _("Sign out")))) + "</ul>"),
        # Signed-in staff only; the plaintext database for view-pii; SQL for admins.
        "allow": {"id": "*"},
        "databases": {
            MASKED_DB: {"title": _("Population data (masked)"), "allow_sql": {"roles": ["admin"]}, "tables": tables},
            PLAIN_DB: {"title": _("Population data (plaintext, every view logged)"), "allow": {"roles": ["view-pii"]},
                       "allow_sql": {"roles": ["admin"]}, "tables": tables},
        },
    }



def code_cell(domains: dict[str, Domain], database: str, table: str, column: str, value) -> str | None:
    """A published coded cell as a person reads it (``2 女性``, ``正常``), for Datasette's render_cell;
    None for any other cell. On a table page Datasette hands a labelled foreign key as
    {"value": …, "label": …}; on a row page the bare code."""
    if database not in (MASKED_DB, PLAIN_DB):
        return None
    found = published_columns(domains).get((table, column))
    if found is None or not found[1].codes:
        return None
    domain, coded = found
    code = value.get("value") if isinstance(value, dict) else value
    if code is None or code == "":
        return None
    shown = meanings.shown(domain, coded, code, masked=database == MASKED_DB)
    return None if shown == code else str(shown)


_columns_cache: dict[int, tuple] = {}


def published_columns(domains: dict[str, Domain]) -> dict[tuple[str, str], tuple[Domain, Column]]:
    """(published table, column label) -> (domain, column) of every published column; built once per schemas."""
    cached = _columns_cache.get(id(domains))
    if cached is None or cached[0] is not domains:
        cells = {(published_name(domain, table), column.label): (domain, column)
                 for domain in domains.values() for table in domain.tables.values()
                 for column in table.columns.values()}
        cached = _columns_cache[id(domains)] = (domains, cells)
    return cached[1]


def signature(store: Store) -> tuple:
    """Changes whenever a merge applied something or the queue moved: time to fill again."""
    return store.change_point(), tuple(conflicts.signature(store))
