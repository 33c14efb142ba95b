"""`syncdb demo` (what `make demo` runs): push, merge, conflicts, then the result published."""

import re
import subprocess
import time

import requests

from conftest import SYNCDB, free_port


def test_demo_pushes_merges_and_publishes(tmp_path, syncdb_env):
    port = free_port()
    process = subprocess.Popen([SYNCDB, "demo", str(tmp_path / "demo"), "--residents", "150", "--port", str(port)],
                               env=syncdb_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 240
        for line in process.stdout:
            lines.append(line)
            if "Published read-only at" in line or time.monotonic() > deadline:
                break
        output = "".join(lines)
        assert "Published read-only at" in output, output
        assert "sent to http://127.0.0.1:" in output  # the communities pushed over HTTP
        assert "conflicts: 2 opened" in output and "1 open conflict(s) left" in output, output
        # The checks counted from the sample's day (checks.toml) and found the planted cases.
        found = dict(re.findall(r"^   (Deceased or moved out, yet still paid|Rented house over its approved capacity"
                                r"|Residence permit expired, still living here): (\d+)$", output, re.M))
        assert len(found) == 3 and all(int(n) > 0 for n in found.values()), output
        assert "The cross-domain checks found " in output
        accounts = dict(re.findall(r"^   (staff|pii) / (\S+)", output, re.M))
        url = f"http://127.0.0.1:{port}"
        session = requests.Session()
        page = session.get(f"{url}/-/login")
        token = page.text.split('name="csrftoken" value="', 1)[1].split('"', 1)[0]
        session.post(f"{url}/-/login", data={"csrftoken": token, "username": "staff",
                                             "password": accounts["staff"]})
        persons = session.get(f"{url}/renkou/~E6~88~B7~E7~B1~8D_~E4~BA~BA~E5~91~98.json?_shape=array&_size=5")
        assert persons.status_code == 200 and len(persons.json()) == 5
        conflicts = session.get(f"{url}/-/conflicts")
        assert conflicts.status_code == 200 and "姓名" in conflicts.text  # the staged concurrent edit, still open
        checks_page = session.get(f"{url}/-/checks")
        assert checks_page.status_code == 200 and 'href="/-/checks/deceased_paid"' in checks_page.text
        sync = session.get(f"{url}/-/sync")
        assert all(code in sync.text for code in ("441900003001", "441900003002", "441900003003"))
    finally:
        process.terminate()
        process.wait(20)
