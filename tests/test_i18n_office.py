"""The office's own failures speak the user's language: Chinese by default, English on request.

Each case is a real failure at a real office store, met through `syncdb` in a subprocess whose
language is chosen by its environment only (SYNCDB_LANG), so the catalogue, its compiled .mo and
every `_()` on the way from the library to the screen are what is tested.
"""

import sqlite3
import subprocess

import pytest

from conftest import LANGUAGES, SYNCDB, said
from conftest import syncdb_in as syncdb


@pytest.fixture
def office(office_world, make_community, syncdb_env):
    """An office with one enrolled community A that has pushed a bundle, and one community B
    that is not enrolled; bundles of both are at hand, none merged yet."""
    a = make_community("441900003001")
    b = make_community("441900003002", enroll=False)
    for community in (a, b):
        community.add_persons(2)
    return office_world, a.export().path, b.export().path, syncdb_env


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_bundle_with_a_bad_signature_is_refused_in_the_users_language(office, tmp_path, language):
    world, good, _unused, env = office
    bad = tmp_path / "altered" / good.name
    bad.parent.mkdir()
    data = bytearray(good.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the signature
    bad.write_bytes(bytes(data))
    result = syncdb(env, language, "merge", world.store, bad)
    assert result.returncode == 1, said(result)
    expected = {
        "zh_CN": "签名与社区 441900003001 登记的密钥不符：数据包被改动过，或者是用别的密钥签名的",
        "en": "the signature does not match community 441900003001's enrolled key: the bundle was altered",
    }[language]
    assert expected in said(result)
    assert ("拒收" in said(result)) == (language == "zh_CN")


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_bundle_from_a_community_not_enrolled_is_refused_in_the_users_language(office, language):
    world, _unused, stranger, env = office
    result = syncdb(env, language, "merge", world.store, stranger)
    assert result.returncode == 1, said(result)
    expected = {
        "zh_CN": "社区 441900003002 未在本街道办登记；请用 `syncdb office enroll STORE 441900003002 PUBKEY_FILE` 登记",
        "en": "community 441900003002 is not enrolled at this office; enrol it with "
              "`syncdb office enroll STORE 441900003002 PUBKEY_FILE`",
    }[language]
    assert expected in said(result)
    # The status page shows the refusal as it was written, in the same words.
    status = said(syncdb(env, language, "status", world.store))
    assert {"zh_CN": "接收时拒收（隔离区）", "en": "Refused at receipt (quarantine)"}[language] in status


@pytest.mark.parametrize("language", LANGUAGES)
def test_merge_into_a_folder_that_is_not_a_store_says_so_in_the_users_language(office, tmp_path, language):
    _world, good, _unused, env = office
    folder = tmp_path / "not-a-store"
    folder.mkdir()
    result = syncdb(env, language, "merge", folder, good)
    assert result.returncode == 1, said(result)
    expected = {
        "zh_CN": f"{folder} 不是街道办汇总库；请用 `syncdb office init {folder}` 创建",
        "en": f"{folder} is not an office store; create one with `syncdb office init {folder}`",
    }[language]
    assert expected in said(result)
    assert not list(folder.iterdir()), "nothing is made in a folder that is not a store"


@pytest.mark.parametrize("language", LANGUAGES)
def test_resolving_a_conflict_that_does_not_exist_says_so_in_the_users_language(office, language):
    world, good, _unused, env = office
    assert syncdb(env, "en", "merge", world.store, good).returncode == 0
    result = syncdb(env, language, "conflicts", "resolve", world.store, 999, "--keep", "441900003001")
    assert result.returncode == 1, said(result)
    expected = {
        "zh_CN": "没有编号为 #999 的冲突；请查看 `syncdb conflicts list`",
        "en": "there is no conflict #999; see `syncdb conflicts list`",
    }[language]
    assert expected in said(result)


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_tampered_audit_ledger_is_named_in_the_users_language(office, tmp_path, language):
    world, good, _unused, env = office
    assert syncdb(env, "en", "merge", world.store, good).returncode == 0
    assert syncdb(env, language, "audit", "verify", world.store).returncode == 0
    conn = sqlite3.connect(world.store / "store.db")
    with conn:  # someone edits the ledger's first entry by hand
        changed = conn.execute("UPDATE ledger SET at = '2000-01-01T00:00:00' WHERE id = 1").rowcount
    conn.close()
    assert changed == 1
    result = syncdb(env, language, "audit", "verify", world.store)
    assert result.returncode == 1, said(result)
    expected = {
        "zh_CN": "审计日志第 1 条（来自 441900003001 的数据包 441900003001-00000001.bundle）与其封签不符："
                 "它被人为修改、调换顺序或替换过",
        "en": "audit ledger entry 1 (bundle 441900003001-00000001.bundle from 441900003001) does not match "
              "its seal: it was edited, reordered or replaced by hand",
    }[language]
    assert expected in said(result)


def test_chinese_is_the_default_where_no_language_is_set(office):
    """A scheduled `syncdb merge` (no SYNCDB_LANG, no locale) still reports in Chinese."""
    world, _unused, stranger, env = office
    bare = {k: v for k, v in env.items() if k not in ("SYNCDB_LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")}
    result = subprocess.run([SYNCDB, "merge", str(world.store), str(stranger)], env=bare,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, said(result)
    assert "社区 441900003002 未在本街道办登记" in said(result)
    assert "数据包：收到 0 个" in said(result)
