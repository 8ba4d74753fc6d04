"""Test doubles shared by the collector tests: a publisher whose Redis can go away, samples."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from hub.errors import BackendUnavailable
from hub.sample import Sample


def make_sample(seq: int, *, kind: str = "system", node: str = "n1", ts: float = 1.0,
                values: dict[str, float] | None = None) -> Sample:
    return Sample.build(node, kind, values or {"x": float(seq)}, seq=seq, epoch=7,
                        ts=ts + seq)


class FakePublisher:
    """Publishes into a list; ``up = False`` makes it raise BackendUnavailable, ``hang`` makes
    it never answer, ``refuse`` marks samples as unencodable (id "")."""

    def __init__(self) -> None:
        self.up = True
        self.hang = False
        self.refuse: Callable[[Sample], bool] = lambda sample: False
        self.published: list[Sample] = []
        self.calls = 0
        self.changed = asyncio.Event()

    async def publish_batch(self, samples: Sequence[Sample]) -> list[str]:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        if not self.up:
            raise BackendUnavailable("Redis at fake is unavailable: connection refused")
        ids = []
        for sample in samples:
            if self.refuse(sample):
                ids.append("")
                continue
            self.published.append(sample)
            ids.append(f"{len(self.published)}-0")
        self.changed.set()
        return ids


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0,
                   what: str = "condition") -> None:
    """Poll ``predicate`` until it holds, or fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)

