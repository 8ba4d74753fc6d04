"""Helpers of the gateway server tests: a protocol client over real websockets, gateway and
collector processes, an in-process gateway, and waiting on conditions with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.config import GatewaySettings
from gateway.server import Gateway
from hub.publisher import Publisher
from hub.redis_url import connect as redis_connect
from hub.sample import Sample
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
Message = dict[str, Any]


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0,
    interval: float = 0.02, what: str = "condition",
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class Client:
    """A protocol v1 client: unpacks batches, keeps what it has not consumed yet."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.binary = ws.subprotocol == "mh.v1.msgpack"
        self.inbox: deque[Message] = deque()
        self.frames = 0
        self.batches = 0
        self._ids = iter(range(1, 1 << 30))

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, **kwargs: Any) -> AsyncIterator[Client]:
        """Connect, read the welcome into the inbox, and close at the end."""
        kwargs.setdefault("max_size", None)
        kwargs.setdefault("open_timeout", 10)
        async with connect(url, **kwargs) as ws:
            yield cls(ws)

    async def send(self, obj: Message) -> None:
        if self.binary:
            await self.ws.send(msgpack.packb(obj))
        else:
            await self.ws.send(json.dumps(obj))

    async def request(self, op: str, **fields: Any) -> int:
        """Send a request with a fresh id; returns the id."""
        request_id = next(self._ids)
        await self.send({"op": op, "id": request_id, **fields})
        return request_id

    async def _fill(self, timeout: float) -> None:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        obj = msgpack.unpackb(raw) if self.binary else json.loads(raw)
        self.frames += 1
        if obj.get("type") == "batch":
            self.batches += 1
            self.inbox.extend(obj["items"])
        else:
            self.inbox.append(obj)

    async def next(self, timeout: float = 5.0) -> Message:
        """The next message (batches unpacked)."""
        if not self.inbox:
            await self._fill(timeout)
        while not self.inbox:
            await self._fill(timeout)
        return self.inbox.popleft()

    async def expect(self, mtype: str, timeout: float = 5.0,
                     skip: Iterable[str] = ("update", "snapshot")) -> Message:
        """The next message of ``mtype``, skipping types in ``skip``; anything else fails."""
        deadline = time.monotonic() + timeout
        skipped = set(skip)
        while True:
            message = await self.next(max(0.01, deadline - time.monotonic()))
            if message["type"] == mtype:
                return message
            if message["type"] not in skipped:
                raise AssertionError(f"expected {mtype}, got {message}")

    async def answer(self, request_id: int, timeout: float = 5.0) -> Message:
        """The reply (ack, error, history, pong) to ``request_id``, skipping other messages."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.next(max(0.01, deadline - time.monotonic()))
            if message.get("id") == request_id and message["type"] != "update":
                return message

    async def updates_until(
        self, done: Callable[[list[Message]], bool], timeout: float = 10.0,
        types: Iterable[str] = ("update",),
    ) -> list[Message]:
        """Collect messages of ``types`` until ``done(collected)``; fails at the deadline."""
        wanted = set(types)
        collected: list[Message] = []
        deadline = time.monotonic() + timeout
        while not done(collected):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out with {len(collected)} messages: "
                                     f"{collected[-3:]}")
            try:
                message = await self.next(remaining)
            except TimeoutError:
                continue
            if message["type"] in wanted:
                collected.append(message)
        return collected

    async def close_code(self, timeout: float = 10.0) -> int | None:
        """Read until the connection closes; the close code the server sent."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic()))
        rcvd = self.ws.protocol.close_rcvd
        return rcvd.code if rcvd is not None else None


def seqs_by_topic(messages: Iterable[Message]) -> dict[str, list[int]]:
    """``node/kind`` -> the seqs received, in order."""
    out: dict[str, list[int]] = {}
    for message in messages:
        out.setdefault(f"{message['node']}/{message['kind']}", []).append(message["seq"])
    return out


def assert_contiguous(seqs: list[int], what: str = "") -> None:
    """Fail unless ``seqs`` goes up by exactly one each time (no gap, no duplicate)."""
    for before, after in zip(seqs, seqs[1:], strict=False):
        assert after == before + 1, f"{what}: seq {before} then {after} in {seqs}"


