"""Tests of the outage buffer and the spill file (collectors/buffer.py)."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from collectors.buffer import SPILL_MAGIC, SampleBuffer, SpillFile, encode_records
from hub.codec import SampleCodec
from tests.collectors.fakes import make_sample


def test_buffer_keeps_order_and_drops_the_oldest_when_full() -> None:
    """A full buffer drops (and counts) its oldest samples; the rest stay in order."""
    buffer = SampleBuffer(3)
    for seq in range(1, 6):
        buffer.append(make_sample(seq))
    assert [s.seq for s in buffer.samples()] == [3, 4, 5]
    assert buffer.dropped_total == 2
    assert buffer.appended_total == 5


def test_commit_removes_what_was_published_even_if_drops_happened_meanwhile() -> None:
    """Committing through an index removes exactly the samples up to it, dropped or not."""
    buffer = SampleBuffer(3)
    for seq in range(1, 4):
        buffer.append(make_sample(seq))
    batch = buffer.peek(2)
    assert [s.seq for _, s in batch] == [1, 2]
    buffer.append(make_sample(4))  # drops seq 1 while the batch is in flight
    assert buffer.commit(batch[-1][0]) == 1  # only seq 2 was still there
    assert [s.seq for s in buffer.samples()] == [3, 4]
    assert buffer.committed_total == 1


def test_since_and_resize() -> None:
    """since() lists samples after an index; a smaller capacity drops the oldest."""
    buffer = SampleBuffer(10)
    buffer.extend(make_sample(seq) for seq in range(1, 6))
    assert [s.seq for _, s in buffer.since(2)] == [4, 5]
    assert buffer.resize(2) == 3
    assert [s.seq for s in buffer.samples()] == [4, 5]
    with pytest.raises(ValueError, match="capacity"):
        SampleBuffer(0)


def test_spill_file_round_trips_samples_in_order(tmp_path: Path) -> None:
    """Samples appended and rewritten to the spill file read back equal and in order."""
    codec = SampleCodec()
    spill = SpillFile(tmp_path / "spill.bin")
    samples = [make_sample(seq) for seq in range(1, 6)]
    spill.rewrite(encode_records(codec, samples[:2]), 2)
    spill.append(encode_records(codec, samples[2:]), 3)
    spill.close()
    read, bad = SpillFile(tmp_path / "spill.bin").read(codec)
    assert read == samples
    assert bad == 0
    spill.clear()
    assert SpillFile(tmp_path / "spill.bin").read(codec) == ([], 0)


def test_a_torn_last_record_is_ignored(tmp_path: Path) -> None:
    """A record cut short or with a wrong CRC ends the read; what precedes it is kept."""
    codec = SampleCodec()
    path = tmp_path / "spill.bin"
    records = encode_records(codec, [make_sample(1), make_sample(2)])
    path.write_bytes(SPILL_MAGIC + records[:-3])
    read, bad = SpillFile(path).read(codec)
    assert [s.seq for s in read] == [1]
    assert bad == 1
    payload = codec.encode(make_sample(3))
    corrupt = records + len(payload).to_bytes(4, "little") + \
        (zlib.crc32(payload) ^ 1).to_bytes(4, "little") + payload
    path.write_bytes(SPILL_MAGIC + corrupt)
    read, bad = SpillFile(path).read(codec)
    assert [s.seq for s in read] == [1, 2]
    assert bad == 1


def test_a_foreign_file_is_not_read(tmp_path: Path) -> None:
    """A file without the spill header is ignored, not decoded."""
    path = tmp_path / "spill.bin"
    path.write_bytes(b"hello world")
    assert SpillFile(path).read(SampleCodec()) == ([], 1)


def test_appending_to_a_new_file_writes_the_header(tmp_path: Path) -> None:
    """The first append to an empty file starts it with the magic header."""
    codec = SampleCodec()
    spill = SpillFile(tmp_path / "sub" / "spill.bin")
    spill.check_writable()
    spill.append(encode_records(codec, [make_sample(1)]), 1)
    spill.close()
    assert (tmp_path / "sub" / "spill.bin").read_bytes().startswith(SPILL_MAGIC)
