"""The load generator's WebSocket client: one ``asyncio.Protocol`` per connection with a
hand-rolled RFC 6455 receive path, and the counters every client of a process shares.

The hot path reads an update frame's header fields by position (``node``, ``kind``, ``ts``,
``seq``, ``epoch`` come before ``values`` in the gateway's frames) instead of parsing the whole
JSON, and counts it with no task, queue or allocation beyond a tuple; anything else (batches,
other field orders, control messages) takes the full orjson path. Used by bench/loadgen.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

SUBSCRIBE_ID = 1
HIST_PER_S = 10_000           # latency histogram buckets per second (0.1 ms each)
HIST_CAP = 10 * HIST_PER_S    # last bucket: 10 s and beyond
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
UPDATE_HEAD = b'{"type":"update"'
_time = time.time


class ClientOwner(Protocol):
    """What a client tells the process that owns it (the loadgen's Worker)."""

    def transport_opened(self) -> None: ...

    def transport_closed(self) -> None: ...

    def reconnect(self, client: Client) -> None: ...


class HandshakeFailed(Exception):
    """The server did not answer the WebSocket upgrade with 101 and a valid accept key."""


class ConnectionLost(Exception):
    """The connection closed before the client was subscribed (or welcomed, when idle)."""


# -- one worker's counters ------------------------------------------------------------------
class Meter:
    """Counters shared by every client of a worker; only the window's events are counted."""

    __slots__ = ("t0", "t1", "delivered", "hist", "bytes", "gaps", "dups", "snapshots",
                 "resets", "errors", "pings", "drops", "closes", "close_times", "resumed",
                 "resume_ms", "resume_times", "other", "gaps_total", "dups_total", "error_samples")

    def __init__(self) -> None:
        self.t0 = math.inf
        self.t1 = math.inf
        self.hist = [0] * (HIST_CAP + 1)
        self.gaps_total = 0
        self.dups_total = 0
        self.error_samples: list[str] = []
        self.arm(math.inf, math.inf)

    def arm(self, t0: float, t1: float) -> None:
        """Start a new window [t0, t1) (wall clock) with every window counter at zero."""
        self.t0, self.t1 = t0, t1
        hist = self.hist
        for index, count in enumerate(hist):
            if count:
                hist[index] = 0
        self.delivered = self.bytes = self.gaps = self.dups = self.snapshots = 0
        self.resets = self.errors = self.pings = self.drops = self.resumed = self.other = 0
        self.closes: Counter[int] = Counter()
        self.close_times: list[float] = []
        self.resume_ms: list[float] = []
        self.resume_times: list[float] = []

    def counting(self, now: float) -> bool:
        return self.t0 <= now < self.t1

    def report(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered, "bytes": self.bytes, "gaps": self.gaps,
            "dups": self.dups, "snapshots": self.snapshots, "resets": self.resets,
            "errors": self.errors, "pings": self.pings, "drops": self.drops,
            "resumed": self.resumed, "other": self.other,
            "closes": {str(code): n for code, n in self.closes.items()},
            "close_times": self.close_times, "resume_ms": self.resume_ms,
            "resume_times": self.resume_times,
            "hist": {str(i): n for i, n in enumerate(self.hist) if n},
            "gaps_total": self.gaps_total, "dups_total": self.dups_total,
            "error_samples": self.error_samples[:5],
        }


@dataclass(frozen=True, slots=True)
class Target:
    """Where a client connects: host, port and the request path (with query)."""

    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname:
            raise ValueError(f"{url!r}: only ws://host:port/path URLs are supported")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, parts.port or 80, path)


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What every client of a worker does once connected."""

    patterns: tuple[str, ...] = ("*",)
    throttle_ms: int | None = None
    idle: bool = False
    snapshot: bool = False
    subprotocol: str = "mh.v1.json"
    track_cursor: bool = False


def _mask(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 masking of a client frame's payload (client sends are few and small)."""
    if not payload:
        return b""
    size = len(payload)
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, unfragmented client frame."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    key = os.urandom(4)
    return header + key + _mask(payload, key)


