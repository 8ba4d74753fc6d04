"""The resume cursor: a compact, versioned vector of per-shard stream positions.

A cursor holds, for every shard stream, the id of the last entry the gateway had handed to the
fan-out when it built the update that carries it. Resuming with it means: replay every entry
whose id is greater than the cursor's position for the entry's shard. A vector, not one
position, because on a Redis Cluster the shards live on masters whose clocks differ, so their
ids cannot be merged into one order; per shard, ids are Redis's own total order.

Wire form (version 1), base64url without padding of::

    0x01  varint(shards)  varint(base_ms)  shard[0] .. shard[n-1]  crc24
    shard = varint(0)                     for the position 0-0 (nothing read yet), or
            varint(((base_ms - ms) << 1 | has_seq) + 1) [varint(seq) if has_seq]

``base_ms`` is the newest ``ms`` of the vector, so busy shards cost 2-3 bytes; the checksum is
the low 24 bits of crc32 over everything before it. Decoding anything else raises CursorError.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Sequence

from gateway import CursorError

EntryId = tuple[int, int]
"""A Redis stream entry id ``ms-seq`` as a pair of integers; compares in stream order."""
Positions = tuple[EntryId, ...]
"""One ``EntryId`` per shard, index = shard number."""

ZERO_ID: EntryId = (0, 0)
CURSOR_VERSION = 1
MAX_ID_PART = 2**64 - 1
MAX_SHARDS = 1024
MAX_CURSOR_LEN = 4096  # characters; a 1024-shard cursor is far below this
_CHECKSUM_BYTES = 3
_B64_RE = re.compile(r"[A-Za-z0-9_-]+")
_ENTRY_ID_RE = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


# -- entry ids ------------------------------------------------------------------------------
def parse_entry_id(raw: bytes | str) -> EntryId:
    """Parse a Redis entry id (``b"1700000000000-0"``); raises ValueError when it is not one."""
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    found = _ENTRY_ID_RE.fullmatch(text)
    if found is None:
        raise ValueError(f"not a stream entry id: {text[:48]!r}")
    ms, seq = int(found[1]), int(found[2])
    if ms > MAX_ID_PART or seq > MAX_ID_PART:
        raise ValueError(f"stream entry id out of range: {text!r}")
    return ms, seq


def format_entry_id(entry_id: EntryId) -> str:
    """The Redis form of an entry id, ``ms-seq``."""
    return f"{entry_id[0]}-{entry_id[1]}"


# -- comparisons on vectors -----------------------------------------------------------------
def is_after(positions: Positions, shard: int, entry_id: EntryId) -> bool:
    """Whether the entry ``entry_id`` of ``shard`` comes after the cursor ``positions``."""
    return entry_id > positions[shard]


def dominates(upper: Positions, lower: Positions) -> bool:
    """Whether ``upper`` is at or after ``lower`` on every shard."""
    return all(u >= low for u, low in zip(upper, lower, strict=True))


def join(a: Positions, b: Positions) -> Positions:
    """The per-shard maximum of two vectors (what a client holds after both)."""
    return tuple(x if x >= y else y for x, y in zip(a, b, strict=True))


def zero_positions(shards: int) -> Positions:
    """A vector at 0-0 on every shard (before the first entry of every stream)."""
    return (ZERO_ID,) * shards


class PositionTracker:
    """The reader's vector, advanced entry by entry; each step returns a new immutable vector.

    The vector returned for an entry is the one its update's cursor encodes; it is shared by
    every connection, so it is computed once per entry, here.
    """

    __slots__ = ("_positions",)

    def __init__(self, start: Sequence[EntryId]) -> None:
        self._positions: Positions = _check_positions(start)

    @property
    def positions(self) -> Positions:
        return self._positions

    def advance(self, shard: int, entry_id: EntryId) -> Positions | None:
        """Move ``shard`` to ``entry_id`` and return the new vector.

        Returns None (and changes nothing) when ``entry_id`` is not after the shard's position:
        a duplicate or a replayed old entry, which the caller must not deliver again.
        """
        current = self._positions
        if entry_id <= current[shard]:
            return None
        moved = current[:shard] + (entry_id,) + current[shard + 1:]
        self._positions = moved
        return moved


# -- the wire form --------------------------------------------------------------------------
def encode_cursor(positions: Sequence[EntryId]) -> str:
    """The opaque cursor string of ``positions`` (see the module docstring for the layout)."""
    out = bytearray((CURSOR_VERSION,))
    _put_varint(out, len(positions))
    base = max((ms for ms, _ in positions), default=0)
    _put_varint(out, base)
    for ms, seq in positions:
        if ms == 0 and seq == 0:
            out.append(0)
            continue
        _put_varint(out, (((base - ms) << 1) | (1 if seq else 0)) + 1)
        if seq:
            _put_varint(out, seq)
    out += (zlib.crc32(out) & 0xFFFFFF).to_bytes(_CHECKSUM_BYTES, "big")
    return base64.urlsafe_b64encode(out).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: object, *, shards: int | None = None) -> Positions:
    """The positions in ``cursor``; raises CursorError (only) for anything that is not one.

    With ``shards``, a cursor of another shard count is a CursorError too (the hub's layout
    changed, so its positions mean nothing here).
    """
    if not isinstance(cursor, str):
        raise CursorError(f"a cursor is a string, not {type(cursor).__name__}")
    if not cursor or len(cursor) > MAX_CURSOR_LEN or _B64_RE.fullmatch(cursor) is None:
        raise CursorError("garbled cursor: not base64url text of a sane length")
    try:
        data = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError) as exc:
        raise CursorError(f"garbled cursor: {exc}") from exc
    if len(data) < 1 + 1 + 1 + _CHECKSUM_BYTES:
        raise CursorError("garbled cursor: too short")
    body, checksum = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    if (zlib.crc32(body) & 0xFFFFFF).to_bytes(_CHECKSUM_BYTES, "big") != checksum:
        raise CursorError("garbled cursor: checksum mismatch")
    if body[0] != CURSOR_VERSION:
        raise CursorError(f"cursor version {body[0]} is not supported (this gateway reads 1)")
    reader = _Reader(body, 1)
    count = reader.varint()
    if not 1 <= count <= MAX_SHARDS:
        raise CursorError(f"garbled cursor: {count} shards")
    if shards is not None and count != shards:
        raise CursorError(f"cursor has {count} shards, this hub has {shards}")
    base = reader.id_part()
    positions: list[EntryId] = []
    for _ in range(count):
        code = reader.varint()
        if code == 0:
            positions.append(ZERO_ID)
            continue
        code -= 1
        delta, has_seq = code >> 1, code & 1
        if delta > base:
            raise CursorError("garbled cursor: position before the epoch")
        seq = reader.id_part() if has_seq else 0
        if has_seq and seq == 0:
            raise CursorError("garbled cursor: non-canonical sequence")
        positions.append((base - delta, seq))
    if reader.offset != len(body):
        raise CursorError("garbled cursor: trailing bytes")
    return tuple(positions)


def _put_varint(out: bytearray, value: int) -> None:
    """Append ``value`` (>= 0) as an unsigned LEB128 varint."""
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


class _Reader:
    """Reads varints from a cursor body, raising CursorError at the first thing out of bounds."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def varint(self) -> int:
        value = 0
        shift = 0
        data = self.data
        while True:
            if self.offset >= len(data):
                raise CursorError("garbled cursor: truncated")
            byte = data[self.offset]
            self.offset += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift >= 70:  # 10 bytes hold the largest code (66 bits); more is garbage
                raise CursorError("garbled cursor: varint too long")
        return value

    def id_part(self) -> int:
        value = self.varint()
        if value > MAX_ID_PART:
            raise CursorError("garbled cursor: id out of range")
        return value


def _check_positions(positions: Sequence[EntryId]) -> Positions:
    if not 1 <= len(positions) <= MAX_SHARDS:
        raise ValueError(f"a position vector has 1..{MAX_SHARDS} shards, got {len(positions)}")
    out: list[EntryId] = []
    for entry in positions:
        ms, seq = entry
        if not (0 <= ms <= MAX_ID_PART and 0 <= seq <= MAX_ID_PART):
            raise ValueError(f"entry id out of range: {entry!r}")
        out.append((ms, seq))
    return tuple(out)
