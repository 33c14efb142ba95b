"""The one door for the words users read: gettext, with a zh_CN catalogue.

Chinese is the default, also where no locale is set at all (a scheduled
task, cron, a Windows service); English when ``SYNCDB_LANG=en`` or when the
locale is explicitly English (``LANG=en_US.UTF-8``). ``SYNCDB_LANG`` wins
over the locale.

Every string a user reads is wrapped where it is written, its arguments
named so a translator can move them::

    from .i18n import _
    raise SyncdbError(_("bundle {seq} from {code} is held").format(seq=seq, code=code))

``N_`` marks a string for the catalogue where it is defined (a module-level
table of words) without translating it; ``_`` translates it where it is shown.

The catalogue is ``syncdb/locale/zh_CN/LC_MESSAGES/syncdb.po``, with its
compiled ``.mo`` beside it; ``python -m syncdb.i18n update [FRAGMENT.po ...]`` extracts the
messages (syncdb's own, its templates', and click's, whose ``Usage:`` and
``Error:`` a user reads too) into it and compiles it, and
``tests/test_i18n.py`` fails while a message has no translation or the
``.mo`` is older than the ``.po``.
"""

from __future__ import annotations

import gettext as _gettext
import logging
import os
from pathlib import Path

DOMAIN = "syncdb"
LOCALE_DIR = Path(__file__).with_name("locale")
CHINESE, ENGLISH = "zh_CN", "en"
_LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")

_translations: _gettext.NullTranslations | None = None
_language: str | None = None


def choose_language(environ=None) -> str:
    """``zh_CN`` or ``en``, from ``SYNCDB_LANG`` first, then the locale; Chinese when neither says."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("SYNCDB_LANG", "").strip()
    if explicit:
        return ENGLISH if explicit.lower().startswith("en") else CHINESE
    for variable in _LOCALE_VARIABLES:
        value = environ.get(variable, "").split(":")[0].strip()
        if value:
            # An explicitly English locale means English; C, POSIX or any other means Chinese.
            return ENGLISH if value.lower().startswith("en") else CHINESE
    return CHINESE


def use(language: str | None = None) -> str:
    """Translate into `language` (default: choose_language()) from now on; returns it.

    Also points the standard gettext domain at syncdb's catalogue and sets
    ``LANGUAGE`` for this process, so that click's own words (``Usage:``,
    ``Error:``, ``Show this message and exit.``), which click looks up through
    the standard ``gettext.gettext``, come out in the same language.
    """
    global _translations, _language
    language = language or choose_language()
    _language = language
    if language == ENGLISH:
        _translations = _gettext.NullTranslations()
    else:
        _translations = _gettext.translation(DOMAIN, LOCALE_DIR, languages=[language], fallback=True)
    _gettext.bindtextdomain(DOMAIN, str(LOCALE_DIR))
    _gettext.textdomain(DOMAIN)
    os.environ["LANGUAGE"] = language
    return language


def language() -> str:
    """The language words are translated into now."""
    if _language is None:
        use()
    return _language


def _(message: str) -> str:
    """`message` in the user's language."""
    if _translations is None:
        use()
    return _translations.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """`singular` or `plural` by `n`, in the user's language (Chinese has one form)."""
    if _translations is None:
        use()
    return _translations.ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Mark `message` for the catalogue without translating it here."""
    return message


# --- the web server's own log lines -----------------------------------------------------------

# uvicorn, which serves `syncdb serve` and `syncdb publish`, logs in English. These are the lines an
# office's administrator meets in a day's run, as uvicorn writes them (its format strings, whose
# placeholders a translation keeps in order). A rarer line, or one a later uvicorn words otherwise,
# stays in English.
SERVER_LINES = frozenset([
    N_("Started server process [%d]"),
    N_("Finished server process [%d]"),
    N_("Uvicorn running on %s://%s:%d (Press CTRL+C to quit)"),
    N_("Uvicorn running on %s://[%s]:%d (Press CTRL+C to quit)"),
    N_("Waiting for application startup."),
    N_("Application startup complete."),
    N_("Application startup failed. Exiting."),
    N_("Waiting for application shutdown."),
    N_("Application shutdown complete."),
    N_("Shutting down"),
    N_("Waiting for connections to close. (CTRL+C to force quit)"),
    N_("Waiting for background tasks to complete. (CTRL+C to force quit)"),
    N_("Invalid HTTP request received."),
    N_("Unsupported upgrade request."),
    N_("Exceeded concurrency limit."),
    N_("Exception in ASGI application\n"),
])


class ServerWords(logging.Filter):
    """uvicorn's log lines (SERVER_LINES) in the user's language, on its "uvicorn.error" logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg in SERVER_LINES:
            words = _(record.msg)
            if words != record.msg:  # in English the line, and its colors on a terminal, stay uvicorn's
                record.msg = words
                if "color_message" in record.__dict__:  # what uvicorn's formatter shows on a terminal
                    record.color_message = words
        return True


# The level a log line names (INFO: ...), as the services' lines show it.
LEVEL_NAMES = {logging.DEBUG: N_("DEBUG"), logging.INFO: N_("INFO"), logging.WARNING: N_("WARNING"),
               logging.ERROR: N_("ERROR"), logging.CRITICAL: N_("CRITICAL")}


