"""Every setting of the collector, declared once: flags, METRICS_HUB_* variables and TOML keys
all derive from this dataclass (hub/config.py); docs/collector.md lists them."""

from __future__ import annotations

import math
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from collectors.filesystems import DEFAULT_EXCLUDED_MOUNTS, DEFAULT_EXCLUDED_TYPES
from collectors.statsd_server import parse_address
from collectors.system import DEFAULT_DISK_EXCLUDE, DEFAULT_NET_EXCLUDE
from hub.config import (
    ConfigSpec,
    each,
    in_range,
    non_negative,
    positive,
    setting,
    valid_key_prefix,
    valid_redis_url,
    valid_regex,
)
from hub.errors import ValidationError
from hub.keys import MAX_SHARDS
from hub.names import KIND_RE, NODE_RE, validate_node
from hub.redis_url import redact

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SECTION = "collector"


def default_node() -> str:
    """The host name, made a valid node name (first label only if the full one is not)."""
    name = socket.gethostname() or "localhost"
    if NODE_RE.fullmatch(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name.split(".")[0])[:128]
    return cleaned or "localhost"


def _node(value: str) -> None:
    try:
        validate_node(value)
    except ValidationError as exc:
        raise ValueError(str(exc)) from None


def _kind(value: str) -> None:
    if KIND_RE.fullmatch(value) is None:
        raise ValueError("use 1-64 of [a-z0-9_.-]")


def _address(value: str) -> None:
    parse_address(value)


def _absolute(value: Path | None) -> None:
    if value is not None and not value.is_absolute():
        raise ValueError("use an absolute path")


def _percentile(value: float) -> None:
    if not 0 < value <= 100:
        raise ValueError("percentiles must be in (0, 100]")


