"""Every setting of the gateway, declared once: flags, METRICS_HUB_* variables and TOML keys
all derive from this dataclass (hub/config.py); docs/gateway.md lists them."""

from __future__ import annotations

import dataclasses
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.outbound import OutboundLimits
from gateway.protocol import ProtocolLimits
from gateway.ratelimit import RateLimits
from hub.config import (
    ConfigSpec,
    in_range,
    non_negative,
    positive,
    setting,
    valid_key_prefix,
    valid_redis_url,
)
from hub.errors import ValidationError
from hub.keys import MAX_SHARDS, KeyLayout
from hub.names import NODE_RE, validate_node
from hub.redis_url import redact

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SECTION = "gateway"
STATIC_DIR = Path(__file__).resolve().parent / "static"


def host_name() -> str:
    """The host name as the start of a node name (first label, cleaned, if the full one is
    not a valid node name); ``localhost`` when there is none."""
    name = socket.gethostname() or "localhost"
    if NODE_RE.fullmatch(name) and len(name) <= 100:
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name.split(".")[0])[:100]
    return cleaned or "localhost"


def default_gateway_id(port: int) -> str:
    """Host name plus port, joined by ``-`` (a node name cannot hold ``:``)."""
    return f"{host_name()}-{port}"


def _node(value: str | None) -> None:
    if value is None:
        return
    try:
        validate_node(value)
    except ValidationError as exc:
        raise ValueError(str(exc)) from None


