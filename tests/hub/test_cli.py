"""The metrics-hub console script: its subcommands and its answers to bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hub import cli


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """`metrics-hub --help` names each subcommand and exits 0."""
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown subcommand exits 2 with the usage on stderr."""
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_console_script_runs() -> None:
    """The installed entry point runs as a real process."""
    out = subprocess.run(
        [sys.executable, "-m", "hub.cli", "--version"], capture_output=True, text=True,
        check=True, timeout=60,
    )
    assert out.stdout.startswith("metrics-hub ")
