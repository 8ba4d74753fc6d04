"""Tests of the system source and the filesystem probe (collectors/system.py, filesystems.py)."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections import namedtuple
from typing import Any

import pytest

from collectors import filesystems, system
from collectors.filesystems import (
    DEFAULT_EXCLUDED_MOUNTS,
    DEFAULT_EXCLUDED_TYPES,
    FilesystemProbe,
    Mount,
    real_mounts,
)
from collectors.metric_table import documented
from collectors.system import SystemOptions, SystemSource
from hub.names import METRIC_RE
from hub.tasks import TaskManager
from tests.collectors.fakes import wait_for

Part = namedtuple("Part", "device mountpoint fstype opts")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _source(tasks: TaskManager, clock: Clock, **options: Any) -> SystemSource:
    source = SystemSource(SystemOptions(**options), tasks, clock=clock)
    source.open()
    await wait_for(lambda: not source._slow_running, what="first slow refresh")
    return source


async def test_every_emitted_name_is_valid_and_in_the_metric_table() -> None:
    """A real sample of this host has only valid names, all listed in the metric table."""
    clock = Clock()
    async with TaskManager() as tasks:
        source = await _source(tasks, clock)
        await asyncio.sleep(0.1)
        clock.now += 1.0
        values = source.collect()
    assert "cpu_utilization_ratio" in values
    assert "memory_total_bytes" in values
    assert any(name.startswith("fs_used_bytes.") for name in values)
    for name, value in values.items():
        assert METRIC_RE.fullmatch(name), name
        assert documented("system", name), f"{name} is not in collectors/metric_table.py"
        assert isinstance(value, int | float)
    for name in values:
        if name.endswith("_ratio") or "_ratio." in name:
            assert 0.0 <= values[name] <= 1.0, name
        if "_per_second" in name:
            assert values[name] >= 0.0, name


async def test_cpu_is_never_reported_from_a_single_reading() -> None:
    """Right after the baseline no CPU ratio is reported at all (never a meaningless 0%)."""
    clock = Clock()
    async with TaskManager() as tasks:
        source = await _source(tasks, clock)
        values = source.collect()  # same clock instant as the baseline
        assert not any(name.startswith("cpu_") and name != "cpu_count" for name in values)
        assert not any("_per_second" in name for name in values)
        clock.now += 1.0
        assert "cpu_utilization_ratio" in source.collect()


async def test_counter_resets_never_give_negative_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interface whose counters go backwards (re-created) yields a rate >= 0."""
    Nic = namedtuple("Nic", "bytes_sent bytes_recv packets_sent packets_recv errin errout "
                            "dropin dropout")
    readings = iter([10_000_000, 20_000_000, 500])
    current = {"value": 0}

    def fake_net(pernic: bool = False) -> dict[str, Any]:
        v = current["value"]
        return {"eth9": Nic(v, v, v, v, 0, 0, 0, 0), "lo": Nic(v, v, v, v, 0, 0, 0, 0)}

    monkeypatch.setattr(system.psutil, "net_io_counters", fake_net)
    clock = Clock()
    async with TaskManager() as tasks:
        current["value"] = next(readings)
        source = await _source(tasks, clock)
        rates = []
        for value in readings:
            current["value"] = value
            clock.now += 1.0
            values = source.collect()
            rates.append(values["net_rx_bytes_per_second.eth9"])
            assert "net_rx_bytes_total.lo" not in values  # excluded by default
    assert rates == [10_000_000.0, 500.0]


async def test_partitions_and_excluded_disks_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk I/O covers whole disks only: no partitions, loop or ram devices."""
    Io = namedtuple("Io", "read_bytes write_bytes read_count write_count busy_time")
    disks = {name: Io(1, 2, 3, 4, 5) for name in ("sda", "sda1", "loop0", "nvme0n1")}
    monkeypatch.setattr(system.psutil, "disk_io_counters", lambda perdisk=False: disks)
    monkeypatch.setattr(SystemSource, "_read_whole_disks",
                        staticmethod(lambda: frozenset({"sda", "loop0", "nvme0n1"})))
    clock = Clock()
    async with TaskManager() as tasks:
        source = await _source(tasks, clock)
        clock.now += 1.0
        values = source.collect()
    devices = {name.split(".", 1)[1] for name in values if name.startswith("disk_reads_total.")}
    assert devices == {"sda", "nvme0n1"}
    assert values["disk_io_time_seconds_total.sda"] == 0.005


def test_only_real_mounts_count_once_per_device() -> None:
    """Network, pseudo and runtime mounts are excluded; bind mounts count once per device."""
    parts = [
        Part("/dev/sda1", "/", "ext4", ""),
        Part("/dev/sda1", "/srv/bind", "ext4", ""),
        Part("server:/export", "/mnt/nfs", "nfs4", ""),
        Part("tmpfs", "/tmp", "tmpfs", ""),
        Part("overlay", "/var/lib/docker/overlay2/x/merged", "overlay", ""),
        Part("/dev/sdb1", "/var/lib/docker", "xfs", ""),
        Part("/dev/sdc1", "/data", "XFS", ""),
        Part("/dev/loop3", "/snap/core/1", "squashfs", ""),
    ]
    mounts = real_mounts(parts, DEFAULT_EXCLUDED_TYPES, re.compile(DEFAULT_EXCLUDED_MOUNTS))
    assert mounts == [Mount("/dev/sda1", "/", "ext4"), Mount("/dev/sdc1", "/data", "xfs")]


async def test_a_hung_statvfs_never_stalls_and_is_not_asked_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mount whose statvfs hangs times out (counted) while the others answer; while it
    stays hung no second thread is started for it."""
    release = threading.Event()
    calls: dict[str, int] = {}
    real_statvfs = os.statvfs

    def statvfs(path: str) -> os.statvfs_result:
        calls[path] = calls.get(path, 0) + 1
        if path == "/hung":
            release.wait(30)
        return real_statvfs("/")

    monkeypatch.setattr(filesystems.os, "statvfs", statvfs)
    probe = FilesystemProbe(timeout=0.1)
    mounts = [Mount("a", "/", "ext4"), Mount("b", "/hung", "nfs")]
    loop = asyncio.get_running_loop()
    started = loop.time()
    usage = await probe.usage(mounts)
    assert loop.time() - started < 1.0
    assert set(usage) == {"/"}
    assert usage["/"]["fs_size_bytes"] > 0
    assert probe.timeouts_total == 1
    usage = await probe.usage(mounts)
    assert set(usage) == {"/"}
    assert probe.timeouts_total == 2
    assert calls["/hung"] == 1
    release.set()
    await wait_for(lambda: probe._inflight["/hung"].done(), what="hung call returns")
    assert set(await probe.usage(mounts)) == {"/", "/hung"}


async def test_slow_metrics_refresh_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    """collect() returns at once while the slow refresh waits on a hung filesystem."""
    release = threading.Event()
    real_statvfs = os.statvfs

    def statvfs(path: str) -> os.statvfs_result:
        release.wait(30)
        return real_statvfs(path)

    monkeypatch.setattr(filesystems.os, "statvfs", statvfs)
    clock = Clock()
    async with TaskManager() as tasks:
        source = SystemSource(SystemOptions(fs_timeout=5.0), tasks, clock=clock)
        source.open()
        assert source._slow_running
        clock.now += 1.0
        values = source.collect()  # does not wait for the refresh
        assert "memory_total_bytes" in values
        assert not any(name.startswith("fs_") for name in values)
        release.set()
        await wait_for(lambda: not source._slow_running, what="refresh done")
        clock.now += 1.0
        assert any(name.startswith("fs_") for name in source.collect())