def _static_dir(value: Path | None) -> None:
    if value is not None and not value.is_dir():
        raise ValueError("not a directory")


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway's configuration; field order is the order of --help and the docs."""

    # -- where ---------------------------------------------------------------------------
    redis_url: str = setting(
        DEFAULT_REDIS_URL, help="Redis of the hub: redis://, rediss://, unix://, "
        "redis+sentinel://, redis+cluster:// (docs/redis-layout.md)",
        validator=valid_redis_url, redact=redact, metavar="URL", reloadable=False)
    host: str = setting(
        "0.0.0.0", help="address to listen on (HTTP and WebSocket share the port)",
        metavar="ADDRESS", reloadable=False)
    port: int = setting(
        8080, help="TCP port to listen on (0: any free port)", validator=in_range(0, 65535),
        metavar="PORT", reloadable=False)
    gateway_id: str | None = setting(
        None, help="this gateway's name: in welcome messages and as the node of its own "
        "samples (kind 'gateway'); with --workers N each worker appends -w<i>",
        validator=_node, default_doc="host name, '-', port", metavar="NAME",
        reloadable=False)
    workers: int = setting(
        1, help="processes sharing the port through SO_REUSEPORT (Linux); the parent only "
        "supervises them and forwards signals", validator=in_range(1, 256), metavar="N",
        reloadable=False)
    reuse_port: bool = setting(
        False, help="set SO_REUSEPORT on the listening socket (implied by --workers > 1), so "
        "several gateways started separately share the port", reloadable=False)
    key_prefix: str = setting(
        "mh", help="prefix of every Redis key (the same in every process of a hub)",
        validator=valid_key_prefix, metavar="PREFIX", reloadable=False)
    shards: int = setting(
        16, help="number of shard streams (the same in every process of a hub)",
        validator=in_range(1, MAX_SHARDS), metavar="N", reloadable=False)
    static_dir: Path | None = setting(
        None, help="directory of the dashboard served on / (files only, no listing)",
        validator=_static_dir, default_doc="the bundled gateway/static", metavar="PATH")
    # -- resume ----------------------------------------------------------------------------
    replay_window: int = setting(
        2048, help="stream entries per shard kept in memory to serve resumes without Redis",
        validator=in_range(1, 1_000_000), metavar="N")
    replay_window_seconds: float = setting(
        60.0, help="... and at most this old", validator=positive, metavar="SECONDS")
    replay_limit: int = setting(
        2000, help="most updates one resume replays; beyond it the client gets reset and "
        "snapshots (keep it below --outbound-high-water)", validator=in_range(1, 1_000_000),
        metavar="N")
    resume_wait: float = setting(
        5.0, help="how long a resume whose cursor is ahead of this gateway waits for the "
        "reader to catch up before answering reset", validator=positive, metavar="SECONDS")
    # -- limits ----------------------------------------------------------------------------
    max_connections: int = setting(
        20_000, help="WebSocket connections per process; one more is closed with 1013",
        validator=in_range(1, 10_000_000), metavar="N")
    max_subscriptions: int = setting(
        256, help="topic patterns one connection may hold (too_many_subscriptions beyond)",
        validator=in_range(1, 100_000), metavar="N")
    max_frame_bytes: int = setting(
        64 * 1024, help="largest client frame; a larger one closes the connection with 1009",
        validator=in_range(1024, 64 * 1024 * 1024), metavar="BYTES")
    rate: float = setting(
        20.0, help="client requests per second per connection (rate_limited beyond it)",
        validator=positive, metavar="PER_SECOND")
    rate_burst: int = setting(
        50, help="requests a connection may send at once before the rate applies",
        validator=in_range(1, 1_000_000), metavar="N")
    rate_violations: int = setting(
        20, help="rate_limited answers within 10 s after which the connection is closed "
        "with 4008", validator=in_range(0, 1_000_000), metavar="N")
    slow_consumer_seconds: float = setting(
        10.0, help="a client whose queue or socket stays over its high-water mark this long "
        "is closed with 1013 'slow consumer'", validator=positive, metavar="SECONDS")
    outbound_high_water: int = setting(
        2048, help="frames pending for a client before its updates are conflated (newest "
        "per topic) and the slow-consumer clock runs", validator=in_range(1, 10_000_000),
        metavar="FRAMES")
    outbound_max_pending: int = setting(
        8192, help="hard cap on frames pending for a client; past it: close 1013",
        validator=in_range(1, 10_000_000), metavar="FRAMES")
    write_limit: int = setting(
        64 * 1024, help="bytes buffered in a client's socket before the gateway stops writing "
        "to it and queues (high-water mark of the transport)",
        validator=in_range(1024, 1 << 30), metavar="BYTES")
    max_batch_bytes: int = setting(
        256 * 1024, help="largest batch frame the gateway builds from messages ready at once "
        "(a single larger message is still sent alone)", validator=in_range(1024, 1 << 30),
        metavar="BYTES")
    history_max_points: int = setting(
        10_000, help="cap on max_points of a history request", validator=in_range(1, 1_000_000),
        metavar="N")
    # -- keepalive, cache, drain -------------------------------------------------------------
    ping_interval: float = setting(
        20.0, help="seconds between WebSocket pings to each client (the welcome's "
        "heartbeat_s)", validator=positive, metavar="SECONDS")
    ping_timeout: float = setting(
        20.0, help="seconds a client has to answer a ping before it is dropped",
        validator=positive, metavar="SECONDS")
    close_timeout: float = setting(
        5.0, help="seconds the closing handshake may take before the socket is dropped",
        validator=positive, metavar="SECONDS")
    snapshot_ttl: float = setting(
        5.0, help="a topic without a new sample for max(this, 3 of its intervals) gets no "
        "snapshot (its node is gone)", validator=positive, metavar="SECONDS")
    drain_grace: float = setting(
        5.0, help="on SIGTERM, clients are closed with 1001 spread over this many seconds, so "
        "their reconnects do not arrive all at once", validator=non_negative,
        metavar="SECONDS")
    drain_timeout: float = setting(
        15.0, help="on SIGTERM, the process exits within this many seconds whatever remains",
        validator=positive, metavar="SECONDS")
    metrics_interval: float = setting(
        5.0, help="seconds between two samples of kind 'gateway' this gateway publishes "
        "about itself (0: do not publish)", validator=non_negative, metavar="SECONDS")
    compression: bool = setting(
        False, help="offer permessage-deflate (costs CPU per client: frames are compressed "
        "per connection, not once)", reloadable=False)
    # -- logging ------------------------------------------------------------------------------
    log_level: str = setting(
        "info", help="log level", choices=("debug", "info", "warning", "error"),
        metavar="LEVEL")

    # -- derived -------------------------------------------------------------------------------
    @property
    def node_id(self) -> str:
        """The gateway id: the configured one, or host name plus port."""
        return self.gateway_id or default_gateway_id(self.port)

    @property
    def layout(self) -> KeyLayout:
        return KeyLayout(self.key_prefix, self.shards)

    @property
    def static_root(self) -> Path:
        return self.static_dir if self.static_dir is not None else STATIC_DIR

    def protocol_limits(self) -> ProtocolLimits:
        return ProtocolLimits(
            max_frame_bytes=self.max_frame_bytes, max_subscriptions=self.max_subscriptions,
            max_history_points=self.history_max_points,
            default_history_points=min(1000, self.history_max_points),
        )

    def outbound_limits(self) -> OutboundLimits:
        return OutboundLimits(
            high_water=self.outbound_high_water, max_pending=self.outbound_max_pending,
            max_control=max(self.outbound_max_pending // 2, 1),
            slow_after_s=self.slow_consumer_seconds,
        )

    def rate_limits(self) -> RateLimits:
        return RateLimits(rate_per_s=self.rate, burst=self.rate_burst,
                          max_violations=self.rate_violations)

    def replace(self, **changes: Any) -> GatewaySettings:
        """A copy with ``changes`` (in-process gateways of tests and tools)."""
        return dataclasses.replace(self, **changes)


def _checks(settings: GatewaySettings) -> None:
    if settings.outbound_high_water > settings.outbound_max_pending:
        raise ValueError("--outbound-high-water must not exceed --outbound-max-pending")
    if settings.replay_limit >= settings.outbound_high_water:
        raise ValueError(f"--replay-limit {settings.replay_limit} must be below "
                         f"--outbound-high-water {settings.outbound_high_water}, or a replay "
                         "would be conflated")
    if settings.drain_grace >= settings.drain_timeout:
        raise ValueError(f"--drain-grace {settings.drain_grace:g} must be shorter than "
                         f"--drain-timeout {settings.drain_timeout:g}")
    if settings.workers > 1 and settings.port == 0:
        raise ValueError("--workers > 1 needs a fixed --port (workers share it)")
    if settings.gateway_id is None and settings.port != 0:
        _node(default_gateway_id(settings.port))


SPEC: ConfigSpec[GatewaySettings] = ConfigSpec(
    GatewaySettings,
    prog="metrics-hub gateway",
    description="Serve the hub's live metrics to WebSocket clients (protocol on /ws), the "
                "dashboard on /, and /healthz, /readyz, /metrics.",
    section=SECTION,
    checks=(_checks,),
)


if __name__ == "__main__":  # prints the options table of docs/gateway.md
    print(SPEC.markdown_table())
