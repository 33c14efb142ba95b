"""Datasette's own words (its "chrome") in the user's language, and nowhere else.

Datasette writes English around the data: in its templates ("Apply",
"Next page", "This data as"), in Python (the table's "1,234 rows where …",
the filter operators, the "home" crumb, error messages) and in its
JavaScript (the column menu). syncdb's template overrides
(syncdb/templates/base.html, table.html, …) keep Datasette's blocks and pass
what they render through ``translate(html, page)``; ``table_js()`` is
Datasette's table.js with its words translated.

Data is never rewritten: a phrase is replaced only where Datasette writes it
(``RULES``: a CSS-like place such as ``form.filters label`` and the exact
English phrase, or a pattern for a phrase around a number), so a cell or a
column whose value is "rows" or "Apply" comes out as it went in. A phrase
that Datasette words differently one day simply stays English (and the tests
in tests/test_publish_i18n.py say so).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

from markupsafe import Markup

from . import i18n
from .i18n import N_, _, ngettext

# ---------------------------------------------------------------- where a phrase may be


@dataclass(frozen=True)
class Simple:
    """One compound selector: tag, classes, id, [attr=value] / [attr^=value] / [attr*=value] / [attr]."""

    tag: str | None
    classes: tuple
    ident: str | None
    attrs: tuple  # (name, op, value)

    def matches(self, tag: str, attrs: dict) -> bool:
        if self.tag and self.tag != tag:
            return False
        if self.ident and attrs.get("id") != self.ident:
            return False
        have = (attrs.get("class") or "").split()
        if any(c not in have for c in self.classes):
            return False
        for name, op, value in self.attrs:
            got = attrs.get(name)
            if got is None or (op == "=" and got != value) or (op == "^=" and not got.startswith(value)) \
                    or (op == "*=" and value not in got):
                return False
        return True


_SIMPLE = re.compile(r"(?P<tag>[a-z0-9]+)?(?P<rest>(?:[.#][\w-]+|\[[^\]]+\])*)$")


def _simple(text: str) -> Simple:
    found = _SIMPLE.match(text)
    if not found:
        raise ValueError(f"not a selector: {text}")
    classes, ident, attrs = [], None, []
    for part in re.findall(r"[.#][\w-]+|\[[^\]]+\]", found["rest"]):
        if part[0] == ".":
            classes.append(part[1:])
        elif part[0] == "#":
            ident = part[1:]
        else:
            name, op, value = re.fullmatch(r"\[([\w-]+)(?:(\^=|\*=|=)\"?([^\"]*)\"?)?\]", part).groups()
            attrs.append((name, op or "", value or ""))
    return Simple(found["tag"], tuple(classes), ident, tuple(attrs))


def selector(text: str) -> Callable[[list], bool]:
    """``"form.filters label"`` (descendant), ``"ul > li"`` (child); a leading ``>`` anchors at the block's top."""
    if text.strip() == ":top":
        return lambda stack: not stack  # text at the top of the block, in no element
    tokens = text.replace(">", " > ").split()
    anchored = bool(tokens) and tokens[0] == ">"
    steps, child = [], anchored
    for token in tokens[anchored:]:
        if token == ">":
            child = True
            continue
        steps.append((_simple(token), child))
        child = False

    def match(stack: list) -> bool:
        def walk(step: int, upto: int) -> bool:
            # stack[:upto] must end with an element matching steps[step] (and the steps before it above that)
            if step < 0:
                return not anchored or upto == 0
            simple, as_child = steps[step]
            candidates = [upto - 1] if step == len(steps) - 1 else range(upto - 1, -1, -1)
            for i in candidates:
                if i < 0:
                    return False
                tag, attrs = stack[i]
                if simple.matches(tag, attrs) and walk(step - 1, i):
                    return True
                if step == len(steps) - 1 or steps[step + 1][1]:
                    return False  # the last step, or a child of the next: only the nearest element may match
            return False
        return bool(steps) and walk(len(steps) - 1, len(stack))
    return match


# ---------------------------------------------------------------- what is replaced there


@dataclass(frozen=True)
class Rule:
    """In text directly inside an element matching `where` (or in its attribute `attr`): the exact
    phrase `english`, or a `pattern` whose groups `words` makes a sentence of."""

    where: Callable[[list], bool]
    english: str | None = None
    pattern: re.Pattern | None = None
    words: Callable[[re.Match], str] | None = None
    attr: str | None = None

    def apply(self, text: str) -> str | None:
        core = text.strip()
        if self.english is not None:
            return _(self.english) if core == self.english else None
        found = self.pattern.fullmatch(core)
        return self.words(found) if found else None