def translate_server_log() -> None:
    """From now on, uvicorn's log lines in the user's language (ServerWords), and the level every log line
    of the process names (信息, 警告, 错误: logging's names are the process's own); once per process."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ServerWords) for f in logger.filters):
        logger.addFilter(ServerWords())
    for level, name in LEVEL_NAMES.items():
        logging.addLevelName(level, _(name))


# --- keeping the catalogue (developers) --------------------------------------------------------

PO_FILE = LOCALE_DIR / CHINESE / "LC_MESSAGES" / f"{DOMAIN}.po"
MO_FILE = PO_FILE.with_suffix(".mo")
KEYWORDS = {"_": None, "N_": None, "ngettext": (1, 2)}


def extract():
    """A babel Catalog of every message a user can read: syncdb's code and templates, and click's."""
    import click
    from babel.messages.catalog import Catalog
    from babel.messages.extract import extract_from_dir

    catalog = Catalog(project="syncdb", domain=DOMAIN, charset="utf-8")
    package = Path(__file__).parent
    sources = [
        (package, [("**.py", "python"), ("templates/**.html", "jinja2")], "syncdb"),
        # The shipped plugins (the built-in checks' titles and findings) speak through the same catalogue.
        (package.parent / "plugins", [("*.py", "python")], "plugins"),
        (Path(click.__file__).parent, [("**.py", "python")], "click"),
    ]
    for folder, method_map, prefix in sources:
        options = {"templates/**.html": {"extensions": "jinja2.ext.i18n", "newstyle_gettext": "true"}}
        for filename, lineno, message, comments, context in extract_from_dir(
            str(folder), method_map, options_map=options, keywords=KEYWORDS, comment_tags=("Translators:",)
        ):
            where = f"{prefix}/{filename}"
            catalog.add(message, locations=[(where, lineno)], auto_comments=comments, context=context)
    return catalog


def read_catalogue():
    from babel.messages.pofile import read_po

    with open(PO_FILE, "rb") as f:
        return read_po(f, locale=CHINESE, domain=DOMAIN)


def untranslated(template=None, catalogue=None) -> list[str]:
    """The extracted messages with no (or only a fuzzy) translation in the zh_CN catalogue."""
    template = template or extract()
    catalogue = catalogue or read_catalogue()
    missing = []
    for message in template:
        if not message.id:
            continue
        have = catalogue.get(message.id, context=message.context)
        strings = have.string if have is not None else None
        if isinstance(strings, (tuple, list)):
            ok = all(strings)
        else:
            ok = bool(strings)
        if have is None or not ok or have.fuzzy:
            missing.append(message.id if isinstance(message.id, str) else message.id[0])
    return missing


def compiled_bytes(catalogue=None) -> bytes:
    import io

    from babel.messages.mofile import write_mo

    out = io.BytesIO()
    write_mo(out, catalogue or read_catalogue())
    return out.getvalue()


def update(fragments=()):
    """Extract, merge the new messages into the .po (translations kept), take the translations
    of any `fragments` (.po files holding some msgid/msgstr pairs), compile the .mo.

    Under a lock, so that people (or scripts) translating at once do not lose each other's work.
    """
    import fcntl

    from babel.messages.catalog import Catalog
    from babel.messages.pofile import read_po, write_po

    PO_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCALE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        template = extract()
        if PO_FILE.exists():
            catalogue = read_catalogue()
        else:
            catalogue = Catalog(locale=CHINESE, project="syncdb", domain=DOMAIN, charset="utf-8")
        catalogue.update(template, no_fuzzy_matching=True)
        catalogue.fuzzy = False
        catalogue.project, catalogue.version = "syncdb", ""
        for fragment in fragments:
            if str(fragment).endswith(".json"):  # {"English message": "中文", ...}
                import json

                words = json.loads(Path(fragment).read_text(encoding="utf-8"))
                for message in catalogue:
                    key = message.id if isinstance(message.id, str) else message.id[0]
                    if key and words.get(key):
                        plural = not isinstance(message.id, str)
                        message.string = (words[key],) if plural else words[key]
                        message.flags.discard("fuzzy")
                continue
            with open(fragment, "rb") as f:
                for message in read_po(f, locale=CHINESE):
                    have = catalogue.get(message.id, context=message.context) if message.id else None
                    if have is not None and message.string:
                        have.string = message.string
                        have.flags.discard("fuzzy")
        with open(PO_FILE, "wb") as f:
            write_po(f, catalogue, width=100, sort_output=False, ignore_obsolete=True)
        MO_FILE.write_bytes(compiled_bytes())
    return untranslated(template, read_catalogue())


def main(argv=None):
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["update"]:
        missing = update(argv[1:])
        print(f"{PO_FILE}: {len(missing)} messages without a translation")
        for message in missing:
            print("  " + message.replace("\n", "\\n"))
    elif argv == ["compile"]:
        MO_FILE.write_bytes(compiled_bytes())
    elif argv == ["check"]:
        missing = untranslated()
        for message in missing:
            print(message.replace("\n", "\\n"))
        return 1 if missing else 0
    else:
        print("usage: python -m syncdb.i18n update [FRAGMENT.po ...] | compile | check", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
