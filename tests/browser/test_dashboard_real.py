"""The dashboard in headless Chromium against the real system: a private redis-server, a collector
and a gateway as processes. A tile goes live, the node view fills from history, and a gateway
restart resumes from the cursor with no reset, loss or gap. Every wait has a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from hub.keys import KeyLayout
from hub.reader import history
from hub.redis_url import connect
from tests.browser.conftest import artifact
from tests.redis_server import RedisServer, free_port

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.redis_server, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
NODE = "browser-node"
GATEWAY_ID = "gw-a"
# At a 1 s interval, a step longer than this between two held samples is a hole.
MAX_STEP_S = 1.5
UNIT_RE = re.compile(r"^(–|.*(%|[KMGTP]?i?B(/s)?|/s).*)$")
TILE = f'[data-node="{NODE}"]'
CPU_POINTS_JS = ("(n) => +(document.querySelector('[data-chart=\"cpu\"] canvas')"
                 "?.dataset.points || 0) >= n")
# Whether the page holds every timestamp of a list (1 ms tolerance: JSON on both paths).
HOLDS_ALL_JS = """([node, wanted]) => {
  const held = window.__mh.seriesTimes(node, 'system');
  return wanted.every((t) => held.some((h) => Math.abs(h - t) < 1e-3));
}"""
SPARK_TIMES_JS = ("(n) => window.__mh.fleet.nodes.get(n).spark.rows"
                  ".filter((r) => r.v).map((r) => r.ts)")


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll an async condition on the Python side until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


def http_status(port: int, path: str) -> int | None:
    """The HTTP status of GET ``path`` on the loopback port, or None if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class Child:
    """A Python child process in its own process group, its stderr kept in a file."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("METRICS_HUB_CONFIG", None)
        # The children run as deployed: asyncio debug mode would slow them on a shared machine.
        env.pop("PYTHONASYNCIODEBUG", None)
        # A file, not a pipe: a pipe nobody reads could fill up and stall the child.
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        """SIGTERM, as an orchestrator stops a service."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int:
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{self.name} still runs {timeout} s after SIGTERM:\n"
                                 f"{self.log()}") from exc

    def kill(self) -> None:
        """SIGKILL the whole process group (whatever it started too), then reap."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class RealHub:
    """A collector for ``NODE`` and a gateway on a fixed port, both on one private Redis."""

    collector: Child
    gateway: Child  # the current one: a restart replaces it

    def __init__(self, redis_server: RedisServer, log_dir: Path) -> None:
        self.redis_url = redis_server.url
        self.port = free_port()
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.redis = connect(self.redis_url)

    def start(self) -> None:
        """Start the collector and the gateway; neither is waited for here."""
        self.collector = self.spawn(
            "collector", "-m", "collectors", "--redis-url", self.redis_url, "--node", NODE,
            "--interval", "1", "--no-plugins", "--log-level", "warning")
        self.start_gateway()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self, name: str, *args: str) -> Child:
        child = Child(f"{name}-{len(self.children)}", list(args), self.log_dir)
        self.children.append(child)
        return child

    def start_gateway(self) -> Child:
        """A gateway on this hub's port; its own metrics every second feed the hub panel."""
        self.gateway = self.spawn(
            "gateway", "-m", "gateway", "--redis-url", self.redis_url, "--host", "127.0.0.1",
            "--port", str(self.port), "--gateway-id", GATEWAY_ID, "--metrics-interval", "1",
            "--log-level", "warning")
        return self.gateway

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the current gateway answers /readyz with 200 (Redis reached, serving)."""
        gateway = self.gateway

        async def ready() -> bool:
            if gateway.proc.poll() is not None:
                raise AssertionError(f"{gateway.name} exited: {gateway.log()}")
            return await asyncio.to_thread(http_status, self.port, "/readyz") == 200

        await wait_for(ready, timeout, f"{gateway.name} /readyz 200")

    async def sample_times(self, since: float = 0.0) -> list[float]:
        """The ts of every ``NODE/system`` sample in Redis since ``since``: the truth."""
        if self.collector.proc.poll() is not None:
            raise AssertionError(f"the collector exited: {self.collector.log()}")
        # The stream is searched by arrival time, which trails ts: ask from a bit earlier.
        samples = await history(self.redis, KeyLayout(), NODE, "system",
                                max(0.0, since - 5.0), None, 10_000)
        return [s.ts for s in samples if s.ts >= since]

    async def wait_samples(self, count: int, since: float = 0.0, timeout: float = 20.0) -> None:
        async def enough() -> bool:
            return len(await self.sample_times(since)) >= count

        await wait_for(enough, timeout, f"{count} samples of {NODE}/system since {since}")

    async def aclose(self) -> None:
        for child in self.children:
            child.kill()
        await self.redis.aclose()
        # Captured output: pytest shows it with a failure, so the children's stderr explains it.
        for child in self.children:
            if text := child.log():
                print(f"--- stderr of {child.name} ---\n{text}")


@pytest.fixture
async def real_hub(own_redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[RealHub]:
    """A collector and a gateway started (not yet ready) on a private redis-server."""
    hub = RealHub(own_redis_server, tmp_path)
    try:
        hub.start()
        yield hub
    finally:
        await hub.aclose()


def holes(times: list[float]) -> list[tuple[float, float]]:
    """Steps between consecutive timestamps longer than ``MAX_STEP_S``."""
    return [(a, b) for a, b in zip(times, times[1:], strict=False) if b - a > MAX_STEP_S]


async def check_tile_is_live(page: Page) -> None:
    """The node's tile shows numbers with units and they change; the hub panel shows gw-a."""
    await page.wait_for_function(
        "(sel) => { const v = document.querySelector(sel + ' .v'); "
        "return v && v.textContent !== '–' }", arg=TILE)
    first = await page.text_content(f"{TILE} .tile-body")
    await page.wait_for_function(
        "([sel, first]) => document.querySelector(sel + ' .tile-body').textContent !== first",
        arg=[TILE, first])
    texts: list[str] = await page.eval_on_selector_all(
        f"{TILE} .tile-body .v", "els => els.map(e => e.textContent)")
    assert len(texts) == 4
    assert all(UNIT_RE.match(t) for t in texts), texts
    # The gateway's own samples went through Redis and back, like any node's.
    await page.wait_for_selector(f'[data-gateway="{GATEWAY_ID}"] dt')
    await page.screenshot(path=artifact("dashboard-real-overview.png"))