def phrases(where: str, *english: str, attr: str | None = None) -> list[Rule]:
    match = selector(where)
    return [Rule(match, english=e, attr=attr) for e in english]


def pattern(where: str, regex: str, words: Callable[[re.Match], str], attr: str | None = None) -> list[Rule]:
    return [Rule(selector(where), pattern=re.compile(regex, re.S), words=words, attr=attr)]


def _count(found: re.Match, group: str = "n") -> tuple[int, str]:
    text = found[group]
    return int(text.replace(",", "")), text


def rows_text(found: re.Match) -> str:
    n, text = _count(found)
    return ngettext("{count} row", "{count} rows", n).format(count=text)


def _facet_kind(kind: str) -> str:
    return {"date": _("(by date)"), "array": _("(by each item)")}.get(kind, f"({kind})")


def index_counts(found: re.Match) -> str:
    """The home page's "1,234 rows in 12 tables, 3 hidden tables" line, piece by piece."""
    pieces = []
    for piece in found[0].split(", "):
        words = _counts_piece(piece.strip())
        if words is None:
            return found[0]
        pieces.append(words)
    return _(", ").join(pieces)


def _counts_piece(piece: str) -> str | None:
    kind = re.fullmatch(r"(?:([\d,]+) rows in )?(\d+) (hidden )?tables?|([\d,]+) views?", piece)
    if not kind:
        return None
    rows, tables, hidden, views = kind.groups()
    if views is not None:
        n = int(views.replace(",", ""))
        return ngettext("{count} view", "{count} views", n).format(count=views)
    n = int(tables)
    words = ngettext("{count} hidden table", "{count} hidden tables", n) if hidden else \
        ngettext("{count} table", "{count} tables", n)
    words = words.format(count=tables)
    if rows is not None:
        r = int(rows.replace(",", ""))
        words = ngettext("{tables} ({count} row)", "{tables} ({count} rows)", r).format(tables=words, count=rows)
    return words


ABOUT_DATA = {"Data license": N_("Data license:"), "Data source": N_("Data source:"), "About": N_("About:")}

NAV = (
    phrases("p.crumbs a[href=/]", N_("home"))
    + phrases("details.nav-menu title", N_("Menu"))
    + phrases("details.nav-menu button", N_("Log out"))
    + phrases("details.actions-menu-links title", N_("Table actions"))
)

FOOTER = (
    phrases(":top", N_("Powered by"))
    + pattern(":top", r"(·\s*)?Queries took ([\d.]+)ms",
              lambda m: (m[1] or "") + _("Queries took {ms} ms").format(ms=m[2]))
    + pattern(":top", r"(·\s*)(Data license|Data source|About):", lambda m: m[1] + _(ABOUT_DATA[m[2]]))
)

DESCRIPTION = phrases("> p", *ABOUT_DATA.values()) + pattern(
    "> p", r"(·\s*)(Data license|Data source|About):", lambda m: m[1] + _(ABOUT_DATA[m[2]]))

OPERATORS = (N_("contains"), N_("ends with"), N_("starts with"), N_("like"), N_("not like"), N_("glob"),
             N_("in"), N_("not in"), N_("array contains"), N_("array does not contain"), N_("date"),
             N_("is null"), N_("is not null"), N_("is blank"), N_("is not blank"))

EXPORT = (
    phrases("p.export-links", N_("This data as"))
    + phrases("p.export-links a[href=#export]", N_("advanced"))
)

