"""The one rule for a test whose tool is not installed: skip with the reason on a developer's
machine, fail under CI=true, where .ci/run installs everything and a skip would prove nothing."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    """Skip the calling test with ``reason``, or fail it when CI=true."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI=true forbids skipping")
    pytest.skip(reason)