# -- one client -----------------------------------------------------------------------------
class Client(asyncio.Protocol):
    """One logical client: a WebSocket connection, reopened on a failover URL in a storm.

    Its per-topic (epoch, seq) and last cursor survive reconnects, so a resume's gaps and
    duplicates are counted as on one connection.
    """

    def __init__(self, index: int, targets: Sequence[Target], options: ClientOptions,
                 meter: Meter, owner: ClientOwner) -> None:
        self.index = index
        self.owner = owner
        self.targets = targets
        self.target_index = 0
        self.options = options
        self.meter = meter
        self.seqs: dict[bytes, tuple[int, int]] = {}
        self.cursor: str | None = None
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.handshaking = True
        self.fragments: list[bytes] | None = None
        self.key = ""
        self.ready: asyncio.Future[None] | None = None
        self.is_ready = False
        self.closing = False       # we closed it: not a drop
        self.disconnected_at: float | None = None
        self.heartbeat_s: float | None = None
        self.close_code: int | None = None

    @property
    def target(self) -> Target:
        return self.targets[self.target_index]

    @property
    def is_open(self) -> bool:
        return self.transport is not None and self.is_ready

    def prepare(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Reset the per-connection state before a (re)connect; returns the ready future."""
        self.buf = b""
        self.handshaking = True
        self.fragments = None
        self.is_ready = False
        self.closing = False
        self.close_code = None
        self.ready = loop.create_future()
        return self.ready

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner.transport_opened()
        self.key = base64.b64encode(os.urandom(16)).decode()
        target = self.target
        transport.write(
            f"GET {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {self.options.subprotocol}"
            "\r\n\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.owner.transport_closed()
        now = _time()
        if self.ready is not None and not self.ready.done():
            why = f"closed with {self.close_code}" if self.close_code else str(exc or "closed")
            self.ready.set_exception(ConnectionLost(why))
        if not self.is_ready or self.closing:
            self.is_ready = False
            return
        self.is_ready = False
        meter = self.meter
        if self.disconnected_at is None:  # no close frame came first: an abnormal close
            self.disconnected_at = now
            if meter.counting(now):
                meter.closes[1006] += 1
                meter.close_times.append(now)
        if meter.counting(now):
            meter.drops += 1
        if self.target_index + 1 < len(self.targets):
            self.target_index += 1
            self.owner.reconnect(self)

    def data_received(self, data: bytes) -> None:
        now = _time()
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.handshaking:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            self._handshake(data[:end])
            if self.handshaking:
                return  # refused: the transport is aborted
            data = data[end + 4:]
        meter = self.meter
        counting = meter.t0 <= now < meter.t1
        if counting:
            meter.bytes += len(data)
        pos, size = 0, len(data)
        while size - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1]
            if length < 126:
                start = pos + 2
            elif length == 126:
                if size - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                start = pos + 10
            else:
                self._fail("the server sent a masked frame")
                return
            end = start + length
            if end > size:
                break
            pos = end
            if (b0 == 0x81 or b0 == 0x82) and self.fragments is None:
                if data.startswith(UPDATE_HEAD, start):
                    self._update_fast(data, start, end, now, counting)
                else:
                    self._message(data[start:end], now)
            else:
                self._frame(b0, data[start:end], now)
                if self.transport is None:
                    return
        if pos < size:
            self.buf = data[pos:]

    # -- receive path -------------------------------------------------------------------
    def _handshake(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(self.key.encode() + WS_GUID).digest()).decode()
        if len(status) < 2 or status[1] != "101":
            self._fail(f"HTTP {' '.join(status[1:])}")
            return
        if headers.get("sec-websocket-accept") != accept:
            self._fail("bad Sec-WebSocket-Accept")
            return
        self.handshaking = False
        if self.options.idle:
            return  # ready on welcome
        request: dict[str, Any] = {"op": "subscribe", "id": SUBSCRIBE_ID,
                                   "topics": list(self.options.patterns),
                                   "snapshot": self.options.snapshot}
        if self.options.throttle_ms is not None:
            request["throttle_ms"] = self.options.throttle_ms
        if self.cursor is not None and self.disconnected_at is not None:
            request["resume"] = self.cursor
        self.send(0x1, orjson.dumps(request))

    def _update_fast(self, data: bytes, start: int, end: int, now: float,
                     counting: bool) -> None:
        """An update frame read by position: the header fields come before ``values``."""
        i = data.find(b'"node":"', start, end)
        j = data.find(b'"kind":"', i, end)
        k = data.find(b'"', j + 8, end)
        t = data.find(b'"ts":', k, end)
        s = data.find(b'"seq":', t, end)
        e = data.find(b'"epoch":', s, end)
        v = data.find(b'"values":', e, end)
        if min(i, j, k, t, s, e, v) < 0:
            self._message(data[start:end], now)  # another field order: parse it fully
            return
        try:
            ts = float(data[t + 5:data.find(b",", t, s)])
            seq = int(data[s + 6:data.find(b",", s, e)])
            epoch = int(data[e + 8:data.find(b",", e, v)])
        except ValueError:
            self._message(data[start:end], now)
            return
        if self.options.track_cursor:
            c = data.find(b'"cursor":"', start, v)
            if c >= 0:
                self.cursor = data[c + 10:data.find(b'"', c + 10, v)].decode()
        self._account(data[i + 8:k], ts, seq, epoch, now, counting)

    def _account(self, topic: bytes, ts: float, seq: int, epoch: int, now: float,
                 counting: bool) -> None:
        meter = self.meter
        last = self.seqs.get(topic)
        if last is None or last[0] != epoch or seq > last[1]:
            self.seqs[topic] = (epoch, seq)
        if last is not None and last[0] == epoch and seq != last[1] + 1:
            if seq > last[1]:
                meter.gaps_total += seq - last[1] - 1
                if counting:
                    meter.gaps += seq - last[1] - 1
            else:
                meter.dups_total += 1
                if counting:
                    meter.dups += 1
        if counting:
            meter.delivered += 1
            bucket = int((now - ts) * HIST_PER_S)
            meter.hist[bucket if 0 <= bucket < HIST_CAP else (0 if bucket < 0 else HIST_CAP)] += 1

    def _message(self, payload: bytes, now: float) -> None:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._note_error(f"undecodable frame {payload[:80]!r}")
            return
        if isinstance(obj, dict) and obj.get("type") == "batch":
            for item in obj.get("items") or ():
                self._handle(item, now)
        else:
            self._handle(obj, now)

    def _handle(self, obj: Any, now: float) -> None:
        if not isinstance(obj, dict):
            self._note_error(f"frame is not an object: {str(obj)[:80]}")
            return
        kind = obj.get("type")
        meter = self.meter
        if kind == "update":
            topic = f'{obj.get("node")}","kind":"{obj.get("kind")}'.encode()
            if self.options.track_cursor and isinstance(obj.get("cursor"), str):
                self.cursor = obj["cursor"]
            try:
                self._account(topic, float(obj["ts"]), int(obj["seq"]), int(obj["epoch"]),
                              now, meter.counting(now))
            except (KeyError, TypeError, ValueError):
                self._note_error(f"malformed update {str(obj)[:80]}")
        elif kind == "ack" and obj.get("id") == SUBSCRIBE_ID:
            self._on_ready(now)
        elif kind == "welcome":
            heartbeat = obj.get("heartbeat_s")
            self.heartbeat_s = float(heartbeat) if isinstance(heartbeat, int | float) else None
            if self.options.idle:
                self._on_ready(now)
        elif kind == "snapshot":
            if meter.counting(now):
                meter.snapshots += 1
        elif kind == "reset":
            if meter.counting(now):
                meter.resets += 1
        elif kind == "error":
            self._note_error(f"error {obj.get('code')}: {obj.get('message')}")
        elif meter.counting(now):
            meter.other += 1

    def _on_ready(self, now: float) -> None:
        if self.is_ready:
            return
        self.is_ready = True
        if self.disconnected_at is not None:
            if self.meter.counting(now):
                self.meter.resumed += 1
                self.meter.resume_ms.append(round((now - self.disconnected_at) * 1000, 2))
                self.meter.resume_times.append(now)
            self.disconnected_at = None
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(None)

    def _frame(self, b0: int, payload: bytes, now: float) -> None:
        """Control frames and fragments (rare: not on the hot path)."""
        opcode = b0 & 0x0F
        fin = bool(b0 & 0x80)
        if opcode in (0x1, 0x2):
            self.fragments = [payload]
        elif opcode == 0x0 and self.fragments is not None:
            self.fragments.append(payload)
        elif opcode == 0x9:
            if self.meter.counting(now):
                self.meter.pings += 1
            self.send(0xA, payload)
            return
        elif opcode == 0x8:
            self._on_close(payload, now)
            return
        else:
            return  # pong or an unknown opcode: nothing to do
        if fin and self.fragments is not None:
            message = b"".join(self.fragments)
            self.fragments = None
            self._message(message, now)

    def _on_close(self, payload: bytes, now: float) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        reason = payload[2:].decode(errors="replace")
        self.close_code = code
        if not self.is_ready:
            self._note_error(f"closed with {code} {reason!r} before it was ready")
        meter = self.meter
        if self.is_ready and not self.closing:
            self.disconnected_at = now
            if meter.counting(now):
                meter.closes[code] += 1
                meter.close_times.append(now)
        if self.transport is not None:
            if not self.closing:
                self.send(0x8, payload[:2])
            self.transport.close()

    def _note_error(self, text: str) -> None:
        meter = self.meter
        meter.errors += 1
        if len(meter.error_samples) < 5:
            meter.error_samples.append(text)

    def _fail(self, why: str) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(HandshakeFailed(why))
        self._note_error(why)
        if self.transport is not None:
            self.transport.abort()

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    def close(self) -> None:
        """Close from our side (code 1000); not counted as a drop."""
        self.closing = True
        if self.transport is not None:
            self.send(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()
