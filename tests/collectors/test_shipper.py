"""Tests of the publishing task (collectors/shipper.py) against a fake publisher."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from collectors.buffer import SampleBuffer, SpillFile
from collectors.shipper import Backoff, Shipper
from hub.codec import SampleCodec
from hub.tasks import TaskManager
from tests.collectors.fakes import FakePublisher, make_sample, wait_for


def _shipper(publisher: FakePublisher, capacity: int = 100, **kwargs: object) -> Shipper:
    return Shipper(SampleBuffer(capacity), publisher,
                   backoff=Backoff(0.01, 0.05, rng=random.Random(1)), **kwargs)  # type: ignore[arg-type]


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    """Delays double from base to cap, each between half and all of its nominal value."""
    backoff = Backoff(0.1, 1.0, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(8)]
    nominal = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    for delay, cap in zip(delays, nominal, strict=True):
        assert cap / 2 <= delay <= cap
    backoff.reset()
    assert backoff.next_delay() <= 0.1


async def test_samples_are_published_in_order_as_they_come() -> None:
    """Samples appended and notified go out in order, in batches."""
    publisher = FakePublisher()
    shipper = _shipper(publisher)
    async with TaskManager() as tasks:
        tasks.create_task(shipper.run(), name="shipper")
        for seq in range(1, 21):
            shipper.buffer.append(make_sample(seq))
            shipper.notify()
            if seq % 5 == 0:
                await asyncio.sleep(0)
        await wait_for(lambda: len(publisher.published) == 20, what="20 published")
    assert [s.seq for s in publisher.published] == list(range(1, 21))
    assert shipper.stats.published_total == 20
    assert shipper.stats.redis_up
    assert shipper.stats.last_publish_ts > 0
    assert not shipper.buffer


async def test_an_outage_buffers_and_everything_arrives_in_order_after_it() -> None:
    """While Redis is away nothing is lost; once back, every sample arrives once, in order."""
    publisher = FakePublisher()
    shipper = _shipper(publisher)
    async with TaskManager() as tasks:
        tasks.create_task(shipper.run(), name="shipper")
        shipper.buffer.append(make_sample(1))
        shipper.notify()
        await wait_for(lambda: len(publisher.published) == 1)
        publisher.up = False
        for seq in range(2, 30):
            shipper.buffer.append(make_sample(seq))
            shipper.notify()
            await asyncio.sleep(0.002)
        await wait_for(lambda: shipper.stats.publish_errors_total >= 2, what="retries")
        assert not shipper.stats.redis_up
        assert len(shipper.buffer) == 28
        publisher.up = True
        await wait_for(lambda: len(publisher.published) == 29, what="catch-up")
    assert [s.seq for s in publisher.published] == list(range(1, 30))
    assert shipper.stats.redis_up


async def test_a_hung_publish_times_out_and_is_retried() -> None:
    """A publish that never answers counts as an outage after the timeout, then retries."""
    publisher = FakePublisher()
    publisher.hang = True
    shipper = _shipper(publisher, publish_timeout=0.05)
    async with TaskManager() as tasks:
        tasks.create_task(shipper.run(), name="shipper")
        shipper.buffer.append(make_sample(1))
        shipper.notify()
        await wait_for(lambda: shipper.stats.publish_errors_total >= 1)
        publisher.hang = False
        await wait_for(lambda: len(publisher.published) == 1)


async def test_samples_the_codec_refuses_are_counted_not_retried_forever() -> None:
    """A sample the publisher cannot encode is counted as rejected; the rest go out."""
    publisher = FakePublisher()
    publisher.refuse = lambda sample: sample.seq == 2
    shipper = _shipper(publisher)
    for seq in (1, 2, 3):
        shipper.buffer.append(make_sample(seq))
    assert await shipper.publish_once()
    assert [s.seq for s in publisher.published] == [1, 3]
    assert shipper.stats.rejected_total == 1
    assert not shipper.buffer


async def test_flush_gives_up_after_its_timeout_when_redis_is_away() -> None:
    """flush() returns False within its timeout if Redis stays away, True once all is sent."""
    publisher = FakePublisher()
    shipper = _shipper(publisher)
    shipper.buffer.extend(make_sample(seq) for seq in range(1, 4))
    publisher.up = False
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await shipper.flush(0.3)
    assert loop.time() - started < 1.0
    publisher.up = True
    assert await shipper.flush(1.0)
    assert [s.seq for s in publisher.published] == [1, 2, 3]


async def test_outage_samples_are_spilled_and_the_file_cleared_after(tmp_path: Path) -> None:
    """During an outage every sample reaches the spill file; after catch-up it is emptied."""
    publisher = FakePublisher()
    spill = SpillFile(tmp_path / "spill.bin")
    shipper = _shipper(publisher, spill=spill)
    codec = SampleCodec()
    publisher.up = False
    async with TaskManager() as tasks:
        tasks.create_task(shipper.run(), name="shipper")
        for seq in range(1, 11):
            shipper.buffer.append(make_sample(seq))
            shipper.notify()
            await asyncio.sleep(0.003)

        def spilled() -> list[int]:
            return [s.seq for s in SpillFile(spill.path).read(codec)[0]]

        await wait_for(lambda: spilled() == list(range(1, 11)), what="all spilled")
        publisher.up = True
        await wait_for(lambda: len(publisher.published) == 10)
        await wait_for(lambda: spilled() == [], what="spill cleared")


async def test_restored_samples_go_first_and_unpublished_ones_are_saved(tmp_path: Path) -> None:
    """Samples restored from the spill file publish before new ones; at exit the rest is saved."""
    publisher = FakePublisher()
    spill = SpillFile(tmp_path / "spill.bin")
    shipper = _shipper(publisher, spill=spill)
    shipper.restore([make_sample(1), make_sample(2)])
    shipper.buffer.append(make_sample(3))
    publisher.up = False
    assert not await shipper.flush(0.05)
    assert await shipper.save_unpublished() == 3
    read, _ = SpillFile(spill.path).read(SampleCodec())
    assert [s.seq for s in read] == [1, 2, 3]


@pytest.mark.parametrize("capacity", [5])
async def test_a_full_buffer_during_an_outage_drops_the_oldest(capacity: int) -> None:
    """Past its capacity the buffer drops the oldest; the newest arrive after the outage."""
    publisher = FakePublisher()
    publisher.up = False
    shipper = _shipper(publisher, capacity=capacity)
    shipper.buffer.extend(make_sample(seq) for seq in range(1, 9))
    publisher.up = True
    assert await shipper.flush(1.0)
    assert [s.seq for s in publisher.published] == [4, 5, 6, 7, 8]
    assert shipper.buffer.dropped_total == 3
