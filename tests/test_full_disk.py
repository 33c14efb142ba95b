"""A full disk, for real: a small tmpfs mounted for the test and filled to the last byte.

At the office (the store's disk) and at a community (the USB stick it pushes
to): every run stops with a message that says the disk is full and what to
do, loses nothing, and the next run after space is freed finishes the work.
"""

import errno
import os
import subprocess

import pytest

from conftest import SYNCDB, stored_values
from syncdb import audit, merge, migrations, office
from syncdb.crypto import Secret


class SmallDisk:
    """A tmpfs of a few MiB at ``path``; fill() takes every free byte, free() gives them back."""

    def __init__(self, path, size: str):
        self.path = path
        path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"a full-disk test mounts a small tmpfs, which needs root here: {result.stderr.strip()}")
        self.filler = path / "filler"

    def fill(self, leave: int = 0) -> None:
        """Fill the disk, then give back ``leave`` bytes."""
        block = b"\0" * 65536
        # Unbuffered: a block written in part leaves nothing in a buffer for close() to fail on.
        with open(self.filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(block)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
        # Byte by byte for what the last block left.
        with open(self.filler, "ab", buffering=0) as f:
            try:
                while f.write(b"\0"):
                    pass
            except OSError as e:
                assert e.errno == errno.ENOSPC
        if leave:
            os.truncate(self.filler, self.filler.stat().st_size - leave)

    def free(self) -> None:
        self.filler.unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    disks = []

    def make(name: str, size: str = "16m") -> SmallDisk:
        disk = SmallDisk(tmp_path / name, size)
        disks.append(disk)
        return disk

    yield make
    for disk in disks:
        disk.unmount()


def run(args, env):
    return subprocess.run([SYNCDB, *args], env=env, capture_output=True, text=True, timeout=300)


def store_rows(store, secret, domains) -> dict:
    st = migrations.open_upgraded(store, secret, domains)
    try:
        return {i: p for _key, i, p in stored_values(st, "huji.persons", "id_number", "phone")}
    finally:
        st.conn.close()


@pytest.mark.parametrize("leave", [0, 300_000], ids=["not-a-byte-left", "full-mid-merge"])
def test_merge_on_a_full_disk_stops_clearly_and_finishes_after_space_is_freed(
        small_disk, tmp_path, domains, syncdb_env, syncdb_secret, leave):
    disk = small_disk("office-disk", "24m")
    store = disk.path / "office"
    migrations.init(store, syncdb_secret)
    from conftest import Community
    from syncdb import community as community_lib, workdir

    code = "441900003001"
    folder = tmp_path / "community"
    workdir.create(folder, domains)
    pub = community_lib.init(folder, code, store / "office.pub.json", domains, syncdb_secret)
    office.enroll(store, code, pub)
    c = Community(folder, code, store, domains, syncdb_secret)
    c.add_persons(3000)
    bundle_path = c.export().path
    office.receive_files(store, [bundle_path])
    disk.fill(leave)

    failed = run(["merge", str(store)], syncdb_env)
    assert failed.returncode == 1, failed.stderr
    message = " ".join(failed.stderr.split())
    assert f"the disk holding {store} is full; free some space there" in message, message
    if leave:
        assert f"run `syncdb merge {store}` again (merging {bundle_path.name} stopped" in message, message
    assert "Traceback" not in failed.stderr
    assert (office.inbox_dir(store) / bundle_path.name).exists()

    disk.free()
    st = migrations.open_upgraded(store, syncdb_secret, domains)  # (SQLite cannot even read with no byte free)
    assert st.conn.execute("SELECT count(*) FROM applied").fetchone() == (0,)
    assert st.conn.execute("SELECT count(*) FROM huji__persons").fetchone() == (0,)
    st.conn.close()
    done = run(["merge", str(store)], syncdb_env)
    assert done.returncode == 0, done.stderr
    assert len(store_rows(store, syncdb_secret, domains)) == 3000
    st = migrations.open_upgraded(store, syncdb_secret, domains)
    assert audit.verify(st) == 3000
    st.conn.close()


def _community(tmp_path, store, domains, secret, code="441900003001"):
    from conftest import Community
    from syncdb import community as community_lib, workdir

    folder = tmp_path / f"community-{code}"
    workdir.create(folder, domains)
    pub = community_lib.init(folder, code, store / "office.pub.json", domains, secret)
    office.enroll(store, code, pub)
    return Community(folder, code, store, domains, secret)


def test_push_to_a_full_usb_stick_keeps_every_bundle_for_the_next_push(
        small_disk, tmp_path, domains, syncdb_env, syncdb_secret, office_store):
    stick = small_disk("usb-stick", "4m")
    c = _community(tmp_path, office_store, domains, syncdb_secret)
    c.add_persons(50)
    stick.fill()

    failed = run(["push", str(c.path), "--outbox", str(stick.path)], syncdb_env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    message = " ".join(failed.stderr.split())
    assert "full" in message and str(stick.path) in message and "Traceback" not in message, message
    assert len(c.pending()) == 1  # made, kept in the community's outbox
    c.add_persons(5)  # the next evening's work

    stick.free()
    done = run(["push", str(c.path), "--outbox", str(stick.path)], syncdb_env)
    assert done.returncode == 0, done.stderr
    copied = sorted(p for p in stick.path.iterdir() if p.suffix == ".bundle")
    assert len(copied) == 2
    summary = merge.merge(office_store, copied, syncdb_secret, domains)
    assert summary.applied == 2 and summary.rejected == []
    assert len(store_rows(office_store, syncdb_secret, domains)) == 55


def test_serve_on_a_full_disk_answers_507_and_the_push_keeps_its_bundle(
        small_disk, tmp_path, domains, syncdb_env, syncdb_secret, office_server):
    disk = small_disk("office-disk", "8m")
    store = disk.path / "office"
    migrations.init(store, Secret(key_file_bytes=syncdb_secret.key_file_bytes))
    c = _community(tmp_path, store, domains, syncdb_secret)
    c.add_persons(40)
    server = office_server(store=store)
    disk.fill()

    failed = run(["push", str(c.path), "--to", server.url, "--retries", "1"], syncdb_env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    message = " ".join((failed.stdout + failed.stderr).split())
    assert "disk" in message and "full" in message and "Traceback" not in message, message
    assert len(c.pending()) == 1

    disk.free()
    done = run(["push", str(c.path), "--to", server.url], syncdb_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert c.pending() == []


def test_push_from_a_community_whose_own_disk_is_full_loses_no_change(
        small_disk, tmp_path, domains, syncdb_env, syncdb_secret, office_store):
    """The community PC's disk fills up between two evenings: push stops clearly, then catches up."""
    from conftest import Community
    from syncdb import community as community_lib, workdir

    disk = small_disk("community-disk", "16m")
    code = "441900003001"
    folder = disk.path / "shequ"
    workdir.create(folder, domains)
    pub = community_lib.init(folder, code, office_store / "office.pub.json", domains, syncdb_secret)
    office.enroll(office_store, code, pub)
    c = Community(folder, code, office_store, domains, syncdb_secret)
    c.add_persons(200)
    usb = tmp_path / "usb"
    assert run(["push", str(folder), "--outbox", str(usb)], syncdb_env).returncode == 0
    c.add_persons(100)  # the day's work, written before the disk filled up
    disk.fill(leave=20_000)

    failed = run(["push", str(folder), "--outbox", str(usb)], syncdb_env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    message = " ".join(failed.stderr.split())
    assert f"the disk holding {folder} is full; free some space there, then run `syncdb push` again" \
        in message, message

    disk.free()
    done = run(["push", str(folder), "--outbox", str(usb)], syncdb_env)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = merge.merge(office_store, [usb], syncdb_secret, domains)
    assert summary.rejected == [] and summary.refused == []
    assert len(store_rows(office_store, syncdb_secret, domains)) == 300
