"""Second read of merge --jobs's default within a CPU quota: the quota of the cgroup this process is
in, read through /proc/self/cgroup, not only the one at the cgroup file system's root."""

from __future__ import annotations

from pathlib import Path

from syncdb import prepare


def _tree(root: Path, quotas: dict[str, str]) -> Path:
    for where, text in quotas.items():
        folder = root / where
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu.max").write_text(text)
    return root


def test_a_service_given_a_cpu_quota_by_systemd_keeps_within_it(tmp_path):
    """`syncdb serve` run as a systemd service with CPUQuota=100% on a cgroup v2 host (no cgroup
    namespace: /sys/fs/cgroup is the host's, whose root has no cpu.max): one CPU, not every core."""
    root = _tree(tmp_path / "v2", {"system.slice/syncdb.service": "100000 100000\n"})
    own = tmp_path / "cgroup"
    own.write_text("0::/system.slice/syncdb.service\n")
    assert prepare.quota_cores(root, own) == 1.0
    # A quota on the slice above it binds it as well: the smaller one counts.
    _tree(root, {"system.slice": "50000 100000\n", "system.slice/syncdb.service": "max 100000\n"})
    assert prepare.quota_cores(root, own) == 0.5
    # A container with a namespace of its own sees itself at the root, as before.
    own.write_text("0::/\n")
    _tree(root, {"": "150000 100000\n"})
    assert prepare.quota_cores(root, own) == 1.5


def test_a_cgroup_v1_quota_of_a_nested_group_counts(tmp_path):
    root = tmp_path / "v1"
    folder = root / "cpu" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("200000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    own = tmp_path / "cgroup"
    own.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert prepare.quota_cores(root, own) == 2.0


def test_odd_cgroup_files_give_no_quota_rather_than_fail(tmp_path):
    own = tmp_path / "cgroup"
    own.write_text("garbage without colons\n0::/a\n")
    root = _tree(tmp_path / "v2", {"a": "max\n", "": "not numbers\n"})
    assert prepare.quota_cores(root, own) is None
    _tree(root, {"a": "0 0\n"})
    assert prepare.quota_cores(root, own) is None
    assert prepare.quota_cores(tmp_path / "none", tmp_path / "no-such-file") is None
