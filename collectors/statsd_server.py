"""The StatsD UDP listener and the ``statsd`` source that publishes its aggregates.

Datagrams are parsed and aggregated as they arrive (no queue that a flood could grow); the
source flushes the aggregator once per interval. The address is ``host:port``; IPv6 as
``[::1]:8125``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from collectors.statsd import StatsdAggregator
from hub.errors import ConfigError

log = logging.getLogger(__name__)

# Ask for a large receive buffer so bursts are absorbed by the kernel, not dropped; Linux
# caps it at net.core.rmem_max.
RECEIVE_BUFFER = 4 * 1024 * 1024


def parse_address(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all IPv4 interfaces) -> (host, port)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError("write an IPv6 address as [addr]:port")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError("expected host:port, e.g. 127.0.0.1:8125")
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} must be 0-65535 (0: any free port)")
    return host or "0.0.0.0", int(port_text)


class StatsdProtocol(asyncio.DatagramProtocol):
    def __init__(self, aggregator: StatsdAggregator) -> None:
        self.aggregator = aggregator

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.aggregator.ingest(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("statsd socket error: %s", exc)


class StatsdListener:
    """Owns the UDP socket; ``collect`` returns the aggregates of the interval just ended."""

    name = "statsd"

    def __init__(self, aggregator: StatsdAggregator, address: str) -> None:
        self.aggregator = aggregator
        self.address = address
        self.transport: asyncio.DatagramTransport | None = None

    @property
    def bound(self) -> tuple[str, int] | None:
        """The address actually bound (port 0 resolves to a real port)."""
        if self.transport is None:
            return None
        sockname = self.transport.get_extra_info("sockname")
        return (sockname[0], sockname[1]) if sockname else None

    async def open(self) -> None:
        """Bind the socket; ConfigError (one line) if the address cannot be used."""
        if self.transport is not None:
            return
        host, port = parse_address(self.address)
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: StatsdProtocol(self.aggregator), local_addr=(host, port), family=family,
            )
        except OSError as exc:
            raise ConfigError(f"--statsd-address {self.address}: cannot listen "
                              f"({exc.strerror or exc})") from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            except OSError:
                pass
        self.transport = transport
        log.info("statsd listening on udp %s:%d", *(self.bound or (host, port)))

    def collect(self) -> dict[str, float | int]:
        return self.aggregator.flush()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
