"""The gateway as a process: SIGTERM drains and exits 0, workers share the port,
misconfiguration exits 2 with one line, and the command-line entry points."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time

import pytest

from gateway.main import main
from hub import cli
from tests.gateway.gateway_client import Client, GatewayProcess, http_get, wait_until, ws_url
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.redis_server


async def test_sigterm_drains_clients_with_1001_and_exits_0(redis_server: RedisServer) -> None:
    """SIGTERM: /readyz 503, clients closed with 1001 spread over the grace, exit 0 in time."""
    gateway = GatewayProcess(redis_server.url, "--drain-grace", "1.0", "--drain-timeout", "6")
    async with contextlib.AsyncExitStack() as stack:
        await gateway.wait_ready()
        stack.callback(gateway.kill)
        clients = [await stack.enter_async_context(Client.open(ws_url(gateway.port)))
                   for _ in range(10)]
        for client in clients:
            await client.expect("welcome")
        began = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)

        async def closed_at(client: Client) -> tuple[int | None, float]:
            code = await client.close_code(timeout=8)
            return code, time.monotonic() - began

        async def draining() -> bool:
            status, _, body = await asyncio.to_thread(http_get, gateway.port, "/readyz")
            return (status, body) == (503, b"draining\n")

        # Within the grace the listener still answers, and says it is not ready.
        await wait_until(draining, timeout=0.8, what="/readyz 503")
        results = await asyncio.gather(*(closed_at(c) for c in clients))
        assert [code for code, _ in results] == [1001] * 10
        times = sorted(at for _, at in results)
        assert times[-1] - times[0] >= 0.4, times  # spread, not all in one instant
        code = await asyncio.to_thread(gateway.proc.wait, 8)
        assert code == 0, gateway.stderr()
        assert time.monotonic() - began < 6.5


async def test_workers_share_one_port(redis_server: RedisServer) -> None:
    """--workers 2: two processes serve one port (SO_REUSEPORT); SIGTERM stops both, exit 0."""
    gateway = GatewayProcess(redis_server.url, "--workers", "2", "--drain-grace", "0",
                             "--drain-timeout", "5", gateway_id="gw")
    try:
        await gateway.wait_ready()
        seen: set[str] = set()
        deadline = time.monotonic() + 15
        while seen != {"gw-w0", "gw-w1"}:
            assert time.monotonic() < deadline, seen
            async with Client.open(ws_url(gateway.port)) as client:
                seen.add((await client.next())["gateway"])
        gateway.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.proc.wait, 10) == 0
    finally:
        gateway.kill()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "abc"], "--port abc: expected a whole number"),
        (["--port", "70000"], "must be from 0 to 65535"),
        (["--redis-url", "nope://x"], "unknown scheme"),
        (["--max-frame-bytes", "10"], "--max-frame-bytes 10"),
        (["--drain-grace", "20", "--drain-timeout", "10"], "must be shorter than"),
        (["--gateway-id", "bad:id"], "invalid node name"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--replay-limit", "5000"], "--replay-limit"),
    ],
)
def test_misconfiguration_exits_2_with_one_line(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A setting that cannot work: exit 2 and one line on stderr naming it."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("metrics-hub gateway: ")
    assert needle in err


async def test_port_in_use_exits_2(redis_server: RedisServer) -> None:
    """A port another process holds: exit 2 with one line saying so."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port),
            "--redis-url", redis_server.url, "--log-level", "error",
            stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        holder.close()
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert lines == [f"metrics-hub gateway: cannot listen on 127.0.0.1:{port}: "
                     "Address already in use"], lines


def test_print_config_and_the_metrics_hub_command(capsys: pytest.CaptureFixture[str]) -> None:
    """--print-config shows every setting with its source; `metrics-hub gateway` is this."""
    port = free_port()
    assert cli.main(["gateway", "--print-config", "--port", str(port)]) == 0
    out = capsys.readouterr().out
    assert f"port = {port}  # flag" in out
    assert "redis_url = redis://127.0.0.1:6379/0  # default" in out
    assert "max_connections = 20000  # default" in out
    assert main(["--help"]) == 0
    assert "--drain-grace" in capsys.readouterr().out