TABLE = (
    phrases("form.filters label", N_("Search:"))
    + phrases("form.filters option[value=\"\"]", N_("- remove filter -"), N_("- column -"), N_("Sort..."))
    + phrases("form.filters .filter-op option", *OPERATORS)
    + pattern("form.filters #sort_by option", r"Sort by (.+)",
              lambda m: _("Sort by {column}").format(column=m[1]))
    + phrases("form.filters label.sort_by_desc", N_("descending"))
    + phrases("form.filters input[type=submit]", N_("Apply"), attr="value")
    + pattern("div.extra-wheres h3", r"(?P<n>\d+) extra where clauses?", lambda m: ngettext(
        "{count} extra where clause", "{count} extra where clauses", _count(m)[0]).format(count=m["n"]))
    + phrases("div.extra-wheres li a", N_("remove"))
    + phrases("a.not-underlined span.underlined", N_("View and edit SQL"))
    + EXPORT
    + phrases("p.suggested-facets", N_("Suggested facets:"))
    + pattern("p.suggested-facets", r"\((date|array)\)(,?)", lambda m: _facet_kind(m[1]) + (_(", ") if m[2] else ""))
    + pattern("p.facets-timed-out", r"These facets timed out: (.*)",
              lambda m: _("These facets timed out: {facets}").format(facets=m[1]))
    + pattern("p.facet-info-name strong", r"(.*) \((date|array)\)", lambda m: m[1] + _facet_kind(m[2]))
    + phrases("> p > a[href*=_next=]", N_("Next page"))
    + phrases("div.advanced-export h3", N_("Advanced export"))
    + phrases("div.advanced-export p", N_("JSON shape:"), N_("CSV options:"))
    + phrases("div.advanced-export a", N_("default"), N_("array"), N_("newline-delimited"), N_("object"))
    + phrases("div.advanced-export label", N_("download file"), N_("expand labels"), N_("stream all rows"))
    + phrases("div.advanced-export input[type=submit]", N_("Export CSV"), attr="value")
    + phrases("p.zero-results", N_("0 records"))
    # The rowid column Datasette puts first in a table without a primary key ("Link", no type, not a pk).
    + phrases('table.rows-and-columns th[data-column=Link][data-column-type=""][data-is-pk=0]', N_("Link"))
)

ROW = (
    phrases("> p", N_("This data as"))
    + phrases("> h2", N_("Links from other tables"))
    + pattern("> ul > li > a", r"(?P<n>[\d,]+) rows?", rows_text)
    + pattern("> ul > li", r"from (.+) in (.+)",
              lambda m: _("from {column} in {table}").format(column=m[1], table=m[2]))
)

INDEX = (
    pattern("> p", r"(?:[\d,]+ rows in )?\d+ (?:hidden )?tables?(?:, .*)?|[\d,]+ views?", index_counts)
    + pattern("> p > a", r"(?P<n>\d+) rows", rows_text, attr="title")
)

SQL_FORM = (
    phrases("form.sql h3", N_("Custom SQL query"), N_("Query parameters"))
    + phrases("form.sql button", N_("Format SQL"))
    + phrases("form.sql input[type=submit]", N_("Run SQL"), attr="value")
)

DATABASE = (
    SQL_FORM
    + phrases("div.message-info p", N_("The following databases are attached to this connection, "
                                       "and can be used for cross-database joins:"))
    + phrases("div.message-info a", N_("tables"))
    + phrases("> h2", N_("Queries"), N_("Tables"), N_("Views"))
    + phrases("div.db-table h3 em", N_("(hidden)"))
    + phrases("div.db-table > p", N_("Many rows"))
    + pattern("div.db-table > p", r"(?P<n>[\d,]+) rows?", rows_text)
    + phrases("> p", N_("... and"))
    + pattern("> p > a", r"(?P<n>[\d,]+) hidden tables?", lambda m: ngettext(
        "{count} hidden table", "{count} hidden tables", _count(m)[0]).format(count=m["n"]))
    + phrases("p.download-sqlite", N_("Download SQLite DB:"))
)

QUERY = (
    SQL_FORM
    + phrases("p.message-error", N_("This query cannot be executed because the database is immutable."))
    + pattern("form.sql h3", r"Custom SQL query returning (more than )?(?P<n>[\d,]+) rows?", lambda m: (
        ngettext("Custom SQL query returning more than {count} row",
                 "Custom SQL query returning more than {count} rows", _count(m)[0]) if m[1] else
        ngettext("Custom SQL query returning {count} row", "Custom SQL query returning {count} rows",
                 _count(m)[0])).format(count=m["n"]))
    + phrases("span.show-hide-sql a", N_("hide"), N_("show"))
    + phrases("a.canned-query-edit-sql", N_("Edit SQL"))
    + EXPORT
    + phrases("p.zero-results", N_("0 results"))
)

PAGES = {"nav": NAV, "footer": FOOTER, "table": TABLE + DESCRIPTION, "row": ROW + DESCRIPTION,
         "index": INDEX + DESCRIPTION, "database": DATABASE + DESCRIPTION, "query": QUERY + DESCRIPTION}

