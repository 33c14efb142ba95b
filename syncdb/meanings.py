"""Codes read as words: the meaning the schemas give a code, wherever a person reads one.

A coded column holds the code (filters, facets, bundles and the store work on
it); a person reads ``2 女性``, ``01 汉族``, ``110 企业职工基本养老保险``. A
code that is a number is what the forms and standards write, so it stays
beside its meaning; a code that is a word for programs (人员状态 ``normal``)
shows only its meaning, ``正常``. The meanings come from the schemas
(``codes = "…"``: the domain's own ``[codes.NAME]`` or a national table),
never from here.

The same tables read a person's words back (``syncdb export --where 性别=女``).
"""

from __future__ import annotations

from .errors import SyncdbError
from .i18n import _
from .schema import Column, Domain, Table


def code_table(domain: Domain, column: Column) -> dict[str, str]:
    """The column's codes and their meanings; empty for a column without a code table."""
    return domain.code_table(column.codes) if column.codes else {}


def word(code: str, meaning: str) -> str:
    """How a person reads one code: ``2 女性`` for a number, the meaning alone for a word."""
    return f"{code} {meaning}" if code.isdigit() else meaning


def shown(domain: Domain, column: Column, value, masked: bool = False):
    """The value as a person reads it: a code with its meaning; anything else as it is.

    A code the table does not know (an old one a community has not upgraded
    yet) is shown as it is rather than guessed at. ``masked``: the value is the
    masked form of a sensitive column, which must not be looked up at all (a
    meaning found for it would tell what the mask hides).
    """
    if value is None or value == "" or not column.codes or (masked and column.sensitive):
        return value
    meaning = code_table(domain, column).get(str(value))
    return value if meaning is None else word(str(value), meaning)


def column_named(table: Table, name: str) -> Column:
    """A column by its schema name or its Chinese label; an unknown one is refused, naming the choices."""
    if name in table.columns:
        return table.columns[name]
    labelled = [c for c in table.columns.values() if c.label == name]
    if len(labelled) == 1:
        return labelled[0]
    choices = _(", ").join(f"{c.label} ({c.name})" for c in table.columns.values())
    raise SyncdbError(_("{table} has no column '{name}'; its columns: {choices}").format(
        table=table.qualified, name=name, choices=choices))


def code_for(domain: Domain, column: Column, text: str) -> str:
    """The code a person means: the code itself, its meaning (``女性``), the way it is shown
    (``2 女性``), or the start of one meaning only (``女``). Anything else is refused, naming the choices."""
    table = code_table(domain, column)
    if not table or text in table:
        return text
    exact = [code for code, meaning in table.items() if text in (meaning, word(code, meaning))]
    starting = [code for code, meaning in table.items() if meaning.startswith(text)]
    found = exact or starting
    if len(found) == 1:
        return found[0]
    choices = _(", ").join(word(code, meaning) if code.isdigit() else f"{code} {meaning}"
                           for code, meaning in table.items())
    if found:
        raise SyncdbError(_("'{text}' could mean more than one {label}: {found}; write the code or the whole "
                            "name. The choices: {choices}").format(
            text=text, label=column.label, found=_(", ").join(table[c] for c in found), choices=choices))
    raise SyncdbError(_("'{text}' is no {label}; write a code or a name from: {choices}").format(
        text=text, label=column.label, choices=choices))