@dataclass(frozen=True)
class CollectorSettings:
    """The collector's configuration; field order is the order of --help and the docs."""

    # -- where and what --------------------------------------------------------------------
    redis_url: str = setting(
        DEFAULT_REDIS_URL, help="Redis to publish to: redis://, rediss://, unix://, "
        "redis+sentinel://, redis+cluster:// (docs/redis-layout.md)",
        validator=valid_redis_url, redact=redact, metavar="URL")
    node: str = setting(
        help="this node's name in every topic", factory=default_node,
        default_doc="the host name", validator=_node, metavar="NAME")
    interval: float = setting(
        1.0, help="seconds between two samples of the system kind (and the default for "
        "every other source)", validator=in_range(0.05, 3600), metavar="SECONDS")
    slow_interval: float = setting(
        10.0, help="seconds between two readings of filesystems, temperatures and process "
        "count", validator=in_range(0.05, 86400), metavar="SECONDS")
    start_jitter: float = setting(
        0.0, help="delay the first tick by a random 0..N seconds, so a fleet started at "
        "once does not write in lockstep", validator=in_range(0, 3600), metavar="SECONDS")
    key_prefix: str = setting(
        "mh", help="prefix of every Redis key (the same in every process of a hub)",
        validator=valid_key_prefix, metavar="PREFIX")
    shards: int = setting(
        16, help="number of shard streams (the same in every process of a hub)",
        validator=in_range(1, MAX_SHARDS), metavar="N")
    retention: float = setting(
        3600.0, help="seconds of history the shard streams keep", validator=positive,
        metavar="SECONDS")
    latest_ttl: float | None = setting(
        None, help="seconds a topic stays in the latest-sample cache after its last sample "
        "(empty: three times the longest source interval, at least 5)",
        validator=positive, metavar="SECONDS")
    # -- outage buffer ---------------------------------------------------------------------
    buffer_seconds: float = setting(
        600.0, help="how much sampling the outage buffer holds while Redis is away",
        validator=positive, metavar="SECONDS")
    buffer_max_samples: int = setting(
        0, help="cap the outage buffer at N samples instead (0: from --buffer-seconds)",
        validator=in_range(0, 10_000_000), metavar="N")
    spill_file: Path | None = setting(
        None, help="keep unpublished samples in this file too, so a restart during an "
        "outage loses none (empty: memory only)", metavar="PATH", reloadable=False)
    publish_timeout: float = setting(
        5.0, help="seconds one publish round trip may take before Redis counts as away",
        validator=positive, metavar="SECONDS")
    reconnect_min_delay: float = setting(
        0.2, help="first retry delay after a failed publish (doubles up to the max, with "
        "jitter)", validator=positive, metavar="SECONDS")
    reconnect_max_delay: float = setting(
        30.0, help="longest retry delay while Redis is away", validator=positive,
        metavar="SECONDS")
    shutdown_timeout: float = setting(
        5.0, help="on SIGTERM/SIGINT, seconds to flush the buffer before exiting",
        validator=non_negative, metavar="SECONDS")
    # -- system metrics --------------------------------------------------------------------
    system: bool = setting(True, help="collect the system kind (host metrics)")
    per_cpu: bool = setting(True, help="include per-CPU utilisation in the system kind")
    temperatures: bool = setting(True, help="include hardware temperatures where available")
    net_exclude: str = setting(
        DEFAULT_NET_EXCLUDE, help="regular expression of network interfaces to leave out",
        validator=valid_regex, metavar="REGEX")
    disk_exclude: str = setting(
        DEFAULT_DISK_EXCLUDE, help="regular expression of disks to leave out (partitions "
        "are always left out on Linux)", validator=valid_regex, metavar="REGEX")
    fs_exclude_types: tuple[str, ...] = setting(
        DEFAULT_EXCLUDED_TYPES, help="filesystem types to leave out (network and pseudo "
        "filesystems by default)", metavar="TYPE")
    fs_exclude_mounts: str = setting(
        DEFAULT_EXCLUDED_MOUNTS, help="regular expression of mount points to leave out",
        validator=valid_regex, metavar="REGEX")
    host_root: Path | None = setting(
        None, help="the node's / as mounted in this container (e.g. /host/root): filesystems "
        "come from the node's mount table (/proc/1/mounts, needs hostPID), are measured "
        "under it and named by the node's mount points (empty: this is the node)",
        validator=_absolute, metavar="PATH")
    fs_timeout: float = setting(
        2.0, help="seconds a filesystem check (statvfs) may take before it is skipped",
        validator=positive, metavar="SECONDS")
    top_processes: int = setting(
        0, help="publish the N processes using the most CPU and memory as kind "
        "'processes' (0: off)", validator=in_range(0, 100), metavar="N")
    top_interval: float = setting(
        10.0, help="seconds between two process scans", validator=in_range(1, 3600),
        metavar="SECONDS")
    # -- custom sources --------------------------------------------------------------------
    source: tuple[str, ...] = setting(
        (), help="a custom source: [kind=]package.module:function_or_class",
        metavar="TARGET")
    plugins: bool = setting(
        True, help="load the sources installed under the metrics_hub.sources entry point")
    source_interval: float | None = setting(
        None, help="default interval of custom sources (empty: --interval)",
        validator=in_range(0.05, 86400), metavar="SECONDS")
    source_timeout: float | None = setting(
        None, help="default time a custom source call may take (empty: its interval)",
        validator=positive, metavar="SECONDS")
    # -- StatsD ------------------------------------------------------------------------------
    statsd: bool = setting(False, help="listen for StatsD metrics over UDP")
    statsd_address: str = setting(
        "127.0.0.1:8125", help="UDP address of the StatsD listener (host:port, [v6]:port)",
        validator=_address, metavar="ADDRESS")
    statsd_kind: str = setting(
        "statsd", help="kind the StatsD aggregates are published as", validator=_kind,
        metavar="KIND")
    statsd_percentiles: tuple[float, ...] = setting(
        (50.0, 90.0, 95.0, 99.0), help="percentiles published for timers and histograms",
        validator=each(_percentile), metavar="P")
    statsd_max_series: int = setting(
        500, help="most StatsD series held at once; lines of new series beyond it are "
        "dropped and counted", validator=in_range(1, 100_000), metavar="N")
    statsd_expire: float = setting(
        300.0, help="seconds after which a StatsD series that got no line is forgotten",
        validator=positive, metavar="SECONDS")
    # -- Prometheus scrape -------------------------------------------------------------------
    scrape: tuple[str, ...] = setting(
        (), help="scrape a Prometheus text endpoint: [kind=]http://host:port/metrics",
        metavar="TARGET")
    scrape_interval: float | None = setting(
        None, help="seconds between two scrapes (empty: --interval)",
        validator=in_range(0.05, 86400), metavar="SECONDS")
    scrape_timeout: float = setting(
        5.0, help="seconds a scrape may take", validator=positive, metavar="SECONDS")
    scrape_max_bytes: int = setting(
        10 * 1024 * 1024, help="largest scrape response accepted, in bytes",
        validator=in_range(1024, 1 << 30), metavar="BYTES")
    # -- logging -----------------------------------------------------------------------------
    log_level: str = setting(
        "info", help="log level", choices=("debug", "info", "warning", "error"),
        metavar="LEVEL")


def _checks(settings: CollectorSettings) -> None:
    if settings.slow_interval < settings.interval:
        raise ValueError(f"--slow-interval {settings.slow_interval:g} is shorter than "
                         f"--interval {settings.interval:g}: make it at least as long")
    if settings.reconnect_max_delay < settings.reconnect_min_delay:
        raise ValueError("--reconnect-max-delay must be at least --reconnect-min-delay")
    if settings.statsd and settings.statsd_kind == "system":
        raise ValueError("--statsd-kind cannot be 'system'")


def buffer_capacity(settings: CollectorSettings, sources_per_second: float) -> int:
    """Samples the outage buffer holds: explicit, or ``buffer_seconds`` of sampling."""
    if settings.buffer_max_samples:
        return settings.buffer_max_samples
    return max(16, math.ceil(settings.buffer_seconds * sources_per_second))


SPEC: ConfigSpec[CollectorSettings] = ConfigSpec(
    CollectorSettings,
    prog="metrics-hub collector",
    description="Sample this node's metrics and publish them to the hub's Redis.",
    section=SECTION,
    checks=(_checks,),
)


if __name__ == "__main__":  # prints the options table of docs/collector.md
    print(SPEC.markdown_table())
