"""The community side speaks the user's language: Chinese by default, English on request.

Each case is a real failure or hold at a real community folder, met through `syncdb` in a
subprocess whose language is chosen by its environment only (SYNCDB_LANG), so the catalogue,
its compiled .mo and every `_()` from the library to the screen are what is tested.
"""

import shutil
import socket
import sqlite3

import pytest
from stdnum.cn import ric

from conftest import LANGUAGES, folder_unlike_the_schema, has_chinese, said
from conftest import syncdb_in as syncdb
from syncdb.schema import DEFAULT_SCHEMAS


def wrong_check_character(n: int) -> str:
    body = f"44190019800101{n:03d}"
    good = ric.calc_check_digit(body + "0")
    return body + ("1" if good != "1" else "2")


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_record_held_at_push_is_shown_by_status_in_the_users_language(make_community, syncdb_env, tmp_path,
                                                                        language):
    c = make_community("441900003001")
    c.add_persons(1)
    bad = wrong_check_character(7)
    conn = sqlite3.connect(c.path / "huji.db")
    with conn:
        conn.execute("INSERT INTO persons (id_number, name, sex, ethnicity, birth_date, community_code, status) "
                     "VALUES (?, '居民甲', '1', '01', '1980-01-01', ?, 'normal')", (bad, c.code))
    conn.close()

    pushed = syncdb(syncdb_env, language, "push", c.path, "--outbox", tmp_path / "stick")
    status = syncdb(syncdb_env, language, "status", c.path)

    reason = {"zh_CN": "id_number：校验码错误：应为", "en": "id_number: wrong check character: expected"}[language]
    not_sent = {"zh_CN": "改正前不会发送：", "en": "not sent until fixed: "}[language]
    assert not_sent in said(pushed) and reason in said(pushed), said(pushed)
    assert reason in said(status), said(status)
    other = {"zh_CN": "wrong check character", "en": "校验码错误"}[language]
    assert other not in said(pushed) + said(status)


@pytest.mark.parametrize("language", LANGUAGES)
def test_community_init_on_a_folder_that_does_not_exist_says_so_in_the_users_language(office_store, syncdb_env,
                                                                                       tmp_path, language):
    missing = tmp_path / "no-such-folder"
    result = syncdb(syncdb_env, language, "community", "init", missing, "--code", "441900003001",
                    "--office-key", office_store / "office.pub.json")
    assert result.returncode == 1, said(result)
    expected = {
        "zh_CN": f"{missing}：没有这个文件夹。请给出存放本社区工作库（",
        "en": f"{missing}: no such folder. Give the folder that holds the community's working databases (",
    }[language]
    assert expected in result.stderr and "huji.db" in result.stderr, result.stderr
    assert has_chinese(result.stderr) == (language == "zh_CN")
    assert not missing.exists()


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_folder_with_tables_unlike_the_schema_is_refused_in_the_users_language(office_store, syncdb_env,
                                                                                 tmp_path, language):
    folder = folder_unlike_the_schema(tmp_path)
    result = syncdb(syncdb_env, language, "community", "init", folder, "--code", "441900003001",
                    "--office-key", office_store / "office.pub.json")
    assert result.returncode == 1, said(result)
    expected = {
        "zh_CN": ["无法设置变更捕获：", "缺少表“households”", "表“persons”缺少列 sex, ethnicity",
                  "ALTER TABLE persons ADD COLUMN sex TEXT", "重新运行 `syncdb community init`"],
        "en": ["cannot set up capture: ", "table 'households' is missing", "table 'persons' has no column sex, ethnicity",
               "ALTER TABLE persons ADD COLUMN sex TEXT", "run `syncdb community init` again"],
    }[language]
    for words in expected:
        assert words in result.stderr, result.stderr
    assert not (folder / ".syncdb").exists()


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_schema_file_with_a_mistake_is_named_in_the_users_language(syncdb_env, tmp_path, language):
    schemas = tmp_path / "schemas"
    shutil.copytree(DEFAULT_SCHEMAS, schemas)
    huji = schemas / "huji.toml"
    text = huji.read_text(encoding="utf-8")
    assert 'type = "date"' in text
    huji.write_text(text.replace('type = "date"', 'type = "datum"', 1), encoding="utf-8")
    result = syncdb(syncdb_env, language, "schemas", "check", "--schemas", schemas)
    assert result.returncode == 1, said(result)
    expected = {"zh_CN": "未知类型“datum”；请使用以下之一：text, integer, real, date",
                "en": "unknown type 'datum'; use one of text, integer, real, date"}[language]
    assert expected in result.stderr and "huji.toml" in result.stderr, result.stderr


def nothing_listening_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_push_to_an_office_that_is_not_listening_says_so_in_the_users_language(make_community, syncdb_env,
                                                                                 language):
    c = make_community("441900003001")
    c.add_persons(2)
    url = nothing_listening_url()
    result = syncdb(syncdb_env, language, "push", c.path, "--to", url, "--retries", "0")
    assert result.returncode == 1, said(result)
    expected = {
        "zh_CN": [f"尝试 1 次后 {url} 的街道办仍没有应答（连接被拒绝）", "这 1 个数据包留在发件箱中等下次运行"],
        "en": [f"the office at {url} did not answer after 1 tries (connection refused)",
               "the 1 bundle(s) stay in the outbox for the next run"],
    }[language]
    for words in expected:
        assert words in said(result), said(result)
    assert [p.name for p in c.pending()] == [f"{c.code}-00000001.bundle"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_deletions_held_for_a_person_are_shown_by_status_in_the_users_language(make_community, syncdb_env,
                                                                               tmp_path, language):
    """The one hold reason state.db keeps as a key (in English, whatever the language of the push)
    reads in the user's language where status shows it."""
    c = make_community("441900003001")
    c.add_persons(3)
    stick = tmp_path / "stick"
    assert syncdb(syncdb_env, "en", "push", c.path, "--outbox", stick).returncode == 0
    conn = sqlite3.connect(c.path / "huji.db")
    with conn:
        conn.execute("DELETE FROM persons")
    conn.close()
    pushed = syncdb(syncdb_env, "en", "push", c.path, "--outbox", stick)
    assert pushed.returncode == 1, said(pushed)

    status = syncdb(syncdb_env, language, "status", c.path)
    expected = {"zh_CN": "删除已暂缓：请用 `syncdb push --confirm-deletes` 确认",
                "en": "deletion held: confirm it with `syncdb push --confirm-deletes`"}[language]
    assert said(status).count(expected) == 3, said(status)
