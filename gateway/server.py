"""The gateway process: one port for the WebSocket protocol (``/ws``), health and metrics
endpoints and the dashboard, on the ``websockets`` asyncio server.

``Gateway`` wires the parts: the fan-out's reader task, one Session per connection (its
reader and writer tasks owned by the TaskManager, the connection and its queue by the
ConnectionManager), the self-metrics, and the drain that SIGTERM starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import hashlib
import http
import logging
import mimetypes
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, unquote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gateway.config import GatewaySettings, default_gateway_id
from gateway.fanout import Fanout
from gateway.protocol import CloseCode, choose_subprotocol, encoding_for
from gateway.requests import read_loop
from gateway.selfmetrics import CONTENT_TYPE, GatewayStats, Readings, SamplePublisher, SelfMetrics
from gateway.session import OutboundHandle, Session, SessionContext
from hub.connections import ConnectionInfo, ConnectionManager
from hub.errors import CapacityError, LifecycleError
from hub.publisher import Publisher
from hub.redis_url import RedisClient, connect
from hub.tasks import ManagedTask, TaskManager, TaskState, run_periodically

log = logging.getLogger(__name__)

WS_PATH: Final = "/ws"
_MAINTENANCE_S = 5.0
_DRAIN_TICK_S = 0.02
_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}


# The dashboard loads only its own files and talks only to its own origin; a strict policy
# makes an injected script or a stray external reference fail loudly (docs/dashboard.md).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _headers(content_type: str, length: int, **extra: str) -> Headers:
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Type", content_type),
        ("Content-Length", str(length)),
        ("X-Content-Type-Options", "nosniff"),
    ])
    for name, value in extra.items():
        headers[name.replace("_", "-")] = value
    return headers


def text_response(status: int, text: str, *, head: bool = False, **extra: str) -> Response:
    """A plain-text HTTP response (``Cache-Control: no-store`` unless given)."""
    body = text.encode()
    extra.setdefault("Cache_Control", "no-store")
    headers = _headers("text/plain; charset=utf-8", len(body), **extra)
    return Response(status, http.HTTPStatus(status).phrase, headers, b"" if head else body)


class StaticFiles:
    """The dashboard's files under one directory, served safely.

    Only regular files strictly inside the root are served (no ``..``, no hidden files, no
    symlink out of it, no listing); ``/`` is ``index.html``. Files are revalidated on every
    load (``Cache-Control: no-cache`` with an ETag, 304 when unchanged) because their names
    carry no version. Contents are cached in memory by (mtime, size).
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._cache: dict[Path, tuple[int, int, bytes, str]] = {}

    def resolve(self, url_path: str) -> Path | None:
        """The file a URL path names, or None when it names nothing servable."""
        rel = unquote(url_path).lstrip("/") or "index.html"
        if "\x00" in rel or "\\" in rel:
            return None
        parts = rel.split("/")
        if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
            return None
        try:
            candidate = self.root.joinpath(*parts).resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    def response(self, url_path: str, request_headers: Headers, *, head: bool) -> Response:
        path = self.resolve(url_path)
        if path is None:
            return text_response(404, "not found\n", head=head)
        try:
            stat = path.stat()
            cached = self._cache.get(path)
            if cached is None or cached[:2] != (stat.st_mtime_ns, stat.st_size):
                body = path.read_bytes()
                etag = '"' + hashlib.sha1(body, usedforsecurity=False).hexdigest()[:20] + '"'
                cached = (stat.st_mtime_ns, stat.st_size, body, etag)
                self._cache[path] = cached
        except OSError:
            return text_response(404, "not found\n", head=head)
        body, etag = cached[2], cached[3]
        content_type = _CONTENT_TYPES.get(path.suffix.lower()) \
            or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if etag in [tag.strip() for tag in request_headers.get("If-None-Match", "").split(",")]:
            headers = _headers(content_type, 0, ETag=etag, Cache_Control="no-cache")
            del headers["Content-Length"]
            return Response(304, "Not Modified", headers, b"")
        headers = _headers(content_type, len(body), ETag=etag, Cache_Control="no-cache")
        if content_type.startswith("text/html"):
            headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return Response(200, "OK", headers, b"" if head else body)


