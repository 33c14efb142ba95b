"""Exceptions with messages a community worker or administrator can act on.

Raised where the problem is known, printed once at the CLI edge
(``cli.py`` turns them into exit status 1).
"""

from .i18n import _


class SyncdbError(Exception):
    """Refused input or a failed operation; the message says what to do."""


class SchemaError(SyncdbError):
    """A schema file is wrong. Names the file, table and column."""

    def __init__(self, path, message, table=None, column=None):
        self.path, self.table, self.column = str(path), table, column
        where = [self.path]
        if table:
            where.append(_("table '{table}'").format(table=table))
        if column:
            where.append(_("column '{column}'").format(column=column))
        super().__init__(_("{where}: {message}").format(where=_(", ").join(where), message=message))


class DiskFull(SyncdbError):
    """The disk ran out of space; nothing was lost, the same command finishes once space is freed."""
