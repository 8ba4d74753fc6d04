"""Browser test fixtures: Debian's headless Chromium driven by Playwright, and a fake gateway.

Chromium is /usr/bin/chromium (``apt-get install chromium``), never a browser Playwright
downloads. Without it or without the ``playwright`` package the tests skip with the reason,
except under CI=true, where they fail: CI must run them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.fake_gateway import FakeGateway
from tests.browser.fleet import Fleet
from tests.missing import missing as skip_or_fail

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives /usr/bin/chromium with Playwright (fails under CI=true "
        "when either is missing, else skips)")


def require_browser() -> None:
    """Skip (or, under CI=true, fail) unless Chromium and Playwright are both installed."""
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install playwright; never "
                       "`playwright install`: the tests use Debian's Chromium)")
    if not missing:
        return
    skip_or_fail("browser tests need " + " and ".join(missing))


@pytest.fixture
async def browser_context(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A headless Chromium with a fresh profile (--user-data-dir) in the test's tmp_path."""
    require_browser()
    from playwright.async_api import ViewportSize, async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport=ViewportSize(width=1440, height=900),
            color_scheme="dark",
        )
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
async def page(browser_context: BrowserContext) -> AsyncIterator[Page]:
    """The context's page; the test fails if the dashboard threw an uncaught error."""
    page = browser_context.pages[0] if browser_context.pages else await browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # A refused WebSocket is logged by Chromium itself while a test has the gateway down.
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
            and not msg.text.startswith("WebSocket connection to") else None)
    page.set_default_timeout(10_000)
    yield page
    assert not errors, f"the page logged errors: {errors}"


@pytest.fixture
async def fake_gateway() -> AsyncIterator[FakeGateway]:
    """A fake gateway with 12 simulated nodes at a 1 s interval, on a free port."""
    async with FakeGateway(Fleet(12)) as fake:
        yield fake


def artifact(name: str) -> Path:
    """A path under test-artifacts/ (created) for screenshots the CI keeps."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name
