"""The plugin manager: built-in policies, the shipped plugins/ folder, entry points.

Plugins are found through the ``syncdb`` entry-point group (installed
packages) and the ``plugins/`` folder beside the schemas (plain .py files).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pluggy

from . import hookspecs, rules
from .schema import shipped

DEFAULT_PLUGINS = shipped("plugins")

_manager = None


def plugins_dir() -> Path:
    return Path(os.environ.get("SYNCDB_PLUGINS") or DEFAULT_PLUGINS)


def manager() -> pluggy.PluginManager:
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager("syncdb")
        pm.add_hookspecs(hookspecs)
        pm.register(rules, name="builtin")
        pm.load_setuptools_entrypoints("syncdb")
        folder = plugins_dir()
        if folder.is_dir():
            for path in sorted(folder.glob("*.py")):
                spec = importlib.util.spec_from_file_location(f"syncdb_plugin_{path.stem}", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                pm.register(module, name=path.stem)
        _manager = pm
    return _manager


def extra_policies() -> list[str]:
    names = []
    for result in manager().hook.conflict_policies():
        names.extend(result or [])
    return names
