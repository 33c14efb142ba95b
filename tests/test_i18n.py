"""The catalogue: every message a user reads has a Chinese translation, and the language is chosen
the way the ecosystem chooses it (Chinese by default, English on request)."""

import pytest

from syncdb import i18n


def test_every_message_has_a_translation():
    missing = i18n.untranslated()
    assert not missing, (
        f"{len(missing)} messages have no zh_CN translation; run `python -m syncdb.i18n update`, "
        "translate them in syncdb/locale/zh_CN/LC_MESSAGES/syncdb.po and run it again:\n  "
        + "\n  ".join(m.replace("\n", "\\n") for m in missing)
    )


def test_the_compiled_catalogue_is_the_po_file():
    assert i18n.MO_FILE.read_bytes() == i18n.compiled_bytes(), (
        "syncdb.mo is not compiled from syncdb.po: run `python -m syncdb.i18n compile`"
    )


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, "zh_CN"),  # a scheduled task: no locale at all
        ({"LANG": "C"}, "zh_CN"),
        ({"LANG": "C.UTF-8"}, "zh_CN"),
        ({"LANG": "zh_CN.UTF-8"}, "zh_CN"),
        ({"LANG": "en_US.UTF-8"}, "en"),
        ({"LC_ALL": "en_GB.UTF-8", "LANG": "zh_CN.UTF-8"}, "en"),
        ({"LANGUAGE": "zh_CN:en", "LANG": "en_US.UTF-8"}, "zh_CN"),
        ({"SYNCDB_LANG": "en", "LANG": "zh_CN.UTF-8"}, "en"),
        ({"SYNCDB_LANG": "zh_CN", "LANG": "en_US.UTF-8"}, "zh_CN"),
        ({"SYNCDB_LANG": "zh", "LANGUAGE": "en"}, "zh_CN"),
    ],
)
def test_the_language_is_chinese_unless_english_is_asked_for(environ, expected):
    assert i18n.choose_language(environ) == expected
