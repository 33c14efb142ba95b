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
           "Invalid HTTP request", "Waiting for application", "Application s", "INFO", "WARNING", "ERROR"]


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
        # The level each line names too (it said INFO and WARNING): "<time> 信息 服务进程 [...] 已启动".
        assert re.search(r"^\S+ \S+ 信息 服务进程 \[\d+\] 已启动$", log, re.M), log
        assert re.search(r"^\S+ \S+ 警告 收到一个无效的 HTTP 请求，已拒绝。$", log, re.M), log
    else:
        for words in ("Started server process [", "Invalid HTTP request received.", "Shutting down"):
            assert words in log, (words, log)
        assert re.search(r"^\S+ \S+ INFO Started server process \[\d+\]$", log, re.M), log


def test_publish_logs_the_servers_own_lines_in_chinese(office_store, make_community, syncdb_env, syncdb_secret,
                                                       domains, tmp_path):
    _street(office_store, make_community, syncdb_env, syncdb_secret, domains, persons=3)
    site = Publisher(office_store, dict(syncdb_env, SYNCDB_LANG="zh_CN"), tmp_path / "publish.log")
    log = _garbage_then_ctrl_c(site, site.stop)
    _in_chinese(log, ("服务进程 [", "] 已启动", "收到一个无效的 HTTP 请求，已拒绝。", "正在停止服务", "] 已结束"))
    # syncdb's own lines and uvicorn's name their level in Chinese alike.
    assert re.search(r"^信息: +正在把汇总库解密到内存中", log, re.M), log
    assert re.search(r"^信息: +服务进程 \[\d+\] 已启动", log, re.M), log


def test_every_server_line_has_its_placeholders_in_its_translation():
    from syncdb import i18n

    i18n.use("zh_CN")
    try:
        for line in SERVER_LINES:
            words = i18n._(line)
            assert words != line, line
            # every "%" and the character after it: a stray "%" (100%), "%%" or "%i" breaks the line as
            # logging formats it ("--- Logging error ---", the line lost) as surely as a "%d" too few
            assert re.findall(r"%.", words, re.DOTALL) == re.findall(r"%.", line, re.DOTALL), (line, words)
    finally:
        i18n.use()


def _on_a_terminal(args, env, until: bytes, seconds: float = 60) -> bytes:
    """Run ``args`` on a pseudo-terminal (as an administrator's console) until ``until`` shows, then
    Ctrl-C; all it wrote."""
    import os
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, on the terminal
        os.execve(args[0], args, env)
    out, deadline, stopped = b"", time.monotonic() + seconds, False
    try:
        while time.monotonic() < deadline:
            if not stopped and until in out:
                os.kill(pid, signal.SIGINT)
                stopped = True
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # the terminal closed: the command has ended
                    break
                if not chunk:
                    break
                out += chunk
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)
    return out


def test_in_english_uvicorns_colored_lines_on_a_terminal_keep_their_colors(
        office_store, make_community, syncdb_env, syncdb_secret, domains):
    """SYNCDB_LANG=en: the filter has nothing to translate, and must leave uvicorn's line as it was,
    colors included (the process id in cyan); it used to replace the colored line by the plain one."""
    from conftest import SYNCDB, free_port

    _street(office_store, make_community, syncdb_env, syncdb_secret, domains, persons=3)
    port = free_port()
    out = _on_a_terminal([SYNCDB, "publish", str(office_store), "--host", "127.0.0.1", "--port", str(port)],
                         dict(syncdb_env, SYNCDB_LANG="en"), until=b"Ctrl-C")
    assert b"Started server process [\x1b[36m" in out, out
    assert b"Finished server process [\x1b[36m" in out, out
