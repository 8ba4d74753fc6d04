"""The outage buffer: samples waiting for Redis, in order, bounded, optionally spilled to disk.

``SampleBuffer`` is pure: a bounded FIFO in which every sample gets an increasing index, so the
publisher can commit "everything up to index N" after a round trip even if the oldest samples
were dropped meanwhile. ``SpillFile`` keeps the same samples in a local file (length-prefixed,
CRC-checked codec records) so a collector restarted during an outage publishes them later.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from hub.codec import SampleCodec
from hub.errors import CodecError
from hub.sample import Sample

log = logging.getLogger(__name__)

SPILL_MAGIC = b"MHSPILL1\n"
_RECORD_HEAD = struct.Struct("<II")  # payload length, crc32 of the payload
_MAX_RECORD = 1 << 20


class SampleBuffer:
    """A bounded FIFO of samples; when full, the oldest is dropped and counted."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("buffer capacity must be at least 1")
        self.capacity = capacity
        self.dropped_total = 0
        self.appended_total = 0
        self.committed_total = 0
        self._items: deque[tuple[int, Sample]] = deque()
        self._next_index = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    @property
    def last_index(self) -> int:
        """The index of the newest sample ever appended (-1 before the first)."""
        return self._next_index - 1

    def append(self, sample: Sample) -> int:
        """Add ``sample`` at the end; returns how many old samples were dropped to fit it."""
        self._items.append((self._next_index, sample))
        self._next_index += 1
        self.appended_total += 1
        return self._trim()

    def extend(self, samples: Iterable[Sample]) -> int:
        """Append several samples in order; returns how many were dropped."""
        dropped = 0
        for sample in samples:
            dropped += self.append(sample)
        return dropped

    def _trim(self) -> int:
        dropped = 0
        while len(self._items) > self.capacity:
            self._items.popleft()
            dropped += 1
        self.dropped_total += dropped
        return dropped

    def resize(self, capacity: int) -> int:
        """Change the capacity (a reload); returns how many samples a smaller one dropped."""
        if capacity < 1:
            raise ValueError("buffer capacity must be at least 1")
        self.capacity = capacity
        return self._trim()

    def peek(self, limit: int) -> list[tuple[int, Sample]]:
        """Up to ``limit`` of the oldest samples with their indexes, left in the buffer."""
        items = self._items
        if limit >= len(items):
            return list(items)
        return [items[i] for i in range(limit)]

    def since(self, index: int) -> list[tuple[int, Sample]]:
        """The samples whose index is greater than ``index``, oldest first."""
        return [item for item in self._items if item[0] > index]

    def commit(self, through: int) -> int:
        """Remove every sample with an index up to ``through`` (published); returns how many."""
        removed = 0
        items = self._items
        while items and items[0][0] <= through:
            items.popleft()
            removed += 1
        self.committed_total += removed
        return removed

    def samples(self) -> list[Sample]:
        """Every buffered sample, oldest first."""
        return [sample for _, sample in self._items]


# -- the spill file -------------------------------------------------------------------------
def encode_records(codec: SampleCodec, samples: Iterable[Sample]) -> bytes:
    """The spill-file records of ``samples`` (call on the event loop: the codec is not shared)."""
    chunks = []
    for sample in samples:
        payload = codec.encode(sample)
        chunks.append(_RECORD_HEAD.pack(len(payload), zlib.crc32(payload)))
        chunks.append(payload)
    return b"".join(chunks)


class SpillFile:
    """A local file of samples that survives a restart; its methods block (run them off-loop).

    Writes append whole records and flush them to the OS, so a crash of the collector loses
    nothing written; a torn last record (power loss) is detected by its CRC and ignored.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = 0  # records in the file, as far as this process wrote or read them
        self._handle: io.BufferedWriter | None = None

    def check_writable(self) -> None:
        """Raise OSError now (at start) if the file cannot be created or appended to."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab"):
            pass

    def read(self, codec: SampleCodec) -> tuple[list[Sample], int]:
        """The samples in the file, oldest first, and how many records were unreadable."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], 0
        if not data:
            return [], 0
        if not data.startswith(SPILL_MAGIC):
            log.warning("spill file %s is not a metrics-hub spill file; ignoring it", self.path)
            return [], 1
        samples: list[Sample] = []
        bad = 0
        pos = len(SPILL_MAGIC)
        while pos < len(data):
            if pos + _RECORD_HEAD.size > len(data):
                bad += 1
                break
            length, crc = _RECORD_HEAD.unpack_from(data, pos)
            start = pos + _RECORD_HEAD.size
            payload = data[start:start + length]
            if length > _MAX_RECORD or len(payload) != length or zlib.crc32(payload) != crc:
                bad += 1  # a torn or corrupt record: nothing after it can be trusted
                break
            pos = start + length
            try:
                samples.append(codec.decode(payload))
            except CodecError:
                bad += 1
        self.records = len(samples)
        return samples, bad

    def rewrite(self, records: bytes, count: int) -> None:
        """Replace the file's content with ``records`` atomically (write, fsync, rename)."""
        self._close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as handle:
            handle.write(SPILL_MAGIC + records)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self.records = count

    def append(self, records: bytes, count: int) -> None:
        """Append ``records`` (``count`` of them) and flush them to the OS."""
        handle = self._open()
        handle.write(records)
        handle.flush()
        self.records += count

    def clear(self) -> None:
        """Empty the file: everything in it was published."""
        self._close()
        with self.path.open("wb") as handle:
            handle.flush()
        self.records = 0

    def close(self) -> None:
        self._close()

    def _open(self) -> io.BufferedWriter:
        if self._handle is None:
            handle = self.path.open("ab")
            if handle.tell() == 0:
                handle.write(SPILL_MAGIC)
            self._handle = handle
        return self._handle

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
