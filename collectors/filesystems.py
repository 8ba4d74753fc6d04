"""Filesystem usage of the real mounts, each statvfs on its own daemon thread under a timeout.

A hung network mount makes statvfs block forever; here it costs one parked thread and a
counted timeout, never a stalled collector. Network and pseudo filesystems are excluded by
type, container and runtime paths by a mount-point pattern (both configurable).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psutil

from collectors.threads import call_in_thread

log = logging.getLogger(__name__)

NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smbfs", "smb3", "ncpfs", "afs", "ceph", "glusterfs",
    "fuse.glusterfs", "fuse.sshfs", "sshfs", "9p", "lustre", "gpfs", "davfs", "fuse.s3fs",
    "fuse.rclone", "fuse.cephfs", "beegfs", "ocfs2", "gfs2",
})
PSEUDO_FS = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devfs",
    "devpts", "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "iso9660", "mqueue", "nsfs",
    "overlay", "proc", "procfs", "pstore", "ramfs", "rpc_pipefs", "securityfs", "selinuxfs",
    "squashfs", "sysfs", "tmpfs", "tracefs", "fdescfs", "linprocfs", "linsysfs", "nullfs",
    "aufs", "shm", "zram",
})
DEFAULT_EXCLUDED_TYPES: tuple[str, ...] = tuple(sorted(NETWORK_FS | PSEUDO_FS))
DEFAULT_EXCLUDED_MOUNTS = (
    r"^/(proc|sys|dev|run|snap|var/lib/docker|var/lib/containers|var/lib/kubelet)($|/)"
)


@dataclass(frozen=True, slots=True)
class Mount:
    device: str
    mountpoint: str
    fstype: str


def real_mounts(
    partitions: Iterable[Any], excluded_types: Iterable[str], excluded_mounts: re.Pattern[str]
) -> list[Mount]:
    """The mounts worth reporting: allowed types and paths, one mount point per device.

    Bind mounts and btrfs subvolumes show one device at several paths with the same usage;
    the shortest path stands for the device.
    """
    types = {t.lower() for t in excluded_types}
    by_device: dict[str, Mount] = {}
    for part in partitions:
        fstype = (part.fstype or "").lower()
        if fstype in types or excluded_mounts.search(part.mountpoint):
            continue
        mount = Mount(part.device or part.mountpoint, part.mountpoint, fstype)
        known = by_device.get(mount.device)
        if known is None or len(mount.mountpoint) < len(known.mountpoint):
            by_device[mount.device] = mount
    return sorted(by_device.values(), key=lambda m: m.mountpoint)


def usage_values(stat: os.statvfs_result) -> dict[str, float | int]:
    """The fs_* values of one statvfs result, as ``df`` computes them (no instance suffix)."""
    size = stat.f_blocks * stat.f_frsize
    free = stat.f_bfree * stat.f_frsize
    available = stat.f_bavail * stat.f_frsize
    used = size - free
    values: dict[str, float | int] = {
        "fs_size_bytes": size, "fs_used_bytes": used, "fs_available_bytes": available,
    }
    if used + available > 0:
        values["fs_used_ratio"] = used / (used + available)
    if stat.f_files > 0:
        values["fs_inodes_used_ratio"] = (stat.f_files - stat.f_ffree) / stat.f_files
    return values


class FilesystemProbe:
    """Checks each mount's usage on its own thread; one still hung is not asked again."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.timeouts_total = 0
        self._inflight: dict[str, asyncio.Future[os.statvfs_result]] = {}

    async def usage(self, mounts: Iterable[Mount]) -> dict[str, dict[str, float | int]]:
        """mount point -> fs values, for the mounts that answered within the timeout."""
        calls: dict[str, asyncio.Future[os.statvfs_result]] = {}
        for mount in mounts:
            pending = self._inflight.get(mount.mountpoint)
            if pending is not None and not pending.done():
                self.timeouts_total += 1  # still stuck since an earlier round
                continue
            future = call_in_thread(os.statvfs, mount.mountpoint, name="mh-statvfs")
            self._inflight[mount.mountpoint] = calls[mount.mountpoint] = future
        if not calls:
            return {}
        done, pending_set = await asyncio.wait(calls.values(), timeout=self.timeout)
        results: dict[str, dict[str, float | int]] = {}
        for mountpoint, future in calls.items():
            if future in pending_set:
                self.timeouts_total += 1
                log.warning("statvfs(%s) did not answer within %gs; skipping this mount "
                            "until it does", mountpoint, self.timeout)
                future.add_done_callback(_consume)
                continue
            del self._inflight[mountpoint]
            try:
                results[mountpoint] = usage_values(future.result())
            except OSError as exc:  # unmounted meanwhile, permission denied
                log.debug("statvfs(%s) failed: %s", mountpoint, exc)
        return results


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def list_mounts(excluded_types: Iterable[str], excluded_mounts: re.Pattern[str]) -> list[Mount]:
    """The real mounts of this host (reads the mount table; blocking but quick)."""
    return real_mounts(psutil.disk_partitions(all=False), excluded_types, excluded_mounts)