def token_source(request: Request | None) -> str | None:
    """Where the handshake carried a token (``header`` or ``query``), never the token."""
    if request is None:
        return None
    if request.headers.get("Authorization", "").lower().startswith("bearer "):
        return "header"
    _, _, query = request.path.partition("?")
    if query and parse_qs(query).get("token"):
        return "query"
    return None


def _writer_done(ws: ServerConnection, record: ManagedTask, task: asyncio.Task[Any]) -> None:
    if record.state is TaskState.FAILED:
        ws.transport.abort()  # the reader ends, and with it the connection


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    chosen = choose_subprotocol(offered)
    return None if chosen is None else Subprotocol(chosen.value)


class Gateway:
    """One gateway process's server and the components it owns.

    ``await start()`` binds and serves; ``await drain()`` is SIGTERM's first step (readiness
    off, listener closed, clients closed with 1001 spread over ``drain_grace``);
    ``await aclose()`` stops everything. ``fatal`` completes when the gateway cannot work
    (an ACL refusal, a layout mismatch): the process must exit.
    """

    def __init__(self, settings: GatewaySettings, *, redis: RedisClient | None = None) -> None:
        self.settings = settings
        self.stats = GatewayStats()
        self.metrics = SelfMetrics(self.stats, self.readings)
        self.tasks = TaskManager(name="gateway", cancel_timeout=2.0)
        self.connections = ConnectionManager(
            self.tasks, max_connections=settings.max_connections, cancel_timeout=2.0)
        self._owns_redis = redis is None
        self.redis = connect(settings.redis_url) if redis is None else redis
        self.fanout = Fanout(
            self.redis, settings.layout, stats=self.stats, metrics=self.metrics,
            task_manager=self.tasks, replay_window=settings.replay_window,
            replay_window_s=settings.replay_window_seconds, snapshot_ttl=settings.snapshot_ttl)
        self.static = StaticFiles(settings.static_root)
        self.sessions: dict[str, Session] = {}
        self.draining = False
        self.gateway_id = settings.gateway_id or ""
        self.port = 0
        self.fatal: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self._server: Server | None = None
        self._ctx: SessionContext | None = None
        self._sample_publisher: SamplePublisher | None = None
        self._closed = False
        self._idle = asyncio.Event()  # set when the last session ends

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the port, start the reader and the periodic tasks, and serve.

        Raises OSError when the port cannot be bound. Cancelling is safe (``aclose`` after).
        """
        s = self.settings
        self._server = await serve(
            self._handle, s.host, s.port,
            process_request=self._process_request,
            select_subprotocol=_select_subprotocol,
            compression="deflate" if s.compression else None,
            max_size=s.max_frame_bytes, write_limit=s.write_limit,
            ping_interval=s.ping_interval, ping_timeout=s.ping_timeout,
            close_timeout=s.close_timeout, open_timeout=10,
            reuse_port=s.reuse_port or s.workers > 1,
            start_serving=False, logger=logging.getLogger("gateway.ws"),
            server_header=None,
            # asyncio's default backlog of 100 drops SYNs when thousands of clients of a
            # drained or dead gateway reconnect here within a second.
            backlog=4096,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.gateway_id = s.gateway_id or default_gateway_id(self.port)
        self._ctx = SessionContext(
            gateway_id=self.gateway_id, fanout=self.fanout, stats=self.stats,
            redis=self.redis, layout=s.layout, protocol_limits=s.protocol_limits(),
            outbound_limits=s.outbound_limits(), rate_limits=s.rate_limits(),
            replay_limit=s.replay_limit, resume_wait=s.resume_wait,
            heartbeat_s=max(1, round(s.ping_interval)), max_batch_bytes=s.max_batch_bytes,
            close_timeout=s.close_timeout)
        self.tasks.create_task(self._run_fanout(), name="fanout")
        self.tasks.create_task(run_periodically(self._maintain, _MAINTENANCE_S),
                               name="maintenance")
        if s.metrics_interval > 0:
            publisher = Publisher(self.redis, s.layout, interval_s=s.metrics_interval,
                                  check_layout=False)
            self._sample_publisher = SamplePublisher(publisher, self.gateway_id, self.metrics)
            self.tasks.create_task(
                run_periodically(self._publish_metrics, s.metrics_interval),
                name="selfmetrics")
        await self._server.start_serving()
        log.info("gateway %s listening on %s:%d (WebSocket on %s)", self.gateway_id, s.host,
                 self.port, WS_PATH)

    async def _run_fanout(self) -> None:
        try:
            await self.fanout.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("the stream reader stopped: %s", exc)
            if not self.fatal.done():
                self.fatal.set_result(exc)
            raise

    async def _maintain(self) -> None:
        self.fanout.cache.prune()

    async def _publish_metrics(self) -> None:
        if self._sample_publisher is not None and self.fanout.started.is_set():
            await self._sample_publisher.publish_once()

    @property
    def ready(self) -> bool:
        """Readiness: Redis reachable (the reader's last read succeeded) and not draining."""
        return self.fanout.redis_up and not self.draining

    async def drain(self) -> None:
        """Turn readiness off, refuse new WebSocket handshakes (503), close every client with
        1001 spread over ``drain_grace``, close the listener, and wait for the connections to
        finish. Cancelling is safe (aclose follows)."""
        self.draining = True  # from now on /readyz and new /ws handshakes answer 503
        sessions = list(self.sessions.values())
        count = len(sessions)
        log.info("draining: closing %d connections over %.1fs", count, self.settings.drain_grace)
        began = time.monotonic()
        grace = self.settings.drain_grace
        index = 0
        while index < count:
            elapsed = time.monotonic() - began
            due = count if grace <= 0 else min(count, int(count * elapsed / grace) + 1)
            while index < due:
                self.stats.drain_closes += 1
                sessions[index].close_soon(CloseCode.DRAINING, "gateway draining")
                index += 1
            if index < count:
                await asyncio.sleep(_DRAIN_TICK_S)
        # The listener stayed open through the grace so that load balancers could see
        # /readyz answer 503; now nothing new is accepted at all.
        if self._server is not None:
            self._server.server.close()
        while self.sessions:
            self._idle.clear()
            await self._idle.wait()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close the server (remaining clients get 1001), cancel every task, close Redis.

        Idempotent; waits at most about ``timeout`` for the clients' closing handshakes.
        """
        if self._closed:
            return
        self._closed = True
        self.draining = True
        server = self._server
        if server is not None:
            server.close(code=CloseCode.DRAINING, reason="gateway stopping")
            try:
                async with asyncio.timeout(timeout):
                    await server.wait_closed()
            except TimeoutError:
                for connection in list(server.all_connections):
                    connection.transport.abort()
                log.warning("clients did not close within %.1fs; dropped them", timeout)
        await self.connections.aclose()
        await self.tasks.aclose()
        if self._owns_redis:
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- connections ------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        """One WebSocket connection, from welcome to release (websockets' handler task)."""
        ctx = self._ctx
        assert ctx is not None
        if self.draining:
            await ws.close(CloseCode.DRAINING, "gateway draining")
            return
        encoding = encoding_for(ws.subprotocol)
        source = token_source(ws.request)
        try:
            info = await self.connections.connect(ws)
        except CapacityError:
            self.stats.capacity_rejects += 1
            await ws.close(CloseCode.TRY_AGAIN_LATER, "gateway over capacity")
            return
        except LifecycleError:
            await ws.close(CloseCode.DRAINING, "gateway draining")
            return
        session = Session(ws, ctx, encoding, info.conn_id, token_source=source,
                          spawn=functools.partial(self._spawn_writer, ws, info))
        self.sessions[info.conn_id] = session
        try:
            await self.connections.register_queue(ws, OutboundHandle(session), "outbound")
            session.start()
            reader = await self.connections.register_task(
                ws, "reader", read_loop(session), disconnect_on_exit=True)
            try:
                # Awaiting the task itself (not asyncio.wait) costs no extra future per
                # connection; its end, however it ends, is the connection's end.
                await reader.task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # this handler is cancelled (server closing), not just the reader
            except Exception:  # the TaskManager logged it; the finally releases
                pass
        except LifecycleError:
            pass  # released while setting up: the client went away at once
        finally:
            session.release()
            self.sessions.pop(info.conn_id, None)
            await self.connections.disconnect(ws)
            if not self.sessions:
                self._idle.set()

    def _spawn_writer(
        self, ws: ServerConnection, info: ConnectionInfo, coro: Coroutine[Any, Any, None]
    ) -> ManagedTask:
        """Start a connection's writer in the TaskManager, in the connection's group, which
        its disconnect cancels. (ConnectionManager.register_task is a coroutine; the writer
        is started from the fan-out's synchronous path.) A writer that fails ends the
        connection, as a registered task's failure would."""
        record = self.tasks.create_task(coro, name=f"{info.conn_id}/writer", group=info.group)
        record.task.add_done_callback(functools.partial(_writer_done, ws, record))
        return record

    # -- HTTP -------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == WS_PATH:
            if self.draining:
                return text_response(503, "draining: connect to another gateway\n")
            return None  # the WebSocket handshake goes on
        head = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return text_response(405, "method not allowed\n", Allow="GET, HEAD")
        if path == "/healthz":
            return text_response(200, "ok\n", head=head)
        if path == "/readyz":
            if self.draining:
                return text_response(503, "draining\n", head=head)
            if not self.fanout.redis_up:
                return text_response(503, "redis unreachable\n", head=head)
            return text_response(200, "ready\n", head=head)
        if path == "/metrics":
            body = self.metrics.exposition()
            headers = _headers(CONTENT_TYPE, len(body), Cache_Control="no-store")
            return Response(200, "OK", headers, b"" if head else body)
        return self.static.response(path, request.headers, head=head)

    # -- metrics ----------------------------------------------------------------------------
    def readings(self) -> Readings:
        """The gauges of this moment, for /metrics and the published samples."""
        connections = self.connections.metrics()
        tasks = self.tasks.metrics()
        sessions = list(self.sessions.values())
        window = self.fanout.window
        reader = self.fanout.reader
        reader_metrics: dict[str, Any] = reader.metrics() if reader is not None else {}
        live_states = ("pending", "running", "cancelling")
        return Readings(
            connections_by_state={k: v for k, v in connections["connections_by_state"].items()
                                  if k != "disconnected"},
            connections_opened=connections["connections_opened_total"],
            connections_closed=connections["connections_closed_total"],
            tasks_by_state={k: v for k, v in tasks["tasks_by_state"].items()
                            if k in live_states},
            subscriptions=len(self.fanout.index),
            pending_frames=sum(s.pending_frames for s in sessions),
            conflated_total=self.stats.conflated_closed + sum(s.conflated for s in sessions),
            redis_up=self.fanout.redis_up,
            draining=self.draining,
            reader_lag_s=dict(self.fanout.lag_s),
            reader_errors=int(reader_metrics.get("reader_errors_total", 0)),
            reader_reconnects=int(reader_metrics.get("reader_reconnects_total", 0)),
            replay_window_entries=len(window) if window is not None else 0,
            cached_topics=self.fanout.cache.fresh_count(),
        )
