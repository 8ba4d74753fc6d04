"""Filesystem usage of the real mounts, each statvfs on its own daemon thread under a timeout.

A hung network mount makes statvfs block forever; here it costs one parked thread and a
counted timeout, never a stalled collector. Network and pseudo filesystems are excluded by
type, container and runtime paths by a mount-point pattern (both configurable). With a host
root (the node's ``/`` mounted in a container), mounts come from the host's mount table, are
measured under the host root and reported under the host's own mount points.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
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
# With hostPID, PID 1 is the node's init: its mount table is the node's, not the container's.
HOST_MOUNTS_FILE = "/proc/1/mounts"
OWN_MOUNTS_FILE = "/proc/self/mounts"
FILESYSTEMS_FILE = "/proc/filesystems"
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount; ``mountpoint`` is the name it is reported under, ``path`` where statvfs
    looks (empty: the mount point itself)."""

    device: str
    mountpoint: str
    fstype: str
    path: str = ""

    @property
    def stat_path(self) -> str:
        return self.path or self.mountpoint


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
            future = call_in_thread(os.statvfs, mount.stat_path, name="mh-statvfs")
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


def list_mounts(
    excluded_types: Iterable[str],
    excluded_mounts: re.Pattern[str],
    *,
    host_root: str = "",
    mounts_file: str = HOST_MOUNTS_FILE,
    own_mounts_file: str = OWN_MOUNTS_FILE,
    filesystems_file: str = FILESYSTEMS_FILE,
) -> list[Mount]:
    """The real mounts of this host (reads the mount table; blocking but quick).

    With ``host_root``, the table is the host's (``mounts_file``); exclusions apply to the
    host's mount points and each mount is measured at ``host_root`` + its mount point.
    """
    if not host_root:
        return real_mounts(psutil.disk_partitions(all=False), excluded_types, excluded_mounts)
    parts = host_partitions(host_root, mounts_file, own_mounts_file, filesystems_file)
    return [replace(mount, path=host_path(host_root, mount.mountpoint))
            for mount in real_mounts(parts, excluded_types, excluded_mounts)]


def host_path(host_root: str, mountpoint: str) -> str:
    """Where the host's ``mountpoint`` is seen under ``host_root`` (``/`` is the root itself)."""
    root = host_root.rstrip("/") or "/"
    if mountpoint == "/":
        return root
    return root.rstrip("/") + mountpoint


def host_partitions(
    host_root: str, mounts_file: str, own_mounts_file: str, filesystems_file: str
) -> list[Mount]:
    """The host's block-device mounts, as psutil's ``disk_partitions(all=False)`` keeps them.

    Without hostPID (or if the host's table cannot be read) the container's own table stands
    in: with mount propagation the host's mounts show there under ``host_root``.
    """
    block_types = _block_fs_types(_read(filesystems_file))
    try:
        mounts = parse_mounts(_read(mounts_file))
    except OSError as exc:
        log.debug("cannot read %s (%s); using %s under %s", mounts_file, exc,
                  own_mounts_file, host_root)
        mounts = _strip_root(parse_mounts(_read(own_mounts_file)), host_root)
    return [m for m in mounts if m.device not in {"", "none"} and m.fstype in block_types]


def parse_mounts(text: str) -> list[Mount]:
    """The entries of a ``/proc/*/mounts`` table (octal escapes such as ``\\040`` decoded)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            device, mountpoint, fstype = (_unescape(f) for f in fields[:3])
            mounts.append(Mount(device, mountpoint, fstype))
    return mounts


def _strip_root(mounts: Iterable[Mount], host_root: str) -> list[Mount]:
    root = host_root.rstrip("/")
    kept = []
    for mount in mounts:
        if mount.mountpoint == root or mount.mountpoint.startswith(root + "/"):
            kept.append(replace(mount, mountpoint=mount.mountpoint[len(root):] or "/"))
    return kept


def _block_fs_types(text: str) -> frozenset[str]:
    # "nodev" types have no block device (zfs is listed so yet is one), as in psutil.
    types = set()
    for line in text.splitlines():
        flag, _, name = line.partition("\t")
        name = name.strip()
        if not flag.strip() or name == "zfs":
            types.add(name)
    return frozenset(types)


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as file:
        return file.read()