# -- publishing ------------------------------------------------------------------------------
class TestPublisher:
    """Publishes samples of made-up nodes with increasing seqs, as a collector would."""

    __test__ = False  # not a test class

    def __init__(self, redis_url: str, *, epoch: int = 7, **options: Any) -> None:
        self.redis = redis_connect(redis_url)
        self.publisher = Publisher(self.redis, **options)
        self.epoch = epoch
        self.seqs: dict[tuple[str, str], int] = {}

    def build(self, node: str, kind: str = "system",
              values: dict[str, float] | None = None) -> Sample:
        """The next sample of ``node/kind`` (values default to ``{"v": seq}``)."""
        seq = self.seqs.get((node, kind), 0) + 1
        self.seqs[(node, kind)] = seq
        return Sample.build(node, kind, values or {"v": float(seq)}, seq=seq, epoch=self.epoch)

    async def publish(self, node: str, kind: str = "system",
                      values: dict[str, float] | None = None) -> Sample:
        sample = self.build(node, kind, values)
        await self.publisher.publish(sample)
        return sample

    async def aclose(self) -> None:
        await self.redis.aclose()


# -- gateways ---------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def inprocess_gateway(redis_url: str, **changes: Any) -> AsyncIterator[Gateway]:
    """A gateway in this process on a free loopback port, started and ready to serve."""
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "redis_url": redis_url,
                               "metrics_interval": 0.0, "gateway_id": "gw-test"}
    options.update(changes)
    gateway = Gateway(GatewaySettings().replace(**options))
    await gateway.start()
    try:
        await wait_until(lambda: gateway.fanout.started.is_set(), what="the reader to start")
        yield gateway
    finally:
        await gateway.aclose(timeout=2.0)


def ws_url(port: int, query: str = "") -> str:
    return f"ws://127.0.0.1:{port}/ws{query}"


def http_get(port: int, path: str, headers: dict[str, str] | None = None,
             method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A blocking HTTP request (run it in a thread from async tests)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {},
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class Process:
    """A child process of the test (gateway or collector), stopped at the end whatever happens."""

    def __init__(self, args: list[str], name: str) -> None:
        self.name = name
        self.args = args
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("METRICS_HUB_CONFIG", None)
        # stderr goes to a file: a pipe nobody reads could fill up and stall the child.
        self._log_path = Path(tempfile.mkdtemp(prefix="mh-proc-")) / "stderr.log"
        with self._log_path.open("wb") as log:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                         stderr=log)

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stderr(self) -> str:
        """What the child wrote to stderr so far (for failure messages)."""
        return self._log_path.read_text(errors="replace")


class GatewayProcess(Process):
    """``python -m gateway`` on a free port."""

    def __init__(self, redis_url: str, *extra: str, port: int | None = None,
                 gateway_id: str | None = None) -> None:
        self.port = port or free_port()
        args = [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port",
                str(self.port), "--redis-url", redis_url, "--log-level", "warning", *extra]
        if gateway_id:
            args += ["--gateway-id", gateway_id]
        super().__init__(args, f"gateway:{self.port}")

    async def wait_ready(self, timeout: float = 15.0) -> None:
        async def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.stderr()}")
            try:
                status, _, _ = await asyncio.to_thread(http_get, self.port, "/readyz")
            except OSError:
                return False
            return status == 200
        await wait_until(ready, timeout, 0.05, f"{self.name} to be ready")

    @property
    def url(self) -> str:
        return ws_url(self.port)


class CollectorProcess(Process):
    """``python -m collectors`` for one node, sampling fast and lean."""

    def __init__(self, redis_url: str, node: str, interval: float = 0.2) -> None:
        args = [sys.executable, "-m", "collectors", "--redis-url", redis_url, "--node", node,
                "--interval", str(interval), "--slow-interval", "5", "--no-plugins",
                "--no-per-cpu", "--no-temperatures", "--log-level", "warning",
                "--reconnect-min-delay", "0.05", "--reconnect-max-delay", "0.5"]
        super().__init__(args, f"collector:{node}")
