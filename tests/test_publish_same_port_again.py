"""`syncdb publish` stopped and started again on the same port starts, on Linux as before the
Windows change (publish.bind sets SO_REUSEADDR only where os.name is "posix").

The site closes a visitor's kept-alive connection when it stops, which leaves that connection in
TIME_WAIT on the site's port; without SO_REUSEADDR a restart within the next minute is refused
("port ... is already in use").
"""

import http.client
import subprocess

from conftest import SYNCDB, Publisher, wait_until_answering
from test_publish_starting import _street


def test_publish_starts_again_on_its_port_right_after_it_stopped_with_a_visitor_connected(
        office_store, make_community, syncdb_env, syncdb_secret, domains, tmp_path):
    _street(office_store, make_community, syncdb_env, syncdb_secret, domains, persons=3)
    first = Publisher(office_store, syncdb_env, tmp_path / "first.log")
    visitor = http.client.HTTPConnection("127.0.0.1", first.port, timeout=5)
    try:
        visitor.request("GET", "/-/login")
        answer = visitor.getresponse()
        answer.read()
        assert answer.status == 200
        first.stop()  # the site closes the kept-alive connection first: TIME_WAIT on its port
    finally:
        visitor.close()
        first.stop()
    log = tmp_path / "again.log"
    with open(log, "wb") as out:
        again = subprocess.Popen([SYNCDB, "publish", str(office_store), "--host", "127.0.0.1",
                                  "--port", str(first.port)], env=syncdb_env, stdout=out, stderr=out)
    try:
        wait_until_answering(again, f"{first.url}/-/login", 60, lambda: log.read_text(errors="replace"))
    finally:
        again.terminate()
        again.wait(10)
