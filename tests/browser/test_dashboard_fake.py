"""The dashboard in headless Chromium against the fake gateway: tiles, node view, resume, reset,
throttle, staleness, alerts, filtering and themes. Every wait is a condition with a deadline."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.conftest import artifact
from tests.browser.fake_gateway import FakeGateway
from tests.browser.fleet import Fleet

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

CPU_POINTS_JS = ("(n) => +(document.querySelector('[data-chart=\"cpu\"] canvas')"
                 "?.dataset.points || 0) >= n")
UNIT_RE = re.compile(r"^(–|.*(%|[KMGTP]?i?B(/s)?|/s).*)$")


async def open_dashboard(page: Page, fake: FakeGateway, suffix: str = "") -> None:
    """Load the page and wait until it holds a live connection."""
    await page.goto(fake.url + suffix)
    await page.wait_for_function("() => window.__mh && window.__mh.client.state === 'live'")


async def wait_until(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll a condition on the Python side (the fake gateway's records) until a deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(0.05)


async def chart_points(page: Page, chart: str) -> int:
    value = await page.get_attribute(f'[data-chart="{chart}"] canvas', "data-points")
    return int(value or 0)


async def test_tiles_appear_and_numbers_change(page: Page, fake_gateway: FakeGateway) -> None:
    """Every node gets a tile with units on its numbers, and the numbers change live."""
    await open_dashboard(page, fake_gateway)
    tile = '[data-node="web-01"]'
    await page.wait_for_function(
        "(sel) => { const v = document.querySelector(sel + ' .v'); "
        "return v && v.textContent !== '–' }", arg=tile)
    first = await page.text_content(f"{tile} .v")
    await page.wait_for_function(
        "([sel, first]) => document.querySelector(sel + ' .v').textContent !== first",
        arg=[tile, first])
    assert await page.locator(".tile").count() == len(fake_gateway.fleet.specs)
    texts = await page.eval_on_selector_all(".tile-body .v", "els => els.map(e => e.textContent)")
    assert texts
    assert all(UNIT_RE.match(t) for t in texts), texts
    # the hub panel shows the gateway kind, grouped by prefix
    await page.wait_for_selector('[data-gateway="gw-fake-1"] dt')
    groups = await page.eval_on_selector_all('[data-gateway="gw-fake-1"] dt',
                                             "els => els.map(e => e.textContent)")
    assert {"connections", "tasks", "cache"} <= set(groups)
    subscribe = fake_gateway.subscribes()[0]
    assert subscribe["topics"] == ["*/system", "*/gateway", "*/alert"]
    assert subscribe["throttle_ms"] == 1000
    assert subscribe["snapshot"] is True
    await page.screenshot(path=artifact("dashboard-overview.png"))


async def test_node_view_fills_from_history(page: Page, fake_gateway: FakeGateway) -> None:
    """Opening a node asks for history, so its charts hold many points at once, and live ones."""
    await open_dashboard(page, fake_gateway)
    await page.click('[data-node="web-01"]')
    await page.wait_for_function(CPU_POINTS_JS, arg=100)
    history = [r for r in fake_gateway.requests if r.get("op") == "history"]
    assert {r["topic"] for r in history} >= {"web-01/system", "web-01/app"}
    assert any(r.get("topics") == ["web-01/*"] for r in fake_gateway.subscribes())
    newest = await page.evaluate("window.__mh.seriesTimes('web-01', 'system').at(-1)")
    await page.wait_for_function(  # live updates go on after the history
        "(t) => window.__mh.seriesTimes('web-01', 'system').at(-1) > t", arg=newest)
    # per-interface network, per-device disk, per-core CPU, filesystems and the custom kind
    for chart in ("net:eth0", "net:eth1", "disk:nvme0n1", "cores", "mem", "load"):
        assert await chart_points(page, chart) > 0, chart
    assert await page.locator("#nv-fs .fs-row").count() == 2
    await page.wait_for_selector('[data-kind="app"] .kv-row')
    await page.screenshot(path=artifact("dashboard-node.png"), full_page=True)
    await page.keyboard.press("Escape")
    await page.wait_for_selector("#overview:not([hidden])")
    await wait_until(lambda: any(r.get("op") == "unsubscribe" for r in fake_gateway.requests),
                     what="unsubscribe of web-01/*")


async def test_history_unavailable_is_said_and_live_data_goes_on(page: Page) -> None:
    """Without history the node view says so, and its charts fill from live updates."""
    async with FakeGateway(Fleet(6), history=False) as fake:
        await open_dashboard(page, fake, "#/node/web-01")
        await page.wait_for_selector("#nv-note:not([hidden])")
        assert "not available" in (await page.text_content("#nv-note") or "")
        await page.wait_for_function(CPU_POINTS_JS, arg=2)


async def test_reconnects_and_resumes_without_gap(page: Page) -> None:
    """After a gateway restart the page resumes from its cursor: no reset, no gap, no loss."""
    fleet = Fleet(12)
    first = FakeGateway(fleet)
    await first.start()
    try:
        await open_dashboard(page, first, "?throttle=0#/node/web-01")
        await page.wait_for_function(CPU_POINTS_JS, arg=100)
        await page.wait_for_function("() => window.__mh.client.cursor !== null")
    finally:
        await first.stop()
    stopped = time.time()
    # The outage lasts long enough to miss samples, and the page keeps trying meanwhile.
    await page.wait_for_selector('#conn[data-state="waiting"]')
    await page.wait_for_function(
        "(t) => window.__mh.client.attempt >= 3 && Date.now() / 1000 > t", arg=stopped + 2.5)
    second = FakeGateway(fleet, port=first.port)
    await second.start()
    try:
        await page.wait_for_function(
            "() => window.__mh.client.state === 'live' && window.__mh.client.stats.connects >= 2",
            timeout=20_000)
        restarted = time.time()
        times_js = "(a) => { const t = window.__mh.seriesTimes(a[0], 'system'); " \
                   "return t.length > 0 && t[t.length - 1] > a[1] }"
        for node in ("web-01", "db-01"):  # the node view's series and an overview sparkline
            await page.wait_for_function(times_js, arg=[node, restarted + 1])
            times: list[float] = await page.evaluate(
                "(n) => window.__mh.seriesTimes(n, 'system')", node)
            recent = [t for t in times if t > stopped - 10]
            gaps = [(a, b) for a, b in zip(recent, recent[1:], strict=False) if b - a > 1.5]
            assert not gaps, f"{node}: gaps across the restart: {gaps}"
        resumed = [s for s in second.subscribes() if "resume" in s]
        assert len(resumed) == 1
        assert resumed[0]["snapshot"] is False
        assert set(resumed[0]["topics"]) == {"*/system", "*/gateway", "*/alert", "web-01/*"}
        assert second.sent_resets == 0
        stats: dict[str, Any] = await page.evaluate("window.__mh.client.stats")
        assert stats["lost"] == 0
        assert stats["resumes"] == 1
    finally:
        await second.stop()


async def test_reset_after_expired_cursor_marks_gap(page: Page) -> None:
    """A cursor past the retention gets `reset`: the page says so, breaks its lines, refetches."""
    fleet = Fleet(6)
    first = FakeGateway(fleet)
    await first.start()
    try:
        await open_dashboard(page, first, "#/node/web-01")
        await page.wait_for_function("() => window.__mh.client.cursor !== null")
    finally:
        await first.stop()
    await page.wait_for_selector('#conn[data-state="waiting"]')
    second = FakeGateway(fleet, port=first.port, retention_s=0.0)
    await second.start()
    try:
        await page.wait_for_selector("#notice:not([hidden])", timeout=20_000)
        assert second.sent_resets == 1
        await wait_until(lambda: any(r.get("op") == "history" and r["topic"] == "web-01/system"
                                     for r in second.requests), what="history after reset")
        has_gap = await page.evaluate(
            "window.__mh.nodeView.detail.kinds.get('system').series.rows.some(r => r.v === null)")
        assert has_gap
        stats: dict[str, Any] = await page.evaluate("window.__mh.client.stats")
        assert stats["resets"] == 1
    finally:
        await second.stop()


async def test_throttle_control_resubscribes(page: Page, fake_gateway: FakeGateway) -> None:
    """Choosing an update rate re-subscribes every held pattern with that throttle_ms."""
    await open_dashboard(page, fake_gateway)
    await page.select_option("#throttle", "5000")
    await wait_until(lambda: any(s.get("throttle_ms") == 5000 for s in fake_gateway.subscribes()),
                     what="subscribe with throttle_ms 5000")
    again = next(s for s in fake_gateway.subscribes() if s.get("throttle_ms") == 5000)
    assert again["snapshot"] is False
    assert set(again["topics"]) == {"*/system", "*/gateway", "*/alert"}
    await page.wait_for_function(
        "() => document.querySelector('#client-stats').textContent.includes('5 s per topic')")
    assert await page.evaluate("localStorage.getItem('mh.throttle')") == "5000"


async def test_stale_marker_when_a_node_stops(page: Page, fake_gateway: FakeGateway) -> None:
    """A node whose samples stop is marked stale while the others stay live."""
    await open_dashboard(page, fake_gateway)
    await page.wait_for_selector('[data-node="db-01"][data-level]')
    fake_gateway.stop_node("db-01")
    await page.wait_for_selector('[data-node="db-01"][data-level="stale"]', timeout=15_000)
    assert await page.locator('.tile[data-level="stale"]').count() == 1
    await page.wait_for_function(
        "() => document.querySelector('#summary').textContent.includes('1 stale')")


async def test_alerts_panel_firing_and_resolved(page: Page, fake_gateway: FakeGateway) -> None:
    """The alerts panel is honestly empty, then lists a firing alert, then a resolved one."""
    await open_dashboard(page, fake_gateway)
    await page.wait_for_selector("#alerts-empty")
    fake_gateway.send_alert("cpu_high", "web-01", "firing", value=0.97,
                            message="CPU above 95% for 1 min")
    await page.wait_for_selector('.alert[data-state="firing"]')
    assert "cpu_high" in (await page.text_content(".alerts.firing") or "")
    await page.wait_for_function(
        "() => document.querySelector('#summary').textContent.includes('1 firing')")
    fake_gateway.send_alert("cpu_high", "web-01", "resolved", value=0.41)
    await page.wait_for_selector('.alerts.resolved .alert[data-state="resolved"]')
    assert await page.locator('.alert[data-state="firing"]').count() == 0


async def test_filter_and_sort(page: Page, fake_gateway: FakeGateway) -> None:
    """A glob filters tiles by name; sorting by name orders them naturally."""
    await open_dashboard(page, fake_gateway)
    await page.wait_for_selector('[data-node="worker-02"]')
    visible_js = "[...document.querySelectorAll('.tile')].filter(t => !t.hidden)" \
                 ".map(t => t.dataset.node)"
    await page.fill("#filter", "db-*")
    await page.wait_for_function(f"() => {visible_js}.every(n => n.startsWith('db-'))")
    assert sorted(await page.evaluate(visible_js)) == ["db-01", "db-02"]
    await page.fill("#filter", "")
    await page.select_option("#sort", "name")
    # The sort is applied on the next animation frame: wait for the order itself (a timeout
    # fails the test), then check the whole order, not only its head.
    await page.wait_for_function(
        f"() => {{ const n = {visible_js}; return n.length === 12 && "
        f"n.slice(0, 3).join() === 'api-01,api-02,cache-01'; }}"
    )
    names: list[str] = await page.evaluate(visible_js)
    assert names == sorted(names)


CONTRAST_JS = """() => {
  const css = getComputedStyle(document.documentElement);
  const lum = (name) => {
    const hex = css.getPropertyValue(name).trim().slice(1);
    const [r, g, b] = [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255)
      .map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4));
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05); };
  const pairs = [['--fg', '--bg'], ['--fg', '--panel'], ['--muted', '--panel'],
    ['--muted', '--bg'], ['--ok', '--panel'], ['--warn', '--panel'], ['--crit', '--panel'],
    ['--warn', '--warn-bg'], ['--crit', '--crit-bg'], ['--accent', '--panel']];
  return Object.fromEntries(pairs.map(([a, b]) => [`${a} on ${b}`, ratio(a, b)]));
}"""


async def test_themes_follow_system_with_readable_contrast(
    page: Page, fake_gateway: FakeGateway
) -> None:
    """Light and dark follow prefers-color-scheme; text colours reach 4.5:1 in both."""
    await open_dashboard(page, fake_gateway)
    backgrounds = []
    for scheme in ("dark", "light"):
        await page.emulate_media(color_scheme=scheme)
        backgrounds.append(await page.evaluate("getComputedStyle(document.body).backgroundColor"))
        ratios: dict[str, float] = await page.evaluate(CONTRAST_JS)
        low = {pair: round(r, 2) for pair, r in ratios.items() if r < 4.5}
        assert not low, f"{scheme}: contrast below 4.5:1: {low}"
    assert backgrounds[0] != backgrounds[1]
    await page.screenshot(path=artifact("dashboard-light.png"))
