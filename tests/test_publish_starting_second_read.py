"""Second read of publish answering during its start-up (publish.Starting, datasette_plugin.Stopped).

The tests of how publish ends run a real `syncdb publish` on 127.0.0.1 from a launcher that changes one
thing about its build or refresh (slower, or stopped at a given moment), and watch its log and exit.
"""

import signal
import subprocess
import sys
import time

from conftest import add_staff, free_port
from syncdb import merge
from test_faults_office import wait_for

# `syncdb publish` whose refreshes read each ledger entry PAUSE seconds slower, as a first load's entry of
# tens of thousands of changes is read (292,451 changes in 38 entries took 4.3 s here): once its first
# build is whole, it says so on stderr at each entry read.
SLOW_LEDGER = """
import sys, time
from syncdb import audit, cli, datasette_plugin
pause = float(sys.argv[1])
lines, reload, built = audit.lines, datasette_plugin.reload, []
def slow_lines(body):
    if built:
        print("reading a ledger entry", file=sys.stderr, flush=True)
        time.sleep(pause)
    return lines(body)
async def reload_then_slow(datasette):
    await reload(datasette)
    built.append(True)
audit.lines, datasette_plugin.reload = slow_lines, reload_then_slow
cli.cli.main(sys.argv[2:], prog_name="syncdb")
"""

# `syncdb publish` whose build pads the new persons table of each database with PAD rows of random
# values before the tables are indexed: the indexing at the end of the build then takes seconds, as it
# does at a million records.
PADDED = """
import sys
from syncdb import cli, projection
pad = int(sys.argv[1])
build_table = projection.Published._build_table
def padded(self, store, layout, *args, **kwargs):
    records = build_table(self, store, layout, *args, **kwargs)
    if layout.table.qualified == "huji.persons":
        for conn in (self.masked, self.plain):
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info([_new_{layout.name}])")]
            conn.execute(f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {pad}) "
                         f"INSERT INTO [_new_{layout.name}] (rowid, {', '.join(f'[{c}]' for c in columns)}) "
                         f"SELECT 1000000000 + i, {', '.join('abs(random()) % 100000' for _ in columns)} FROM n")
    return records
projection.Published._build_table = padded
cli.cli.main(sys.argv[2:], prog_name="syncdb")
"""


def _street(office_store, make_community, syncdb_env, syncdb_secret, domains):
    community = make_community("441900003001")
    community.add_persons(5)
    merge.merge(office_store, [community.export().path], syncdb_secret, domains)
    add_staff(office_store, syncdb_env)
    return community


def _launch(launcher: str, args: list, store, env, log_path, *options) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log_path, "ab") as out:
        process = subprocess.Popen([sys.executable, "-c", launcher, *args, "publish", str(store),
                                    "--host", "127.0.0.1", "--port", str(port), *options],
                                   env=dict(env, SYNCDB_LANG="en"), stdout=out, stderr=out)
    return process, f"http://127.0.0.1:{port}"


def test_publish_interrupted_while_its_build_indexes_ends_at_once_not_when_every_index_is_made(
        office_store, make_community, syncdb_env, syncdb_secret, domains, tmp_path):
    """The build's last step, indexing the new tables, is a few statements of seconds each at a million
    records (33 s for a persons table of a million rows here), with no chunk between them where Stopped
    is raised: Ctrl-C then waited for every index, and the log said "published" after it."""
    _street(office_store, make_community, syncdb_env, syncdb_secret, domains)
    log_path = tmp_path / "publish.log"
    process, _url = _launch(PADDED, ["400000"], office_store, syncdb_env, log_path)
    try:
        wait_for(lambda: "indexing them" in log_path.read_text(errors="replace"), 120, "no indexing")
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        process.wait(120)
        took = time.monotonic() - started
        log = log_path.read_text(errors="replace")
        assert took < 3, f"publish took {took:.1f} s to end after Ctrl-C:\n{log}"
        assert "published " not in log and "Traceback" not in log, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_note_says_one_second_in_the_singular(monkeypatch):
    """A second after start-up the English note said "Started 1 seconds ago."."""
    from syncdb import i18n
    from syncdb.publish import Starting

    monkeypatch.setattr(i18n, "_language", None)
    try:
        for language, said in (("en", "Started 1 second ago."), ("zh_CN", "已用时 1 秒。")):
            i18n.use(language)
            starting = Starting(app=None)
            starting.began -= 1.2
            assert said in starting.page(), starting.page()
        i18n.use("en")
        starting.began -= 1
        assert "Started 2 seconds ago." in starting.page()
    finally:
        i18n.use()


def test_publish_interrupted_while_a_refresh_reads_the_ledger_ends_at_once(
        office_store, make_community, syncdb_env, syncdb_secret, domains, tmp_path):
    community = _street(office_store, make_community, syncdb_env, syncdb_secret, domains)
    log_path = tmp_path / "publish.log"
    process, _url = _launch(SLOW_LEDGER, ["1.5"], office_store, syncdb_env, log_path, "--refresh", "1")
    try:
        wait_for(lambda: "Ctrl-C to stop" in log_path.read_text(errors="replace"), 60, "publish not ready")
        # Six nights, one ledger entry each: the refresh reads them for 9 s.
        merge.merge(office_store, community.make_bundles(6, persons=1), syncdb_secret, domains)
        wait_for(lambda: "reading a ledger entry" in log_path.read_text(errors="replace"), 30, "no refresh")
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        process.wait(60)
        took = time.monotonic() - started
        assert took < 3, f"publish took {took:.1f} s to end after Ctrl-C:\n{log_path.read_text(errors='replace')}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# `syncdb publish` told to stop (Ctrl-C) in the moment its first build ends.
STOPPED_AS_BUILT = """
import os, signal, sys
from syncdb import cli, datasette_plugin
reload = datasette_plugin.reload
async def reload_then_interrupted(datasette):
    await reload(datasette)
    os.kill(os.getpid(), signal.SIGINT)
datasette_plugin.reload = reload_then_interrupted
cli.cli.main(sys.argv[1:], prog_name="syncdb")
"""


def test_publish_stopped_as_its_build_ends_never_says_where_it_publishes(
        office_store, make_community, syncdb_env, syncdb_secret, domains, tmp_path):
    """The server ends up to a tenth of a second after Ctrl-C, and a build ending meanwhile had the
    address said ("Publishing … (Ctrl-C to stop)"): a script told it would connect and be refused."""
    _street(office_store, make_community, syncdb_env, syncdb_secret, domains)
    log_path = tmp_path / "publish.log"
    process, _url = _launch(STOPPED_AS_BUILT, [], office_store, syncdb_env, log_path)
    try:
        process.wait(60)
        log = log_path.read_text(errors="replace")
        assert "published 5 records" in log, log
        assert "Ctrl-C to stop" not in log, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