# Datasette's error messages, as its Python raises them (a Forbidden carries the permission's name).
ERRORS = {
    "Forbidden": N_("Not allowed"),
    "Not Found": N_("Not found"),
    "Database not found": N_("There is no such database."),
    "Table not found": N_("There is no such table."),
    "Record not found": N_("There is no such record."),
    "No data": N_("There is no data here."),
    "404": N_("There is no such page."),
    "Invalid SQL": N_("Invalid SQL"),
    "SQL Interrupted": N_("The query took too long and was stopped"),
    "Database is immutable": N_("This database is read-only."),
    "Database download is forbidden": N_("The database cannot be downloaded."),
    "Permission denied": N_("You may not open this page."),
    "Invalid token": N_("You may not open this page."),
    "Root token has already been used": N_("You may not open this page."),
    "_where= is not allowed": N_("Only administrators may filter with _where."),
    "You do not have permission to view this database": N_("You may not see this database."),
    "You do not have permission to view this table": N_("You may not see this table."),
    "You do not have permission to view this query": N_("You may not see this query."),
    "view-instance": N_("You may not see this site."),
    "view-database": N_("You may not see this database."),
    "view-database-download": N_("The database cannot be downloaded."),
    "view-table": N_("You may not see this table."),
    "view-query": N_("You may not see this query."),
    "execute-sql": N_("Only administrators may run SQL queries."),
    "permissions-debug": N_("You may not open this page."),
    "debug-menu": N_("You may not open this page."),
}


def error_text(message) -> str:
    """A Datasette error message in the user's language; one it does not know stays as it is."""
    known = ERRORS.get(str(message)) if message is not None else None
    return _(known) if known else message


# ---------------------------------------------------------------- the walk


# How the table's h3 begins: its row count, or Datasette's human_description_en alone.
DESCRIBED = re.compile(r"\s*(?:[\d,]+ rows?\b|where |sorted by )")


