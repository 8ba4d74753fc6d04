"""A fake gateway for the dashboard: a real websockets server speaking PROTOCOL.md v1 (JSON)
that serves gateway/static on the same port and streams a simulated fleet (fleet.py).

Cursors name a position in the fleet's schedule, so resume replays, history and snapshots are
computed, not stored, and a restarted fake continues exactly where the old one stopped.
Run ``python -m tests.browser.fake_gateway --nodes 200`` and open the printed URL to develop
the dashboard against it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import mimetypes
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from hub.tasks import ManagedTask, TaskManager
from tests.browser.fleet import BUILTIN_KINDS, Entry, Fleet, wave

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parents[2] / "gateway" / "static"
SUBPROTOCOL = "mh.v1.json"
GATEWAY_KIND = "gateway"
TICK_S = 0.05  # the emitter's resolution; samples of one node are interval_s apart
CSP = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
       "script-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_NODE_SEG = re.compile(r"[A-Za-z0-9_.-]{0,128}\*?")
_KIND_SEG = re.compile(r"[a-z0-9_.-]{0,64}\*?")
_CURSOR = re.compile(r"f1-(\d+)-(\d+)-(\d+)")


# -- patterns -------------------------------------------------------------------------------
def compile_pattern(text: str) -> Callable[[str, str], bool] | None:
    """PROTOCOL.md's topic pattern as a predicate on (node, kind); None if it is invalid."""
    if text == "*":
        text = "*/*"
    if text.count("/") != 1:
        return None
    node_pat, kind_pat = text.split("/")
    if not node_pat or not kind_pat:
        return None
    if not _NODE_SEG.fullmatch(node_pat) or not _KIND_SEG.fullmatch(kind_pat):
        return None

    def segment(pat: str) -> Callable[[str], bool]:
        if pat.endswith("*"):
            prefix = pat[:-1]
            return lambda name: name.startswith(prefix)
        return lambda name: name == pat

    node_ok, kind_ok = segment(node_pat), segment(kind_pat)
    return lambda node, kind: node_ok(node) and kind_ok(kind)



# -- connections ----------------------------------------------------------------------------
@dataclass(eq=False)
class Client:
    """One connection: its patterns with their throttle, conflation state, outbound queue."""

    ws: ServerConnection
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    patterns: dict[str, tuple[Callable[[str, str], bool], int]] = field(default_factory=dict)
    last_sent: dict[str, float] = field(default_factory=dict)
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    writer: ManagedTask | None = None

    def throttle_for(self, node: str, kind: str) -> int | None:
        """The smallest throttle of the patterns matching the topic; None if none does."""
        best: int | None = None
        for match, throttle in self.patterns.values():
            if match(node, kind) and (best is None or throttle < best):
                best = throttle
        return best

    def send(self, items: list[dict[str, Any]]) -> None:
        if not items:
            return
        if len(items) == 1:
            self.queue.put_nowait(json.dumps(items[0], separators=(",", ":")))
        else:
            self.queue.put_nowait(json.dumps({"type": "batch", "items": items},
                                             separators=(",", ":")))


