"""The collector's entry point in process: --help, --print-config and bad settings."""

from __future__ import annotations

import pytest

from collectors.main import main


def test_help_lists_the_options_and_returns_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints every option and returns 0 (the lead's CLI passes it through)."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--redis-url", "--interval", "--spill-file", "--statsd", "--scrape"):
        assert flag in out


def test_print_config_shows_values_and_origins_without_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--print-config prints each setting with its origin, the password masked, and exits 0."""
    monkeypatch.setenv("METRICS_HUB_INTERVAL", "2.5")
    assert main(["--print-config", "--redis-url", "redis://u:hunter2@h:1/0"]) == 0
    out = capsys.readouterr().out
    assert "redis_url = redis://u:***@h:1/0  # flag" in out
    assert "interval = 2.5  # env METRICS_HUB_INTERVAL" in out
    assert "hunter2" not in out


def test_a_bad_value_returns_two_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad value returns 2 and prints one line naming the option and the fix."""
    assert main(["--slow-interval", "0.5", "--interval", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["metrics-hub collector: --slow-interval 0.5 is shorter than --interval 1: "
                   "make it at least as long"]
