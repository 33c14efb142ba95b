"""The plugin manager, one per process: ``from syncdb.plugins import pm``.

As in Datasette and sqlite-utils, ``pm`` is made when this module is first
imported, with the hook specifications and the built-in conflict policies
(``DEFAULT_PLUGINS``). The other plugins join it the first time it is asked
for (``load_plugins()``, which ``manager()`` and ``policies()`` call, as
sqlite-utils' ``ensure_plugins_loaded()`` does):

- installed packages declaring an entry point in the ``syncdb`` group, except
  under the test suite (``sys._called_from_test``, set by tests/conftest.py),
  so a package installed beside syncdb cannot change what the tests see;
- every ``*.py`` file of the plugins folder: ``$SYNCDB_PLUGINS``, else the
  shipped ``plugins/``.

Not at import: schema.py imports this module, and a plugin file that imports
syncdb.schema (for its ``Table`` type, say) would then run against a
half-imported module and fail.

Tests and one-off scripts add a plugin for a while with ``registered()``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pluggy

from . import hookspecs
from .paths import shipped

# Registered in every process, tests included; a plugin is asked before them
# (rules.py registers its hooks trylast).
DEFAULT_PLUGINS = ("syncdb.rules",)
# The folder of plugin files when $SYNCDB_PLUGINS names none.
DEFAULT_PLUGINS_DIR = shipped("plugins")

pm = pluggy.PluginManager("syncdb")
pm.add_hookspecs(hookspecs)
for _module in DEFAULT_PLUGINS:
    pm.register(importlib.import_module(_module), name=_module)

_loaded = False


def plugins_dir() -> Path:
    """The folder of plugin files: $SYNCDB_PLUGINS, else the shipped plugins/."""
    return Path(os.environ.get("SYNCDB_PLUGINS") or DEFAULT_PLUGINS_DIR)


def load_plugins() -> None:
    """Add the installed plugins (entry points) and the plugins folder's files to ``pm``, once."""
    global _loaded
    if _loaded:
        return
    if not getattr(sys, "_called_from_test", False):
        pm.load_setuptools_entrypoints("syncdb")
    folder = plugins_dir()
    if folder.is_dir():
        load_folder(folder)
    # Only once it all loaded: a plugin file that failed is tried (and fails) again,
    # rather than the merge going on without the rule it holds.
    _loaded = True


def load_folder(folder: str | os.PathLike) -> list[str]:
    """Register every ``*.py`` file of ``folder`` as a plugin named by its file name; return the names.

    All files are imported before any is registered, and nothing stays
    registered when one fails, so a broken folder leaves ``pm`` as it was.
    """
    modules = [(path.stem, _import(path)) for path in sorted(Path(folder).glob("*.py"))]
    names: list[str] = []
    try:
        for name, module in modules:
            names.append(pm.register(module, name=name))
    except Exception:
        _unregister(names)
        raise
    return names


def _import(path: Path):
    # Not put in sys.modules: a plugin file is named by its folder, not by an import path.
    spec = importlib.util.spec_from_file_location(f"syncdb_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def registered(*plugins: object, folder: str | os.PathLike | None = None) -> Iterator[pluggy.PluginManager]:
    """Add plugins to ``pm`` for the length of a ``with`` block, and take them out after (even on error).

    ``plugins`` are modules or objects with ``@hookimpl`` functions;
    ``folder`` a folder of plugin files, loaded as the plugins folder is.
    The installed and folder plugins are loaded first, so the block sees
    what a command would, plus these::

        with registered(MyRule()):
            merge.apply_inbox(store, secret, domains)
    """
    load_plugins()
    names: list[str] = []
    try:
        for plugin in plugins:
            names.append(pm.register(plugin))
        if folder is not None:
            names.extend(load_folder(folder))
        yield pm
    finally:
        _unregister(names)


def _unregister(names) -> None:
    for name in reversed(names):
        if name is not None and pm.has_plugin(name):  # None: the plugin was blocked, never registered
            pm.unregister(name=name)


def manager() -> pluggy.PluginManager:
    """``pm``, with every plugin loaded: what the merge calls the hooks on."""
    load_plugins()
    return pm


def policies() -> list[str]:
    """The name of every conflict policy: the built-in ones and those plugins add."""
    names: list[str] = []
    for result in manager().hook.conflict_policies():
        names.extend(result or [])
    return names


# The name before schema.load_domains asked the plugins itself; callers that pass
# extra_policies=extra_policies() still get the same schemas.
extra_policies = policies