async def test_real_stack_tile_history_and_resume(real_hub: RealHub, page: Page) -> None:
    """Real redis, collector and gateway: a live tile, history in the node view, and a gateway
    restart resumed from the cursor with no reset, no loss and no gap."""
    hub = real_hub
    await hub.wait_ready()
    # Samples from before the page load can reach the node view only through `history`.
    await hub.wait_samples(3)
    loaded_at = time.time()
    await page.goto(f"{hub.url}/?throttle=0")
    await page.wait_for_function("() => window.__mh && window.__mh.client.state === 'live'")
    await check_tile_is_live(page)

    # -- the node view fills from history ---------------------------------------------------
    await hub.wait_samples(8)
    await page.click(TILE)
    await page.wait_for_selector("#node-view:not([hidden])")
    before_load = await hub.sample_times()
    before_load = [t for t in before_load if t < loaded_at]
    assert len(before_load) >= 3, before_load
    await page.wait_for_function(HOLDS_ALL_JS, arg=[NODE, before_load])
    held_at_open = len(await hub.sample_times())
    await page.wait_for_function(CPU_POINTS_JS, arg=held_at_open)
    sent: list[dict[str, Any]] = await page.evaluate("window.__mh.client.sent")
    assert any(m.get("op") == "history" and m.get("topic") == f"{NODE}/system" for m in sent)
    assert await page.evaluate("window.__mh.client.effectiveThrottleMs") == 0

    # -- a gateway restart ------------------------------------------------------------------
    await page.wait_for_function("() => window.__mh.client.cursor !== null")
    stopped = time.time()
    old = hub.gateway
    old.terminate()
    await page.wait_for_selector('#conn:not([data-state="live"])')
    assert await old.wait_exit(20) == 0, old.log()
    down_at = time.time()
    # The outage must cost samples, so that only a replay from the cursor can fill it.
    await hub.wait_samples(2, since=down_at)
    hub.start_gateway()
    await hub.wait_ready()
    await page.wait_for_function(
        "() => window.__mh.client.state === 'live' && window.__mh.client.stats.connects >= 2",
        timeout=25_000)
    live_again = time.time()
    await page.wait_for_selector(f'#conn[data-state="live"] >> text="Live · {GATEWAY_ID}"')
    # Live updates go on after the replay, in the node view and in the overview's sparkline.
    await page.wait_for_function(
        "([n, t]) => window.__mh.seriesTimes(n, 'system').some((x) => x > t)",
        arg=[NODE, live_again + 1])
    await page.wait_for_function(f"([n, t]) => ({SPARK_TIMES_JS})(n).some((x) => x > t)",
                                 arg=[NODE, live_again + 1])

    stats: dict[str, Any] = await page.evaluate("window.__mh.client.stats")
    assert stats["connects"] >= 2, stats
    assert stats["resumes"] == 1, stats
    assert stats["lost"] == 0, stats
    assert stats["resets"] == 0, stats
    sent = await page.evaluate("window.__mh.client.sent")
    resumed = [m for m in sent if m.get("op") == "subscribe" and "resume" in m]
    assert len(resumed) == 1, resumed
    assert resumed[0]["snapshot"] is False
    assert set(resumed[0]["topics"]) == {"*/system", "*/gateway", "*/alert", f"{NODE}/*"}
    assert await page.is_hidden("#notice"), await page.text_content("#notice")
    assert not await page.evaluate(
        "window.__mh.nodeView.detail.kinds.get('system').series.rows.some(r => r.v === null)")

    # Across the restart the page holds exactly what the collector wrote: nothing is missing.
    node_times: list[float] = await page.evaluate(
        "(n) => window.__mh.seriesTimes(n, 'system')", NODE)
    spark_times: list[float] = await page.evaluate(SPARK_TIMES_JS, NODE)
    start, end = stopped - 5, min(node_times[-1], spark_times[-1])
    truth = [t for t in await hub.sample_times(start) if t <= end]
    missed = [t for t in truth if down_at <= t <= live_again]
    assert len(missed) >= 2, f"the outage cost no samples: {truth}"
    for what, times in (("node view", node_times), ("sparkline", spark_times)):
        window = [t for t in times if start <= t <= end]
        assert len(window) == len(truth), f"{what}: held {window}, Redis has {truth}"
        assert all(abs(a - b) < 1e-3 for a, b in zip(window, truth, strict=True)), what
        # A hole the collector itself made (a tick skipped under load) is not the page's.
        assert holes(window) == holes(truth), f"{what}: gaps across the restart"
    await page.screenshot(path=artifact("dashboard-real-node.png"), full_page=True)