class FakeGateway:
    """The fake: ``await start()``, then browse ``url``; ``await stop()`` closes with 1001."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        gateway_id: str = "gw-fake-1",
        retention_s: float = 900.0,
        replay_limit: int = 20_000,
        history: bool = True,
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self.fleet = fleet
        self.host = host
        self.port = port
        self.gateway_id = gateway_id
        self.retention_s = retention_s
        self.replay_limit = replay_limit
        self.history_enabled = history
        self.static_dir = static_dir
        self.paused = False
        self.requests: list[dict[str, Any]] = []  # every client request, for tests
        self.sent_resets = 0
        self.clients: set[Client] = set()
        self._server: Server | None = None
        self._tasks: TaskManager | None = None
        self._watermark_ms = 0
        self._counters = {"updates": 0, "frames": 0, "bytes": 0, "drops": 0, "replayed": 0,
                          "connections": 0, "resumes": 0}
        self._cache_hits = 0
        self._cache_misses = 0
        self._fanout_s = 0.0
        self._gateway_sample: dict[str, Any] | None = None
        self._gateway_epoch = 0
        self._gateway_seq = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        """Listen (on ``port``, or a free one) and start emitting."""
        self._tasks = TaskManager(name="fake-gateway")
        self._watermark_ms = int(time.time() * 1000)
        self._gateway_epoch = self._watermark_ms
        self._gateway_seq = 0
        self._server = await serve(
            self._handle, self.host, self.port, process_request=self._process_request,
            subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=2**20, server_header=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._tasks.create_task(self._emit_forever(), name="emit")

    async def stop(self) -> None:
        """Close every connection with 1001 (going away) and stop emitting."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        if self._tasks is not None:
            await self._tasks.aclose(timeout=5)
            self._tasks = None
        self.clients.clear()

    async def __aenter__(self) -> FakeGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def stop_node(self, name: str) -> None:
        """The node sends nothing from now on (its collector died)."""
        self.fleet.stopped[name] = int(time.time() * 1000)

    def send_alert(self, rule: str, node: str, state: str, *, severity: str = "critical",
                   value: float = 0.0, message: str = "") -> None:
        """Send an ``alert`` message to every client whose patterns cover ``node/alert``."""
        alert = {"type": "alert", "rule": rule, "node": node, "state": state,
                 "severity": severity, "value": value, "ts": time.time(), "message": message}
        for client in self.clients:
            if client.throttle_for(node, "alert") is not None:
                client.send([alert])

    def subscribes(self) -> list[dict[str, Any]]:
        """The subscribe requests received so far."""
        return [r for r in self.requests if r.get("op") == "subscribe"]

    # -- HTTP -------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None  # the WebSocket handshake goes on
        if path == "/healthz":
            return connection.respond(200, "ok\n")
        name = "index.html" if path == "/" else path.lstrip("/")
        # Only plain file names of the static folder: no traversal, no subfolders.
        target = self.static_dir / name
        if "/" in name or name.startswith(".") or not target.is_file():
            return connection.respond(404, "not found\n")
        body = target.read_bytes()
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype == "application/javascript":
            ctype = ("text/javascript" if name.endswith(".js") else ctype) + "; charset=utf-8"
        headers = Headers([
            ("Content-Type", ctype), ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"), ("Content-Security-Policy", CSP),
            ("X-Content-Type-Options", "nosniff"), ("Connection", "close"),
        ])
        return Response(200, "OK", headers, body)

    # -- WebSocket --------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        assert self._tasks is not None
        client = Client(ws)
        self._counters["connections"] += 1
        client.writer = self._tasks.create_task(self._write(client), name="writer", group="conn")
        self.clients.add(client)
        client.send([{"type": "welcome", "protocol": 1, "gateway": self.gateway_id,
                      "server_time": time.time(), "heartbeat_s": 15}])
        try:
            async for frame in ws:
                self._on_frame(client, frame)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            if self._tasks is not None and client.writer is not None:
                await self._tasks.cancel_task(client.writer, timeout=2)

    async def _write(self, client: Client) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await client.queue.get()
                self._counters["frames"] += 1
                self._counters["bytes"] += len(frame)
                await client.ws.send(frame)

    def _on_frame(self, client: Client, frame: str | bytes) -> None:
        try:
            req = json.loads(frame)
        except ValueError:
            client.send([_error(None, "bad_request", "not JSON")])
            return
        if not isinstance(req, dict):
            client.send([_error(None, "bad_request", "a request must be an object")])
            return
        self.requests.append(req)
        rid = req.get("id")
        op = req.get("op")
        if op == "subscribe":
            self._subscribe(client, req)
        elif op == "unsubscribe":
            for topic in req.get("topics") or []:
                client.patterns.pop(topic, None)
            client.send([{"type": "ack", "id": rid}])
        elif op == "history":
            client.send([self._history(req)])
        elif op == "ping":
            client.send([{"type": "pong", "id": rid, "server_time": time.time()}])
        elif op == "auth":
            client.send([{"type": "ack", "id": rid}])
        else:
            client.send([_error(rid, "unknown_op", f"unknown op {op!r}")])

    def _subscribe(self, client: Client, req: dict[str, Any]) -> None:
        rid = req.get("id")
        topics = req.get("topics")
        if not isinstance(topics, list) or not topics:
            client.send([_error(rid, "bad_request", "'topics' must be a non-empty list")])
            return
        compiled: dict[str, Callable[[str, str], bool]] = {}
        for topic in topics:
            match = compile_pattern(topic) if isinstance(topic, str) else None
            if match is None:
                client.send([_error(rid, "invalid_topic", f"invalid topic pattern {topic!r}")])
                return
            compiled[topic] = match
        throttle = req.get("throttle_ms", 0)
        throttle = min(max(int(throttle), 0), 60_000) if isinstance(throttle, int) else 0

        def wanted(node: str, kind: str) -> bool:
            return any(m(node, kind) for m in compiled.values())

        items: list[dict[str, Any]] = [{"type": "ack", "id": rid, "topics": topics,
                                        "throttle_ms": throttle}]
        resume = req.get("resume")
        snapshots = req.get("snapshot", True) is not False
        if isinstance(resume, str):
            replay = self._replay(resume, wanted)
            if replay is None:
                self.sent_resets += 1
                items.append({"type": "reset", "reason": "cursor_expired"})
                snapshots = True
            else:
                self._counters["replayed"] += len(replay)
                self._counters["resumes"] += 1
                items.extend(replay)
                snapshots = False
        if snapshots:
            items.extend(self._snapshots(wanted))
        # Everything up to the watermark is in `items`; live updates follow from there.
        for topic, match in compiled.items():
            client.patterns[topic] = (match, throttle)
        for start in range(0, len(items), 400):
            client.send(items[start:start + 400])

    def _replay(
        self, cursor: str, wanted: Callable[[str, str], bool]
    ) -> list[dict[str, Any]] | None:
        found = _CURSOR.fullmatch(cursor)
        if found is None:
            return None
        after = Entry(int(found[1]), int(found[2]), int(found[3]))
        if after.due_ms < self._watermark_ms - self.retention_s * 1000:
            return None
        entries = [e for e in self.fleet.entries(after.due_ms - 1, self._watermark_ms, wanted)
                   if e > after]
        if len(entries) > self.replay_limit:
            return None
        return [self.fleet.message(e) for e in entries]

    def _snapshots(self, wanted: Callable[[str, str], bool]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        ttl_ms = 3 * self.fleet.interval_ms + 2000  # the cache key's TTL in the real hub
        for spec in self.fleet.specs:
            stop = self.fleet.stopped.get(spec.name)
            if stop is not None and self._watermark_ms - stop > ttl_ms:
                continue  # its key expired: a dead node has no snapshot
            at = self._watermark_ms if stop is None else min(stop, self._watermark_ms)
            due = self.fleet.latest_due(spec, at)
            for k in self.fleet.kinds_of(spec):
                if wanted(spec.name, BUILTIN_KINDS[k]):
                    out.append(self.fleet.message(Entry(due, spec.index, k), "snapshot"))
        if self._gateway_sample is not None and wanted(self.gateway_id, GATEWAY_KIND):
            out.append({**self._gateway_sample, "type": "snapshot"})
        return out

    def _history(self, req: dict[str, Any]) -> dict[str, Any]:
        rid = req.get("id")
        topic = req.get("topic")
        since = req.get("since")
        if (not isinstance(topic, str) or topic.count("/") != 1
                or not isinstance(since, int | float)):
            return _error(rid, "bad_request", "history needs 'topic' and 'since'")
        if not self.history_enabled:
            return _error(rid, "history_unavailable", "history is off in this fake")
        node, kind = topic.split("/")
        spec = self.fleet.by_name.get(node)
        points: list[list[Any]] = []
        if spec is not None and kind in BUILTIN_KINDS:
            k = BUILTIN_KINDS.index(kind)
            until = req.get("until")
            hi = self._watermark_ms if not isinstance(until, int | float) else int(until * 1000)
            lo = max(int(since * 1000), self._watermark_ms - int(self.retention_s * 1000))
            entries = [e for e in self.fleet.entries(lo - 1, hi, lambda n, _k: n == node)
                       if e.kind == k]
            max_points = req.get("max_points")
            limit = max_points if isinstance(max_points, int) and max_points > 0 else 1000
            if len(entries) > limit:
                stride = math.ceil(len(entries) / limit)
                entries = entries[::-1][::stride][::-1]  # keep the newest point
            points = [[e.due_ms / 1000, self.fleet.values(e)] for e in entries]
        return {"type": "history", "id": rid, "node": node, "kind": kind, "points": points}

    # -- emitting ---------------------------------------------------------------------------
    async def _emit_forever(self) -> None:
        next_gateway = time.monotonic()
        while True:
            now_ms = int(time.time() * 1000)
            started = time.perf_counter()
            if not self.paused:
                self._emit(self._watermark_ms, now_ms)
            self._watermark_ms = now_ms
            self._flush_held()
            self._fanout_s = time.perf_counter() - started
            if time.monotonic() >= next_gateway:
                next_gateway += 1.0
                if not self.paused:
                    self._emit_gateway_sample()
            await asyncio.sleep(TICK_S)

    def _emit(self, lo_ms: int, hi_ms: int) -> None:
        if not self.clients:
            return
        entries = self.fleet.entries(lo_ms, hi_ms, lambda _n, _k: True)
        if not entries:
            return
        now = time.monotonic()
        outgoing: dict[Client, list[dict[str, Any]]] = {c: [] for c in self.clients}
        for entry in entries:
            spec = self.fleet.specs[entry.node]
            kind = BUILTIN_KINDS[entry.kind]
            targets = [(c, t) for c in self.clients
                       if (t := c.throttle_for(spec.name, kind)) is not None]
            if not targets:
                continue
            msg = self.fleet.message(entry)
            for client, throttle in targets:
                self._deliver(client, f"{spec.name}/{kind}", msg, throttle, now, outgoing[client])
        for client, items in outgoing.items():
            self._counters["updates"] += len(items)
            client.send(items)

    def _deliver(self, client: Client, topic: str, msg: dict[str, Any], throttle_ms: int,
                 now: float, out: list[dict[str, Any]]) -> None:
        if throttle_ms == 0 or now >= client.last_sent.get(topic, 0.0) + throttle_ms / 1000:
            client.last_sent[topic] = now
            client.held.pop(topic, None)
            out.append(msg)
            return
        if topic in client.held:
            self._counters["drops"] += 1  # conflation: the newer sample replaces it
        client.held[topic] = msg

    def _flush_held(self) -> None:
        now = time.monotonic()
        for client in self.clients:
            due: list[dict[str, Any]] = []
            for topic, msg in list(client.held.items()):
                match = client.throttle_for(msg["node"], msg["kind"])
                if match is None:
                    del client.held[topic]
                elif now >= client.last_sent.get(topic, 0.0) + match / 1000:
                    due.append(msg)
                    client.last_sent[topic] = now
                    del client.held[topic]
            self._counters["updates"] += len(due)
            client.send(due)

    def _emit_gateway_sample(self) -> None:
        """The fake's own metrics as kind ``gateway``, named as gateway/selfmetrics.py names
        the real ones: real counts where the fake has them, a simulated cache."""
        assert self._tasks is not None
        tasks = self._tasks.metrics()["tasks_by_state"]
        now = time.time()
        c = self._counters
        self._cache_hits += 40 + int(10 * (1 + wave(now, 60, 0)))
        self._cache_misses += int(1 + (1 + wave(now, 300, 1)))
        values: dict[str, float] = {
            "connections.connected": len(self.clients),
            "connections.connecting": 0,
            "connections_opened_total": c["connections"],
            "connections_closed_total": c["connections"] - len(self.clients),
            "tasks.running": tasks.get("running", 0),
            "tasks.pending": tasks.get("pending", 0),
            "tasks.failed": tasks.get("failed", 0),
            "subscriptions": sum(len(client.patterns) for client in self.clients),
            "messages_out_total": c["updates"],
            "bytes_out_total": c["bytes"],
            "conflated_total": c["drops"],
            "cache_hits_total": self._cache_hits,
            "cache_misses_total": self._cache_misses,
            "resumes_total.memory": c["resumes"],
            "resets_total": self.sent_resets,
            "redis_up": 1,
            "fanout_latency_seconds_avg": self._fanout_s,
        }
        # A restarted gateway is a new run of its own metrics: a new epoch, seq from 0.
        self._gateway_seq += 1
        msg = {"type": "update", "node": self.gateway_id, "kind": GATEWAY_KIND, "ts": now,
               "seq": self._gateway_seq, "epoch": self._gateway_epoch,
               "cursor": f"f1-{int(now * 1000)}-0-0", "values": values}
        self._gateway_sample = msg
        for client in self.clients:
            if client.throttle_for(self.gateway_id, GATEWAY_KIND) is not None:
                client.send([msg])


def _error(rid: Any, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "id": rid, "code": code, "message": message}


async def _serve(args: argparse.Namespace) -> None:
    fleet = Fleet(args.nodes, args.interval)
    async with FakeGateway(fleet, host=args.host, port=args.port) as fake:
        print(f"fake gateway with {args.nodes} nodes: {fake.url}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=24)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
