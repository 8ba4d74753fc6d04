"""Custom sources the collector tests load by name (``tests.collectors.sample_sources:...``)."""

from __future__ import annotations

import asyncio
import threading
import time

from collectors import Reading, source

# Released by tests that park a sync source on it; a daemon thread waits at most this long.
RELEASE = threading.Event()
CALLS: dict[str, int] = {}


def good() -> dict[str, float]:
    CALLS["good"] = CALLS.get("good", 0) + 1
    return {"answer": 42.0, "calls_total": CALLS["good"]}


async def good_async() -> Reading:
    return Reading({"queue_depth": 3}, labels={"region": "eu"})


def failing() -> dict[str, float]:
    raise RuntimeError("the database is down")


async def hanging() -> dict[str, float]:
    await asyncio.sleep(3600)
    return {}


def hanging_sync() -> dict[str, float]:
    RELEASE.wait(30)
    return {"late": 1.0}


def slow_sync() -> dict[str, float]:
    time.sleep(0.3)
    return {"slow": 1.0}


def bad_values() -> dict[str, object]:
    return {"ok": 1, "bad name": 2, "nan": float("nan"), "text": "x", "flag": True}


def not_a_mapping() -> list[int]:
    return [1, 2]


@source(kind="marked", interval=2.5, timeout=0.5)
def marked() -> dict[str, float]:
    return {"m": 1.0}


class Counter:
    """A class source: instantiated once, collect() called each tick, close() at the end."""

    kind = "counter_class"
    interval = 3.0

    def __init__(self) -> None:
        self.n = 0
        self.opened = False
        self.closed = False

    async def open(self) -> None:
        self.opened = True

    def collect(self) -> dict[str, int]:
        self.n += 1
        return {"n_total": self.n}

    def close(self) -> None:
        self.closed = True


class Broken:
    def __init__(self) -> None:
        raise ValueError("no config")


NOT_CALLABLE = 3
