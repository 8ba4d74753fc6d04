"""Tests of --host-root: the node's mounts, measured under the host root, named as on the node."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import pytest

from collectors import filesystems, system
from collectors.filesystems import (
    DEFAULT_EXCLUDED_MOUNTS,
    DEFAULT_EXCLUDED_TYPES,
    FilesystemProbe,
    Mount,
    host_path,
    list_mounts,
)
from collectors.settings import SPEC
from collectors.system import SystemOptions, SystemSource
from hub.errors import ConfigError
from hub.tasks import TaskManager
from tests.collectors.fakes import wait_for

FILESYSTEMS = "nodev\tsysfs\nnodev\tproc\nnodev\ttmpfs\nnodev\toverlay\n\text4\n\txfs\n"
HOST_MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
tmpfs /run tmpfs rw 0 0
/dev/sdb1 /var ext4 rw 0 0
/dev/sdb1 /var/lib/kubelet/pods/abc/volumes ext4 rw 0 0
overlay /var/lib/containers/storage/overlay/x/merged overlay rw 0 0
/dev/sdc1 /mnt/big\\040disk xfs rw 0 0
"""
EXCLUDED = re.compile(DEFAULT_EXCLUDED_MOUNTS)


@pytest.fixture
def host_root(tmp_path: Path) -> Path:
    """A fake node's / with the directories its mounts are seen at."""
    root = tmp_path / "host" / "root"
    for sub in ("var", "mnt/big disk", "proc", "run"):
        (root / sub).mkdir(parents=True)
    (tmp_path / "mounts").write_text(HOST_MOUNTS)
    (tmp_path / "filesystems").write_text(FILESYSTEMS)
    return root


def _files(tmp_path: Path) -> dict[str, str]:
    return {"mounts_file": str(tmp_path / "mounts"),
            "own_mounts_file": str(tmp_path / "missing"),
            "filesystems_file": str(tmp_path / "filesystems")}


def test_host_mounts_keep_the_hosts_names_and_stat_under_the_root(
    host_root: Path, tmp_path: Path,
) -> None:
    """The node's table gives real mounts named as on the node, each measured under the root."""
    mounts = list_mounts(DEFAULT_EXCLUDED_TYPES, EXCLUDED, host_root=str(host_root),
                         **_files(tmp_path))
    assert mounts == [
        Mount("/dev/sda1", "/", "ext4", str(host_root)),
        Mount("/dev/sdc1", "/mnt/big disk", "xfs", f"{host_root}/mnt/big disk"),
        Mount("/dev/sdb1", "/var", "ext4", f"{host_root}/var"),
    ]


def test_without_the_hosts_table_the_own_table_under_the_root_stands_in(
    host_root: Path, tmp_path: Path,
) -> None:
    """If /proc/1/mounts cannot be read, the container's mounts under the root are used,
    renamed to the node's paths; the container's other mounts are left out."""
    own = f"/dev/vda1 / ext4 rw 0 0\n/dev/sda1 {host_root} ext4 ro 0 0\n" \
          f"/dev/sdb1 {host_root}/var ext4 ro 0 0\nproc {host_root}/proc proc ro 0 0\n"
    (tmp_path / "own").write_text(own)
    files = _files(tmp_path) | {"mounts_file": str(tmp_path / "missing"),
                                "own_mounts_file": str(tmp_path / "own")}
    mounts = list_mounts(DEFAULT_EXCLUDED_TYPES, EXCLUDED, host_root=f"{host_root}/", **files)
    assert [(m.mountpoint, m.stat_path) for m in mounts] == [
        ("/", str(host_root)), ("/var", f"{host_root}/var")]


def test_host_path_joins_without_doubling_slashes() -> None:
    """The node's / is the root itself; other mount points are appended once."""
    assert host_path("/host/root/", "/") == "/host/root"
    assert host_path("/host/root", "/var/log") == "/host/root/var/log"
    assert host_path("/", "/var") == "/var"


async def test_statvfs_runs_on_the_prefixed_path_and_reports_the_host_name(
    host_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The probe asks statvfs about <root><mountpoint> and keys the answer by <mountpoint>."""
    asked: list[str] = []
    real_statvfs = os.statvfs

    def statvfs(path: str) -> os.statvfs_result:
        asked.append(path)
        return real_statvfs(path)

    monkeypatch.setattr(filesystems.os, "statvfs", statvfs)
    mounts = list_mounts(DEFAULT_EXCLUDED_TYPES, EXCLUDED, host_root=str(host_root),
                         **_files(tmp_path))
    usage = await FilesystemProbe(timeout=5.0).usage(mounts)
    assert set(usage) == {"/", "/var", "/mnt/big disk"}
    assert sorted(asked) == sorted([str(host_root), f"{host_root}/var",
                                    f"{host_root}/mnt/big disk"])
    assert usage["/var"]["fs_size_bytes"] > 0


async def test_system_source_names_filesystems_after_the_node(
    host_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With host_root set, the system kind carries fs_used_bytes./var, never the root's path."""
    monkeypatch.setattr(system, "list_mounts", functools.partial(list_mounts, **_files(tmp_path)))
    async with TaskManager() as tasks:
        source = SystemSource(SystemOptions(host_root=host_root, temperatures=False), tasks)
        source.open()
        await wait_for(lambda: not source._slow_running, what="first slow refresh")
        names = {name for name in source._slow if name.startswith("fs_used_bytes.")}
    assert names == {"fs_used_bytes./", "fs_used_bytes./var", "fs_used_bytes./mnt/big_disk"}


def test_the_setting_is_a_path_and_must_be_absolute() -> None:
    """METRICS_HUB_HOST_ROOT loads as a path, is unset by default and refuses a relative one."""
    assert SPEC.load([], environ={}).settings.host_root is None
    loaded = SPEC.load([], environ={"METRICS_HUB_HOST_ROOT": "/host/root"})
    assert loaded.settings.host_root == Path("/host/root")
    with pytest.raises(ConfigError, match="absolute"):
        SPEC.load(["--host-root", "host/root"], environ={})
