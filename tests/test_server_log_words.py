"""The web server's own log lines (uvicorn's) are in the user's language, as syncdb's are.

`syncdb serve` and `syncdb publish` run on real processes on 127.0.0.1; an administrator reads
their output, which used to mix syncdb's Chinese with uvicorn's English ("Started server process",
"Press CTRL+C to quit", "Shutting down").
"""

import re
import signal
import socket

import pytest
from conftest import OfficeServer, Publisher
from syncdb.i18n import SERVER_LINES
from test_publish_starting import _street

ENGLISH = ["Started server process", "Press CTRL+C", "Shutting down", "Finished server process",
           "Invalid HTTP request", "Waiting for application", "Application s"]


def _garbage(url: str) -> None:
    """A request no HTTP server can read: uvicorn logs that it refused one."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"\x00\x01NOT HTTP AT ALL\r\n\r\n")
        conn.recv(1024)


def _garbage_then_ctrl_c(site, end) -> str:
    """Send the site a request no HTTP server can read, then Ctrl-C, then ``end()``; its log."""
    try:
        _garbage(site.url)
        site.process.send_signal(signal.SIGINT)
        site.process.wait(20)
    finally:
        end()
    return site.log()


def _in_chinese(log: str, words) -> None:
    for line in words:
        assert line in log, (line, log)
    assert not [e for e in ENGLISH if e in log], log


@pytest.mark.parametrize("language", ["zh_CN", "en"])
def test_serve_logs_the_servers_own_lines_in_the_users_language(office_store, syncdb_env, language, tmp_path):
    server = OfficeServer(office_store, dict(syncdb_env, SYNCDB_LANG=language), tmp_path / "serve.log").start()
    log = _garbage_then_ctrl_c(server, server.kill)
    if language == "zh_CN":
        _in_chinese(log, ("服务进程 [", "] 已启动", "正在等待应用启动。", "应用已启动。", "收到一个无效的 HTTP 请求，已拒绝。",
                          "正在停止服务", "应用已停止。", "] 已结束"))
    else:
        for words in ("Started server process [", "Invalid HTTP request received.", "Shutting down"):
            assert words in log, (words, log)


def test_publish_logs_the_servers_own_lines_in_chinese(office_store, make_community, syncdb_env, syncdb_secret,
                                                       domains, tmp_path):
    _street(office_store, make_community, syncdb_env, syncdb_secret, domains, persons=3)
    site = Publisher(office_store, dict(syncdb_env, SYNCDB_LANG="zh_CN"), tmp_path / "publish.log")
    _in_chinese(_garbage_then_ctrl_c(site, site.stop),
                ("服务进程 [", "] 已启动", "收到一个无效的 HTTP 请求，已拒绝。", "正在停止服务", "] 已结束"))


def test_every_server_line_has_its_placeholders_in_its_translation():
    from syncdb import i18n

    i18n.use("zh_CN")
    try:
        for line in SERVER_LINES:
            words = i18n._(line)
            assert words != line, line
            assert re.findall(r"%[sd]", words) == re.findall(r"%[sd]", line), (line, words)
    finally:
        i18n.use()
