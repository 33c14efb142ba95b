"""syncdb: offline-first sync of community population databases.

The library is the product; ``syncdb.cli`` is a thin layer over it.
"""

__version__ = "0.1.0"
