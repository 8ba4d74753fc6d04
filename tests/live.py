"""Helpers for tests that run the hub's real processes: start a collector, gateway or
simulator as a child in its own process group, wait on conditions with deadlines, talk HTTP
and WebSocket to a gateway, and stop everything whatever happens."""

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
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


async def eventually(predicate: Callable[[], Awaitable[object]], timeout: float, what: str,
                     interval: float = 0.05) -> None:
    """The async ``wait_until``."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment without METRICS_HUB_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICS_HUB_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class HubProcess:
    """A child process in its own process group, output to a log file; ``stop`` always
    leaves nothing of its group behind."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_file = Path(tempfile.mkstemp(prefix=f"mh-{name}-", suffix=".log")[1])
        with self.log_file.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env if env is not None else child_env(), cwd=cwd or REPO,
                process_group=0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def send_signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    def stop(self, timeout: float = 15.0, signum: int = signal.SIGTERM) -> int:
        """Signal the group, wait, SIGKILL what is left; returns the exit status."""
        if self.proc.poll() is None:
            self.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                self.proc.wait()
        self.send_signal(signal.SIGKILL)
        return self.proc.returncode

    def close(self) -> None:
        """Stop it and remove its log, after printing the log's end: pytest shows what a
        test printed only when it fails, and then the children's logs say why."""
        self.stop()
        with contextlib.suppress(OSError):
            tail = "\n".join(self.log().splitlines()[-40:])
            print(f"--- {self.name} (pid {self.pid}, exit {self.proc.returncode}), last lines:"
                  f"\n{tail}")
            self.log_file.unlink()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def collector(url: str, node: str, *args: str, prefix: str = "mh") -> HubProcess:
    return HubProcess(f"collector-{node}", python_module(
        "collectors", "--redis-url", url, "--node", node, "--key-prefix", prefix,
        "--interval", "0.2", "--no-temperatures", "--no-plugins", *args))


def gateway(url: str, port: int, *args: str, prefix: str = "mh",
            gateway_id: str | None = None) -> HubProcess:
    return HubProcess(f"gateway-{port}", python_module(
        "gateway", "--redis-url", url, "--host", "127.0.0.1", "--port", str(port),
        "--key-prefix", prefix, "--gateway-id", gateway_id or f"gw-{port}", *args))


def simulator(url: str, *args: str, prefix: str = "mh") -> HubProcess:
    return HubProcess("simulator", python_module(
        "hub.simulate", "--redis-url", url, "--key-prefix", prefix, *args))


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of GET http://127.0.0.1:port/path; (0, b"") if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def ready(port: int) -> bool:
    return http_get(port, "/readyz", timeout=1.0)[0] == 200


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and every descendant still alive (zombies count: not yet reaped)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(processes: Sequence[psutil.Process]) -> list[psutil.Process]:
    """The processes still running (a zombie has exited and is not counted)."""
    left = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            continue
    return left


class WsClient:
    """A JSON protocol client of a gateway's /ws for tests, keeping every message it got."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[dict[str, Any]] = []
        self._ws: Any = None
        self._next_id = 0

    async def __aenter__(self) -> WsClient:
        from websockets.asyncio.client import connect

        self._ws = await connect(f"ws://127.0.0.1:{self.port}/ws",
                                 subprotocols=["mh.v1.json"], open_timeout=10)  # type: ignore[list-item]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ws.close()

    async def send(self, op: str, **fields: Any) -> int:
        self._next_id += 1
        await self._ws.send(json.dumps({"op": op, "id": self._next_id, **fields}))
        return self._next_id

    async def receive(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The messages of the next frame (a batch is unpacked)."""
        from websockets.exceptions import ConnectionClosed

        try:
            frame = json.loads(await asyncio.wait_for(self._ws.recv(), timeout))
        except ConnectionClosed as exc:
            last = self.messages[-3:]
            raise AssertionError(f"gateway {self.port} closed the connection: {exc!r}; "
                                 f"last messages: {last}") from exc
        items = frame["items"] if frame.get("type") == "batch" else [frame]
        self.messages.extend(items)
        return list(items)

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                    what: str) -> dict[str, Any]:
        """Receive until a message satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            try:
                items = await self.receive(remaining)
            except TimeoutError:
                continue
            for item in items:
                if predicate(item):
                    return item
