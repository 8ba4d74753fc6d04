"""One client connection's output: the frames it is sent, its queue, its writer, its close.

A ``Session`` wraps a websockets ``ServerConnection``. The fan-out offers it updates and
calls ``flush()``, which writes straight to the socket while the socket keeps up, so no task
wakes per message. When the socket's buffer is over its high-water mark, frames wait in the
connection's OutboundQueue (conflating by topic) and the writer task drains them, or closes
a client that stays behind with 1013. Its requests are answered by gateway/requests.py;
docs/protocol-notes.md explains the rules both follow.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import OPEN

from gateway import ProtocolError
from gateway.fanout import BatchCache, Fanout, TopicKey
from gateway.outbound import OutboundLimits, OutboundQueue
from gateway.protocol import (
    CloseCode,
    Encoding,
    Outgoing,
    ProtocolLimits,
    ResetReason,
    SnapshotMessage,
    Subscribe,
    UpdateMessage,
    encode,
    encode_batch,
    error_from,
    render_frame,
    reset_message,
    subscribe_ack,
    welcome_message,
)
from gateway.ratelimit import RateLimits, RequestLimiter
from gateway.selfmetrics import GatewayStats
from gateway.topics import PatternSet, TopicPattern
from hub.errors import HubError
from hub.keys import KeyLayout
from hub.redis_url import RedisClient

log = logging.getLogger(__name__)

Spawner = Callable[[Coroutine[Any, Any, None]], object]
"""Starts a coroutine as a task of the connection (owned by the gateway's TaskManager)."""

FLUSH_CHUNK = 64  # frames taken from the queue per write: bounds the overshoot of a socket buffer


@dataclass(frozen=True)
class SessionContext:
    """What every connection of one gateway shares."""

    gateway_id: str
    fanout: Fanout
    stats: GatewayStats
    redis: RedisClient
    layout: KeyLayout
    protocol_limits: ProtocolLimits
    outbound_limits: OutboundLimits
    rate_limits: RateLimits
    replay_limit: int = 2000
    resume_wait: float = 5.0
    heartbeat_s: int = 20
    max_batch_bytes: int = 256 * 1024
    close_timeout: float = 5.0
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time


class Session:
    """The output side of one connection; see the module docstring.

    Lifecycle: ``start()`` writes the welcome; ``gateway.requests.read_loop(session)`` runs
    as the connection's reader task; ``write_loop()`` runs as its writer task, started through
    ``spawn`` the first time the connection needs one (its socket backs up, a throttle holds
    an update, a close is asked for); ``release()`` (idempotent) removes its subscriptions
    and drops its queue, whatever ended the connection.
    """

    __slots__ = (
        "ws", "ctx", "encoding", "conn_id", "limiter", "token_source", "_queue", "_pending",
        "_dirty", "_spawn", "_writer", "_waiter", "_woken", "_writer_deadline", "_close",
        "_released", "_send", "_throttled", "_blocked", "_direct", "_stats",
    )

    def __init__(
        self, ws: ServerConnection, ctx: SessionContext, encoding: Encoding, conn_id: str,
        *, spawn: Spawner, token_source: str | None = None,
    ) -> None:
        self.ws = ws
        self.ctx = ctx
        self.encoding = encoding
        self.conn_id = conn_id
        self.limiter = RequestLimiter(ctx.rate_limits, clock=ctx.clock)
        self.token_source = token_source  # where a token came from; the token is not kept
        # Made on first need: most connections never queue anything (memory per connection
        # counts with 10,000 clients).
        self._queue: OutboundQueue[TopicKey, Outgoing] | None = None
        self._pending: list[UpdateMessage] = []  # offered during a dispatch, not yet written
        self._dirty = False
        self._spawn = spawn  # starts the writer task (owned by the TaskManager)
        self._writer: object | None = None
        self._waiter: asyncio.Future[None] | None = None  # the sleeping writer's
        self._woken = False
        self._writer_deadline = math.inf  # when the writer wakes by itself (0: it is awake)
        self._close: tuple[int, str] | None = None
        self._released = False
        protocol = ws.protocol
        self._send = protocol.send_text if encoding.is_text else protocol.send_binary
        self._throttled = False
        self._blocked = False
        # True while nothing waits in the queue (pending or held) and the socket keeps up:
        # an unthrottled update may then be written at once, ahead of nothing.
        self._direct = False
        self._stats = ctx.stats

    def __repr__(self) -> str:
        return f"Session({self.conn_id}, {self.encoding.value})"

    @property
    def queue(self) -> OutboundQueue[TopicKey, Outgoing]:
        """The connection's outbound queue (made on first use)."""
        queue = self._queue
        if queue is None:
            queue = self._queue = OutboundQueue(self.ctx.outbound_limits, clock=self.ctx.clock)
        return queue

    @property
    def pending_frames(self) -> int:
        return 0 if self._queue is None else len(self._queue)

    @property
    def conflated(self) -> int:
        return 0 if self._queue is None else self._queue.conflated

    # -- the fan-out's side (synchronous, hot) ---------------------------------------------
    def deliver(self, key: TopicKey, message: UpdateMessage, throttle_ms: int) -> None:
        """Send one update now if nothing is waiting before it (a dispatch of one entry)."""
        if throttle_ms == 0 and self._direct:
            ws = self.ws
            if not ws.paused and ws.protocol.state is OPEN:
                frame = message.frame(self.encoding)
                self._send(frame)
                try:
                    ws.send_data()
                except Exception as exc:  # the socket is gone; the reader sees the close
                    self._write_failed(exc)
                stats = self._stats
                stats.frames_out += 1
                stats.messages_out += 1
                stats.bytes_out += len(frame)
                return
        if self.offer(key, message, throttle_ms):
            self.flush()

    def offer(self, key: TopicKey, message: UpdateMessage, throttle_ms: int) -> bool:
        """Take an update of a subscribed topic; True the first time since the last flush."""
        if throttle_ms == 0 and self._direct:
            # Nothing older is waiting: it can go straight to the socket at flush time.
            self._pending.append(message)
        else:
            self._direct = False
            if not self.queue.push_update(key, message, throttle_ms / 1000):
                self._slow()
        if self._dirty:
            return False
        self._dirty = True
        return True

    def flush(self, batches: BatchCache | None = None) -> None:
        """Write what is ready while the socket keeps up; queue the rest for the writer.

        Never blocks. ``batches`` shares the batch frames built in one dispatch between
        connections that were offered the very same messages.
        """
        self._dirty = False
        pending = self._pending
        ws = self.ws
        if self._close is not None or self._released or ws.protocol.state is not OPEN:
            pending.clear()
            self._direct = False
            return
        if ws.paused:
            self._park(pending)
            return
        queue = self._queue
        if self._blocked:
            self._blocked = False
            if queue is not None:
                queue.note_transport(False)
        encoding = self.encoding
        if pending:
            if len(pending) == 1:
                self._write_encoded([pending[0].frame(encoding)], 1)
            else:
                if batches is None:
                    frames = self._batch_frames([m.frame(encoding) for m in pending])
                else:
                    key = (encoding, tuple(pending))
                    cached = batches.get(key)
                    if cached is None:
                        cached = batches[key] = self._batch_frames(
                            [m.frame(encoding) for m in pending])
                    frames = cached
                self._write_encoded(frames, len(pending))
            pending.clear()
        if queue is None:
            self._direct = not ws.paused
            if ws.paused:
                self._blocked = True
                self._wake()
            return
        if len(queue) or self._throttled:
            # take() also releases the throttled updates whose window has ended.
            while not ws.paused:
                ready = queue.take(FLUSH_CHUNK)
                if not ready:
                    break
                frames = [render_frame(r.item, encoding, r.cursor_from) for r in ready]
                count = len(frames)
                self._write_encoded(self._batch_frames(frames) if count > 1 else frames, count)
        if ws.paused:
            self._blocked = True
            self._direct = False
            queue.note_transport(True)
            self._wake()
            return
        self._direct = not len(queue) and not queue.held
        if self._throttled:
            deadline = queue.next_deadline()
            if deadline is not None and deadline < self._writer_deadline:
                self._wake()

    def _park(self, pending: list[UpdateMessage]) -> None:
        """The socket is full: what was offered goes to the queue, the writer takes over."""
        queue = self.queue
        self._direct = False
        for message in pending:
            if not queue.push_update((message.sample.node, message.sample.kind), message):
                self._slow()
                break
        pending.clear()
        if not self._blocked:
            self._blocked = True
            queue.note_transport(True)
        self._wake()

    def _batch_frames(self, frames: Sequence[bytes]) -> list[bytes]:
        """Pack frames into as few ``batch`` frames as ``max_batch_bytes`` allows."""
        limit = self.ctx.max_batch_bytes
        total = sum(len(frame) for frame in frames) + len(frames)
        if total <= limit:
            return [encode_batch(frames, self.encoding)]
        out: list[bytes] = []
        chunk: list[bytes] = []
        size = 0
        for frame in frames:
            if chunk and size + len(frame) > limit:
                out.append(encode_batch(chunk, self.encoding) if len(chunk) > 1 else chunk[0])
                chunk, size = [], 0
            chunk.append(frame)
            size += len(frame) + 1
        if chunk:
            out.append(encode_batch(chunk, self.encoding) if len(chunk) > 1 else chunk[0])
        return out

    def _write_encoded(self, frames: Sequence[bytes], messages: int) -> None:
        send = self._send
        size = 0
        for frame in frames:
            send(frame)
            size += len(frame)
        try:
            self.ws.send_data()
        except Exception as exc:  # the socket is gone; the reader sees the close
            self._write_failed(exc)
        stats = self._stats
        stats.frames_out += len(frames)
        stats.messages_out += messages
        stats.bytes_out += size

    def _write_failed(self, exc: Exception) -> None:
        self._stats.write_errors += 1
        log.debug("%s: write failed: %r", self.conn_id, exc)

    # -- control frames ---------------------------------------------------------------------
    def start(self) -> None:
        """Write the welcome: the first frame, alone (never in a batch)."""
        ctx = self.ctx
        frame = encode(welcome_message(ctx.gateway_id, ctx.wall_clock(), ctx.heartbeat_s),
                       self.encoding)
        if self.ws.protocol.state is OPEN:
            self._write_encoded([frame], 1)
            self._direct = not self.ws.paused

    def send_control(self, message: dict[str, Any]) -> None:
        """Send a control message: at once if nothing waits before it, else through the queue."""
        self.send_frames([encode(message, self.encoding)])

    def send_frames(self, frames: list[bytes | SnapshotMessage]) -> None:
        """Send control frames (or snapshots) in order, batched when there are several."""
        ws = self.ws
        if self._direct and not ws.paused and ws.protocol.state is OPEN:
            encoded = [f if isinstance(f, bytes) else f.frame(self.encoding) for f in frames]
            count = len(encoded)
            self._write_encoded(self._batch_frames(encoded) if count > 1 else encoded, count)
            return
        if self._close is not None or self._released:
            return
        self._direct = False
        queue = self.queue
        for frame in frames:
            if not queue.push_control(frame):
                self._slow()
                return
        self.flush()

    def send_error(self, exc: ProtocolError) -> None:
        self.ctx.stats.count_error(exc.code.value)
        self.send_control(error_from(exc))

    # -- closing ----------------------------------------------------------------------------
    def close_soon(self, code: int, reason: str) -> None:
        """Ask the writer to close the connection with ``code`` (the first request wins)."""
        if self.stop_sending(code, reason):
            self._wake()

    def stop_sending(self, code: int, reason: str) -> bool:
        """Write nothing more; True if this is the first close asked for."""
        if self._close is not None:
            return False
        self._close = (code, reason)
        self._direct = False
        self._pending.clear()
        return True

    def _slow(self) -> None:
        if self._close is None:
            self.ctx.stats.slow_consumer_closes += 1
            log.info("%s: slow consumer, closing with 1013", self.conn_id)
        self.close_soon(CloseCode.TRY_AGAIN_LATER, "slow consumer")

    def release(self) -> None:
        """Drop the subscriptions and everything queued (at disconnect). Idempotent."""
        if self._released:
            return
        self._released = True
        self._direct = False
        self.ctx.fanout.index.remove_subscriber(self)
        if self._queue is not None:
            self.ctx.stats.conflated_closed += self._queue.conflated
            self._queue.clear()
        self._pending.clear()
        self._wake()

    @property
    def released(self) -> bool:
        return self._released

    async def close_now(self, code: int, reason: str) -> None:
        """Close with ``code``; a peer that does not complete the handshake in time (it does
        not read) has its socket dropped. Cancelling is safe: the socket is closing anyway."""
        try:
            async with asyncio.timeout(self.ctx.close_timeout):
                await self.ws.close(code, reason)
        except TimeoutError:
            self.ws.transport.abort()

    # -- the writer task --------------------------------------------------------------------
    def _wake(self) -> None:
        """Wake the writer, starting it if the connection has none yet."""
        self._woken = True
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
        elif self._writer is None and not self._released:
            try:
                self._writer = self._spawn(self.write_loop())
            except HubError as exc:  # the gateway is closing: its own shutdown closes us
                log.debug("%s: no writer: %s", self.conn_id, exc)

    async def _sleep(self, deadline: float | None) -> None:
        """Wait for ``_wake()`` or until ``deadline`` (this session's clock)."""
        if self._woken:
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            if deadline is None:
                await waiter
            else:
                delay = deadline - self.ctx.clock()
                if delay > 0:
                    async with asyncio.timeout(delay):
                        await waiter
        except TimeoutError:
            pass
        finally:
            self._waiter = None

    async def write_loop(self) -> None:
        """Drain the queue when the socket is slow, send what throttles release, enforce the
        slow-consumer limit, and perform closes requested by ``close_soon``. Cancelling is
        safe (the connection is being released)."""
        queue = self.queue
        ws = self.ws
        try:
            while self._close is None and not self._released:
                deadline = queue.next_deadline()
                self._writer_deadline = math.inf if deadline is None else deadline
                await self._sleep(deadline)
                self._writer_deadline = 0.0
                self._woken = False
                if self._close is not None or self._released:
                    break
                if ws.protocol.state is not OPEN:
                    return
                if ws.paused:
                    self._blocked = True
                    queue.note_transport(True)
                    await self._await_drain()
                    if ws.paused:
                        if queue.is_slow():
                            self._slow()
                        continue
                self.flush()
                if queue.is_slow():
                    self._slow()
            if self._close is not None and ws.protocol.state is OPEN:
                await self.close_now(*self._close)
        finally:
            self._writer_deadline = math.inf

    async def _await_drain(self) -> None:
        deadline = self.queue.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - self.ctx.clock())
        try:
            async with asyncio.timeout(timeout):
                await self.ws.drain()
        except TimeoutError:
            pass
        except Exception as exc:  # the connection was lost while waiting
            log.debug("%s: lost while draining: %r", self.conn_id, exc)

    # -- subscriptions ------------------------------------------------------------------------
    def activate(
        self, request: Subscribe, *, snapshots: bool, reset: ResetReason | None = None,
        items: Sequence[UpdateMessage] = (),
    ) -> None:
        """Ack, reset, replay, register and snapshot in one synchronous step: no stream entry
        can fall between what is sent here and the live updates that follow."""
        if self._released or self._close is not None:
            return
        fanout = self.ctx.fanout
        encoding = self.encoding
        frames: list[bytes | SnapshotMessage] = [
            encode(subscribe_ack(request.id, request.topics, request.throttle_ms), encoding)]
        if reset is not None:
            self.ctx.stats.count_reset(reset.value)
            frames.append(encode(reset_message(reset), encoding))
        if items:
            # A replay goes through the queue: the throttle applies to it as to live updates.
            self._direct = False
            queue = self.queue
            for frame in frames:
                if not queue.push_control(frame):
                    self._slow()
                    return
            frames = []
            throttle_s = request.throttle_ms / 1000
            for item in items:
                sample = item.sample
                if not queue.push_update((sample.node, sample.kind), item, throttle_s):
                    self._slow()
                    return
        for pattern in request.patterns:
            fanout.index.add(self, pattern, request.throttle_ms)
        if request.throttle_ms:
            self._throttled = True
        if snapshots:
            found = fanout.cache.snapshots(PatternSet(request.patterns))
            self.ctx.stats.cache_hits += len(found)
            frames.extend(found)
        if frames:
            self.send_frames(frames)
        else:
            self.flush()

    def forget_unsubscribed(self, held: Mapping[TopicPattern, int]) -> None:
        """After an unsubscribe: drop what is pending or held for topics ``held`` no longer
        covers, so none arrives after the ack."""
        queue = self._queue
        if queue is not None:
            remaining = PatternSet(held)
            for topic in queue.pending_topics():
                if not remaining.matches(*topic):
                    queue.drop_topic(topic)
        self._throttled = any(throttle > 0 for throttle in held.values())


class OutboundHandle(asyncio.Queue[None]):
    """A connection's OutboundQueue as ``ConnectionManager.register_queue`` takes it.

    The manager's release drains registered queues with ``get_nowait()`` until QueueEmpty;
    here that releases the session (subscriptions out of the index, queue cleared). None of
    asyncio.Queue's own state is built: per-connection memory matters with 10,000 clients.
    """

    def __init__(self, session: Session) -> None:  # noqa: D107 - no super().__init__ on purpose
        self.session: Session | None = session

    def get_nowait(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.release()
        raise asyncio.QueueEmpty

    def qsize(self) -> int:
        return 0 if self.session is None else self.session.pending_frames

    def empty(self) -> bool:
        return self.qsize() == 0

    def __repr__(self) -> str:
        return f"OutboundHandle({self.session!r})"
