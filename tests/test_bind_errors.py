"""What serve and publish say when their port cannot be bound, as Windows reports it too.

A socket error on Windows keeps the Windows sockets number as ``winerror``; its ``errno`` is then
10048 for a port in use (errno.EADDRINUSE is 10048 there) and 13 for a refused one, errno.EACCES, which
used to be read as "needs administrator rights" (Hyper-V and WSL reserve ranges of ports; no port
needs administrator rights there). Linux cannot raise them, so the errors are made as Windows' would
be; the POSIX ones are raised by real sockets.
"""

import errno
import socket
import sys
import time

import pytest

from syncdb.errors import SyncdbError
from syncdb.publish import WSAEACCES, WSAEADDRINUSE, bind, not_bound


def windows_error(number: int, winerror: int, text: str) -> OSError:
    error = OSError(number, text)
    error.winerror = winerror  # what CPython sets on Windows (OSError's fourth argument, there only)
    return error


def test_a_port_in_use_on_windows_is_said_to_be_in_use():
    said = str(not_bound(windows_error(WSAEADDRINUSE, WSAEADDRINUSE, "Only one usage of each socket address"),
                         "127.0.0.1", 8001))
    assert "port 8001 on 127.0.0.1 is already in use" in said and "--port" in said


def test_a_port_windows_refuses_is_said_to_be_reserved_not_to_need_administrator_rights():
    said = str(not_bound(windows_error(errno.EACCES, WSAEACCES, "forbidden by its access permissions"),
                         "0.0.0.0", 8765))
    assert "reserved by Windows or held by another program" in said and "--port" in said
    assert "administrator" not in said and "1024" not in said


def test_posix_refusals_keep_their_words():
    assert "administrator rights" in str(not_bound(OSError(errno.EACCES, "Permission denied"), "0.0.0.0", 80))
    assert "cannot listen on 10.9.8.7:1" in str(not_bound(OSError(errno.EADDRNOTAVAIL, "x"), "10.9.8.7", 1))


def test_a_port_in_use_here_is_said_by_bind():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SyncdbError, match=f"port {port} on 127.0.0.1 is already in use"):
            bind("127.0.0.1", port)


def test_the_windows_refusal_is_said_in_chinese_by_default():
    from syncdb import i18n

    i18n.use("zh_CN")
    try:
        said = str(not_bound(windows_error(errno.EACCES, WSAEACCES, "forbidden"), "127.0.0.1", 8001))
    finally:
        i18n.use()
    assert "127.0.0.1 上的端口 8001 被 Windows 保留" in said and "--port" in said


def _reusing(port: int) -> socket.socket:
    """A socket as any asyncio server binds one on POSIX (SO_REUSEADDR), bound to ``port``."""
    other = socket.socket()
    try:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", port))
    except OSError:
        other.close()
        raise
    return other


# What SO_REUSEADDR allows is Linux's here: Windows lets it take even a listening port, BSD and macOS need
# SO_REUSEPORT for the same address and port.
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's SO_REUSEADDR")


@LINUX
def test_a_port_bound_to_listen_is_kept_from_a_program_that_reuses_addresses():
    """publish binds its port before its start-up work and uvicorn listens on it after: bound alone, the
    port went to another server (SO_REUSEADDR) listening first, and uvicorn's bare OSError was said as a
    folder that cannot be written."""
    kept = bind("127.0.0.1", 0, listen=True)
    try:
        with pytest.raises(OSError):
            _reusing(kept.getsockname()[1]).close()
    finally:
        kept.close()
    bound = bind("127.0.0.1", 0)  # not listening: what serve's probe is, closed at once
    try:
        other = _reusing(bound.getsockname()[1])
        other.listen()
        other.close()
    finally:
        bound.close()


# `syncdb publish` whose make_datasette waits for the GATE file: its port bound, its site not yet served.
HELD = """
import sys, time
from pathlib import Path
from syncdb import cli, publish
gate = Path(sys.argv[1])
made = publish.make_datasette
def held(*args, **kwargs):
    while not gate.exists():
        time.sleep(0.02)
    return made(*args, **kwargs)
publish.make_datasette = held
cli.cli.main(sys.argv[2:], prog_name="syncdb")
"""


@LINUX
def test_publish_keeps_its_port_while_it_starts(office_store, make_community, syncdb_env, syncdb_secret, domains,
                                                 tmp_path):
    import subprocess

    from conftest import free_port, wait_until_answering
    from test_publish_starting import _street

    _street(office_store, make_community, syncdb_env, syncdb_secret, domains, persons=2)
    port, gate, log = free_port(), tmp_path / "gate", tmp_path / "publish.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-c", HELD, str(gate), "publish", str(office_store), "--host",
                                    "127.0.0.1", "--port", str(port)], env=syncdb_env, stdout=out, stderr=out)
    try:
        # Until publish has bound its port, a socket of ours takes it; once it has, none can (it listens).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                other = _reusing(port)
            except OSError:
                break
            other.close()
            time.sleep(0.05)
        else:
            raise AssertionError("publish did not keep its port from another server while it started")
        gate.write_text("")
        wait_until_answering(process, f"http://127.0.0.1:{port}/-/login", 60, log.read_text)
    finally:
        process.kill()
        process.wait()