class _Translator(HTMLParser):
    """Re-emits the HTML byte for byte, except text and attributes that a rule of the page translates."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, rules: list[Rule], replace_h3: str | None):
        super().__init__(convert_charrefs=False)
        self.rules = [r for r in rules if r.attr is None]
        self.attr_rules = [r for r in rules if r.attr is not None]
        self.replace_h3 = replace_h3
        self.out: list[str] = []
        self.stack: list[tuple[str, dict]] = []
        self.run: list[tuple[str, str]] = []  # the text since the last tag: (as written, as read)

    # text runs: data and character references together, as a reader sees them
    def handle_data(self, data):
        self.run.append((data, data))

    def handle_entityref(self, name):
        self.run.append((f"&{name};", html.unescape(f"&{name};")))

    def handle_charref(self, name):
        self.run.append((f"&#{name};", html.unescape(f"&#{name};")))

    def _flush(self):
        if not self.run:
            return
        written = "".join(w for w, _r in self.run)
        read = "".join(r for _w, r in self.run)
        self.run = []
        if self.stack and self.stack[-1][0] in ("script", "style"):
            self.out.append(written)
            return
        self.out.append(self._text(written, read))

    def _text(self, written: str, read: str) -> str:
        if not read.strip():
            return written
        if self.replace_h3 is not None and len(self.stack) == 1 and self.stack[0][0] == "h3" \
                and DESCRIBED.match(read):
            words, self.replace_h3 = self.replace_h3, None  # the table's one description line
            return _keep_space(read, html.escape(words, quote=False))
        for rule in self.rules:
            if rule.where(self.stack):
                words = rule.apply(read)
                if words is not None:
                    return _keep_space(read, html.escape(words, quote=False))
        return written

    def handle_starttag(self, tag, attrs):
        self._flush()
        raw = self.get_starttag_text()
        element = (tag, {k: (v if v is not None else "") for k, v in attrs})
        self.out.append(self._attributes(raw, element))
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self._flush()
        raw = self.get_starttag_text()
        self.out.append(self._attributes(raw, (tag, {k: (v if v is not None else "") for k, v in attrs})))

    def _attributes(self, raw: str, element) -> str:
        for rule in self.attr_rules:
            value = element[1].get(rule.attr)
            if value is None or not rule.where(self.stack + [element]):
                continue
            words = rule.apply(value)
            if words is not None:
                # Rebuilt only when translated: the attribute as html.escape writes it.
                return _set_attribute(raw, rule.attr, value, words)
        return raw

    def handle_endtag(self, tag):
        self._flush()
        self.out.append(f"</{tag}>")
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_comment(self, data):
        self._flush()
        self.out.append(f"<!--{data}-->")

    def handle_decl(self, decl):
        self._flush()
        self.out.append(f"<!{decl}>")

    def handle_pi(self, data):
        self._flush()
        self.out.append(f"<?{data}>")

    def unknown_decl(self, data):
        self._flush()
        self.out.append(f"<![{data}]>")

    def result(self) -> str:
        self.close()
        self._flush()
        return "".join(self.out)


def _keep_space(read: str, words: str) -> str:
    lead = read[: len(read) - len(read.lstrip())]
    trail = read[len(read.rstrip()):]
    return lead + words + trail


def _set_attribute(raw: str, name: str, old: str, new: str) -> str:
    pattern_ = re.compile(r"(\s%s\s*=\s*)(\"[^\"]*\"|'[^']*'|[^\s>]+)" % re.escape(name), re.I)
    return pattern_.sub(lambda m: m[1] + '"' + html.escape(new, quote=True) + '"', raw, count=1)


def translate(markup, page: str, description: str | None = None) -> Markup:
    """The HTML of a Datasette block with its chrome in the user's language (unchanged in English).

    ``description``: the table page's "N rows where …" line, made by ``describe_table``.
    """
    if i18n.language() == i18n.ENGLISH:
        return Markup(markup)
    walker = _Translator(PAGES[page], description)
    walker.feed(str(markup))
    return Markup(walker.result())


# ---------------------------------------------------------------- the table's description line

CONDITIONS = {  # Datasette's filter keys, as a condition reads
    "exact": N_('{column} = "{value}"'),
    "not": N_('{column} is not "{value}"'),
    "contains": N_('{column} contains "{value}"'),
    "endswith": N_('{column} ends with "{value}"'),
    "startswith": N_('{column} starts with "{value}"'),
    "gt": N_("{column} > {value}"),
    "gte": N_("{column} ≥ {value}"),
    "lt": N_("{column} < {value}"),
    "lte": N_("{column} ≤ {value}"),
    "like": N_('{column} like "{value}"'),
    "notlike": N_('{column} not like "{value}"'),
    "glob": N_('{column} glob "{value}"'),
    "in": N_("{column} is one of {value}"),
    "notin": N_("{column} is none of {value}"),
    "arraycontains": N_('{column} contains "{value}"'),
    "arraynotcontains": N_('{column} does not contain "{value}"'),
    "date": N_("{column} is on {value}"),
    "isnull": N_("{column} is null"),
    "notnull": N_("{column} is not null"),
    "isblank": N_("{column} is blank"),
    "notblank": N_("{column} is not blank"),
}


def describe_table(count, filters, search=None, sort=None, sort_desc=None) -> str:
    """"1,234 rows where 性别 = "2", sorted by 姓名" in the user's language, from what Datasette filtered by."""
    parts = []
    if count is not None:
        parts.append(ngettext("{count} row", "{count} rows", count).format(count=f"{count:,}"))
    conditions = [_('search matches "{search}"').format(search=search)] if search else []
    for column, lookup, value in (filters.selections() if filters is not None else ()):
        if lookup in CONDITIONS:
            conditions.append(_(CONDITIONS[lookup]).format(column=column, value=value))
    if conditions:
        parts.append(_("where {conditions}").format(conditions=_(", ").join(conditions)))
    if sort or sort_desc:
        parts.append((_("sorted by {column}") if sort else _("sorted by {column}, descending"))
                     .format(column=sort or sort_desc))
    return _(", ").join(parts)


# ---------------------------------------------------------------- table.js

SCRIPT_WORDS = {  # exact pieces of Datasette's table.js -> the message that replaces the words in them
    ">Sort ascending<": N_("Sort ascending"),
    ">Sort descending<": N_("Sort descending"),
    ">Facet by this<": N_("Facet by this"),
    ">Hide this column<": N_("Hide this column"),
    ">Show all columns<": N_("Show all columns"),
    ">Show not-blank rows<": N_("Show not-blank rows"),
    "`Type: ${": N_("Type:"),
    '"Remove this filter"': N_("Remove this filter"),
}


def table_js(source: str) -> tuple[str, list[str]]:
    """Datasette's table.js with its words translated; and the pieces it no longer has (left English)."""
    missing = []
    for piece, message in SCRIPT_WORDS.items():
        if piece not in source:
            missing.append(piece)
            continue
        words = _(message)
        if piece.startswith('"'):
            words = '"' + words.replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif piece.startswith("`"):
            words = "`" + words.replace("`", "\\`").replace("${", "\\${") + " ${"
        else:
            words = ">" + html.escape(words) + "<"
        source = source.replace(piece, words)
    return source, missing


def datasette_static(name: str) -> Path:
    import datasette

    return Path(datasette.__file__).parent / "static" / name
