"""The dashboard benchmark: frame times in headless Chromium with 200 simulated nodes sending a
system sample every second, against the same page with the feed paused (idle frames).

Frame times are the intervals between requestAnimationFrame callbacks in the page (60 Hz: a
frame every 16.7 ms); a frame over 1.5x that (25 ms) counts as dropped. Feed-on and feed-off
windows alternate in one run, so a noisy neighbour on the machine slows both alike, and the
``*_ratio`` figures (feed on over feed off) say what the dashboard itself adds. Needs
/usr/bin/chromium and the playwright package (tests/browser/conftest.py).

    python -m bench.dashboard [--quick]
    python -m bench.dashboard --screenshot docs/screenshot.png   # regenerate the docs image
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.browser.fake_gateway import FakeGateway
from tests.browser.fleet import Fleet

if TYPE_CHECKING:
    from playwright.async_api import Page

NODES = 200
FRAME_MS = 1000 / 60
DROPPED_MS = 1.5 * FRAME_MS

# Records rAF timestamps for `ms` milliseconds, with what the page did meanwhile.
RECORD_JS = """(ms) => new Promise((resolve) => {
  const mh = window.__mh;
  const at0 = { frames: mh.perf.frames, work: mh.perf.workTotalMs, msgs: mh.perf.messages,
                handle: mh.client.stats.handleMs };
  mh.perf.workMaxMs = 0;
  let longTasks = 0;
  const obs = new PerformanceObserver((list) => { longTasks += list.getEntries().length; });
  try { obs.observe({ entryTypes: ['longtask'] }); } catch (_) { /* not supported */ }
  const ts = [];
  const step = (t) => {
    ts.push(t);
    if (t - ts[0] < ms) { requestAnimationFrame(step); return; }
    obs.disconnect();
    resolve({ ts, longTasks,
      appFrames: mh.perf.frames - at0.frames, workMs: mh.perf.workTotalMs - at0.work,
      workMaxMs: mh.perf.workMaxMs, messages: mh.perf.messages - at0.msgs,
      handleMs: mh.client.stats.handleMs - at0.handle });
  };
  requestAnimationFrame(step);
})"""


class Window:
    """What one or more recording windows measured, merged."""

    def __init__(self) -> None:
        self.intervals: list[float] = []
        self.seconds = 0.0
        self.long_tasks = 0
        self.app_frames = 0
        self.work_ms = 0.0
        self.work_max_ms = 0.0
        self.messages = 0
        self.handle_ms = 0.0

    def add(self, rec: dict[str, Any]) -> None:
        ts: list[float] = rec["ts"]
        self.intervals.extend(b - a for a, b in zip(ts, ts[1:], strict=False))
        self.seconds += (ts[-1] - ts[0]) / 1000
        self.long_tasks += rec["longTasks"]
        self.app_frames += rec["appFrames"]
        self.work_ms += rec["workMs"]
        self.work_max_ms = max(self.work_max_ms, rec["workMaxMs"])
        self.messages += rec["messages"]
        self.handle_ms += rec["handleMs"]

    def figures(self, prefix: str) -> dict[str, float]:
        data = sorted(self.intervals)
        if not data:
            raise RuntimeError(f"{prefix}: no frames were recorded")

        def pct(p: float) -> float:
            return data[min(len(data) - 1, round(p / 100 * (len(data) - 1)))]

        return {
            f"{prefix}_frames": float(len(data)),
            f"{prefix}_frame_p50_ms": pct(50),
            f"{prefix}_frame_p95_ms": pct(95),
            f"{prefix}_frame_p99_ms": pct(99),
            f"{prefix}_frame_max_ms": data[-1],
            f"{prefix}_frame_mean_ms": statistics.fmean(data),
            f"{prefix}_dropped_frames": float(sum(1 for d in data if d > DROPPED_MS)),
            f"{prefix}_long_tasks": float(self.long_tasks),
            f"{prefix}_messages_per_s": self.messages / self.seconds if self.seconds else 0.0,
            f"{prefix}_handle_ms_per_s": self.handle_ms / self.seconds if self.seconds else 0.0,
            f"{prefix}_render_ms_per_frame": self.work_ms / self.app_frames
            if self.app_frames else 0.0,
            f"{prefix}_render_max_ms": self.work_max_ms,
        }


async def _messages(page: Page) -> int:
    count: int = await page.evaluate("window.__mh.perf.messages")
    return count


async def _until_quiet(page: Page, quiet_s: float = 0.3, timeout: float = 10.0) -> None:
    """Wait until no message has reached the page for ``quiet_s`` (the feed really stopped)."""
    deadline = time.monotonic() + timeout
    last = await _messages(page)
    since = time.monotonic()
    while time.monotonic() - since < quiet_s:
        if time.monotonic() > deadline:
            raise RuntimeError("the page kept receiving messages with the feed paused")
        await asyncio.sleep(0.05)
        now = await _messages(page)
        if now != last:
            last, since = now, time.monotonic()


async def _until_flowing(page: Page, timeout: float = 10.0) -> None:
    """Wait until messages arrive again."""
    start = await _messages(page)
    await page.wait_for_function("(n) => window.__mh.perf.messages > n + 50", arg=start,
                                 timeout=timeout * 1000)


def _require_browser() -> None:
    if not CHROMIUM.is_file() or importlib.util.find_spec("playwright") is None:
        raise RuntimeError(f"needs {CHROMIUM} (apt-get install chromium) and the playwright "
                           "package (pip install playwright)")


async def _run(quick: bool) -> dict[str, float]:
    _require_browser()
    from playwright.async_api import ViewportSize, async_playwright

    cycles, active_s, idle_s = (1, 3.0, 2.5) if quick else (3, 4.0, 3.5)
    fleet = Fleet(NODES)
    async with FakeGateway(fleet) as fake, async_playwright() as playwright:
        with tempfile.TemporaryDirectory(prefix="mh-bench-chromium-") as profile:
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS),
                viewport=ViewportSize(width=1440, height=900), color_scheme="dark")
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                await page.goto(fake.url + "?throttle=0")
                await page.wait_for_function(
                    f"() => window.__mh && window.__mh.fleet.nodes.size === {NODES}",
                    timeout=20_000)
                await _until_flowing(page)
                await page.wait_for_timeout(2000)  # warm-up: JIT, first layout of every tile
                active, idle = Window(), Window()
                for _ in range(cycles):
                    fake.paused = False
                    await _until_flowing(page)
                    active.add(await page.evaluate(RECORD_JS, active_s * 1000))
                    fake.paused = True
                    await _until_quiet(page)
                    idle.add(await page.evaluate(RECORD_JS, idle_s * 1000))
                fake.paused = False
                await _until_flowing(page)
                # The node view on top: live charts of one node while 199 others stream in.
                await page.evaluate("location.hash = '#/node/web-001'")
                await page.wait_for_function(
                    "() => +(document.querySelector('[data-chart=\"cpu\"] canvas')"
                    "?.dataset.points || 0) >= 100", timeout=20_000)
                await page.wait_for_timeout(1500)  # every chart built and drawn once
                node_view = Window()
                node_view.add(await page.evaluate(RECORD_JS, active_s * 1000))
            finally:
                await context.close()
    figures = {**active.figures("feed"), **idle.figures("idle"),
               **node_view.figures("node_view")}
    for stat in ("p50", "p95", "p99", "max"):
        figures[f"frame_{stat}_ratio"] = (
            figures[f"feed_frame_{stat}_ms"] / figures[f"idle_frame_{stat}_ms"])
    figures["nodes"] = float(NODES)
    _report(figures)
    return figures


def _report(f: dict[str, float]) -> None:
    print(f"dashboard: {NODES} nodes, 1 s interval, every sample (throttle 0); frame times "
          f"in ms; dropped = over {DROPPED_MS:.1f} ms")
    print(f"{'':12}{'frames':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}{'dropped':>9}"
          f"{'msgs/s':>8}{'parse+apply':>13}{'render/frame':>14}")
    for key, name in (("feed", "feed on"), ("idle", "feed off"), ("node_view", "node view")):
        print(f"{name:12}{f[f'{key}_frames']:8.0f}{f[f'{key}_frame_p50_ms']:8.1f}"
              f"{f[f'{key}_frame_p95_ms']:8.1f}{f[f'{key}_frame_p99_ms']:8.1f}"
              f"{f[f'{key}_frame_max_ms']:8.1f}{f[f'{key}_dropped_frames']:9.0f}"
              f"{f[f'{key}_messages_per_s']:8.0f}{f[f'{key}_handle_ms_per_s']:9.2f} ms/s"
              f"{f[f'{key}_render_ms_per_frame']:11.2f} ms")
    print(f"feed on / feed off: p95 {f['frame_p95_ratio']:.2f}x, p99 {f['frame_p99_ratio']:.2f}x")
    print("longest render: " + ", ".join(
        f"{name} {f[f'{key}_render_max_ms']:.1f} ms" for key, name in
        (("feed", "feed on"), ("idle", "feed off"), ("node_view", "node view")))
        + "; long tasks (>50 ms): " + ", ".join(
        f"{name} {f[f'{key}_long_tasks']:.0f}" for key, name in
        (("feed", "feed on"), ("idle", "feed off"), ("node_view", "node view"))))


def main(quick: bool = False) -> dict[str, float]:
    """Measure and print the dashboard's frame times; returns the figures.

    Without Chromium or Playwright it prints why and returns no figures, except under
    CI=true, where that is a failure.
    """
    try:
        _require_browser()
    except RuntimeError as exc:
        if os.environ.get("CI", "").lower() == "true":
            raise
        print(f"dashboard: skipped: {exc}")
        return {}
    return asyncio.run(_run(quick))


async def screenshot(path: Path, nodes: int = 36, warm_s: float = 125.0) -> None:
    """Save the overview as docs/screenshot.png shows it: a small fleet after two minutes
    (full sparklines), one node stopped (stale), dark theme, 1440x900."""
    _require_browser()
    from playwright.async_api import ViewportSize, async_playwright

    fleet = Fleet(nodes)
    async with FakeGateway(fleet, gateway_id="gw-1") as fake, async_playwright() as playwright:
        with tempfile.TemporaryDirectory(prefix="mh-shot-chromium-") as profile:
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS),
                viewport=ViewportSize(width=1440, height=900), color_scheme="dark")
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                await page.goto(fake.url)
                await page.wait_for_function(
                    f"() => window.__mh && window.__mh.fleet.nodes.size === {nodes}")
                await asyncio.sleep(warm_s - 20)
                fake.stop_node(fleet.specs[min(9, nodes - 1)].name)
                await asyncio.sleep(20)
                await page.screenshot(path=str(path))
            finally:
                await context.close()
    print(f"saved {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, noisier figures")
    parser.add_argument("--screenshot", type=Path, metavar="PNG",
                        help="instead of measuring, save the overview (docs/screenshot.png)")
    args = parser.parse_args()
    if args.screenshot is not None:
        asyncio.run(screenshot(args.screenshot))
    else:
        main(args.quick)
