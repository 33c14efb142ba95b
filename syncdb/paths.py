"""Where syncdb finds the folders it ships: schemas/ and plugins/.

A module of its own so that schema.py and plugins.py can both use it
without importing each other.
"""

from __future__ import annotations

import sys
from pathlib import Path


def shipped(folder: str) -> Path:
    """A folder shipped with syncdb: beside the package in a checkout, else where pip put it."""
    checkout = Path(__file__).resolve().parent.parent / folder
    installed = Path(sys.prefix) / "share" / "syncdb" / folder
    return checkout if checkout.is_dir() or not installed.is_dir() else installed
