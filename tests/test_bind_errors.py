"""What serve and publish say when their port cannot be bound, as Windows reports it too.

A socket error on Windows keeps the Windows sockets number as ``winerror``; its ``errno`` is then
10048 for a port in use (errno.EADDRINUSE is 10048 there) and 13 for a refused one, errno.EACCES, which
used to be read as "needs administrator rights" (Hyper-V and WSL reserve ranges of ports; no port
needs administrator rights there). Linux cannot raise them, so the errors are made as Windows' would
be; the POSIX ones are raised by real sockets.
"""

import errno
import socket

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


def test_a_port_in_use_here_is_said_by_bind(tmp_path):
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
