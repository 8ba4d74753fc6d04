"""The resume cursor: entry ids, vector comparisons, the wire form and its garbage safety."""

from __future__ import annotations

import base64
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import CursorError
from gateway.cursor import (
    MAX_ID_PART,
    ZERO_ID,
    PositionTracker,
    decode_cursor,
    dominates,
    encode_cursor,
    format_entry_id,
    is_after,
    join,
    parse_entry_id,
    zero_positions,
)

NOW_MS = 1_700_000_000_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _with_checksum(body: bytes) -> str:
    """A cursor string around ``body`` with a valid checksum (to reach the parser's checks)."""
    return _b64(body + (zlib.crc32(body) & 0xFFFFFF).to_bytes(3, "big"))


# -- entry ids --------------------------------------------------------------------------------
def test_entry_ids_parse_from_bytes_and_str_and_format_back() -> None:
    """Redis ids parse to (ms, seq) pairs that order like the stream, and format back."""
    assert parse_entry_id(b"1700000000000-3") == (NOW_MS, 3)
    assert parse_entry_id("0-0") == ZERO_ID
    assert format_entry_id((NOW_MS, 3)) == "1700000000000-3"
    assert parse_entry_id("5-10") > parse_entry_id("5-9") > parse_entry_id("4-99")
    assert parse_entry_id(f"{MAX_ID_PART}-{MAX_ID_PART}") == (MAX_ID_PART, MAX_ID_PART)


@pytest.mark.parametrize(
    "raw", ["", "12", "1-", "-1", "1-2-3", "a-1", "1 -2", f"{MAX_ID_PART + 1}-0", b"\xff-1", "+"]
)
def test_bad_entry_ids_raise_value_error(raw: str | bytes) -> None:
    """Anything that is not ms-seq within 64 bits is a ValueError."""
    with pytest.raises(ValueError, match="entry id"):
        parse_entry_id(raw)


# -- vectors ----------------------------------------------------------------------------------
def test_vector_helpers() -> None:
    """is_after, dominates and join compare per shard."""
    a = ((5, 0), (7, 1))
    b = ((6, 0), (7, 0))
    assert is_after(a, 0, (5, 1))
    assert not is_after(a, 0, (5, 0))
    assert not dominates(a, b)
    assert not dominates(b, a)
    assert join(a, b) == ((6, 0), (7, 1))
    assert dominates(join(a, b), a)
    assert dominates(join(a, b), b)
    assert zero_positions(3) == (ZERO_ID,) * 3


def test_tracker_advances_and_refuses_duplicates() -> None:
    """The tracker returns a new vector per entry, and None for an entry not after its shard."""
    tracker = PositionTracker(zero_positions(2))
    first = tracker.advance(1, (10, 0))
    assert first == (ZERO_ID, (10, 0))
    assert tracker.advance(1, (10, 0)) is None
    assert tracker.advance(1, (9, 5)) is None
    assert tracker.advance(0, (3, 0)) == ((3, 0), (10, 0))
    assert first == (ZERO_ID, (10, 0))  # earlier vectors are immutable
    assert tracker.positions == ((3, 0), (10, 0))


@pytest.mark.parametrize("start", [(), ((-1, 0),), ((0, MAX_ID_PART + 1),)])
def test_tracker_rejects_bad_start_vectors(start: tuple[tuple[int, int], ...]) -> None:
    """A start vector must have 1..1024 valid ids."""
    with pytest.raises(ValueError, match="shards|range"):
        PositionTracker(start)


# -- the wire form ----------------------------------------------------------------------------
def test_round_trip_of_a_typical_vector_is_compact() -> None:
    """16 busy shards within a second of each other fit in well under 80 characters."""
    positions = tuple((NOW_MS - 37 * k, k % 3) for k in range(16))
    cursor = encode_cursor(positions)
    assert decode_cursor(cursor, shards=16) == positions
    assert len(cursor) < 80
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_zero_positions_round_trip() -> None:
    """Shards never read (0-0) encode in one byte each and decode back to 0-0."""
    positions = (ZERO_ID, (NOW_MS, 0), ZERO_ID, (0, 7))
    assert decode_cursor(encode_cursor(positions)) == positions
    assert decode_cursor(encode_cursor(zero_positions(16))) == zero_positions(16)


def test_wrong_shard_count_is_a_cursor_error() -> None:
    """A cursor from a hub with another shard count is refused (its positions mean nothing)."""
    cursor = encode_cursor(zero_positions(8))
    assert decode_cursor(cursor, shards=8) == zero_positions(8)
    with pytest.raises(CursorError, match="8 shards"):
        decode_cursor(cursor, shards=16)


def test_other_versions_are_refused() -> None:
    """A well-formed cursor of version 2 is a CursorError naming the version."""
    body = bytearray(base64.urlsafe_b64decode(encode_cursor(zero_positions(2)) + "=="))[:-3]
    body[0] = 2
    with pytest.raises(CursorError, match="version 2"):
        decode_cursor(_with_checksum(bytes(body)))


@pytest.mark.parametrize(
    "body",
    [
        b"\x01\x00\x00",  # zero shards
        b"\x01\x02\x00\x00",  # two shards announced, one given
        b"\x01\x01\x00\x00\x00",  # trailing byte
        b"\x01\x01\x05\x0d",  # delta 6 > base 5
        b"\x01\x01\x05\x02\x00",  # has_seq with seq 0 (non-canonical)
        b"\x01\x01" + b"\xff" * 10 + b"\x01\x00",  # varint too long
        b"\x01\x01\x80\x80\x80\x80\x80\x80\x80\x80\x80\x02\x00",  # base over 64 bits
        b"\x01\x81",  # truncated varint
        b"\x01\x81\x10\x00" + b"\x00" * 2,  # 2049 shards
    ],
)
def test_structurally_bad_bodies_are_refused_even_with_a_valid_checksum(body: bytes) -> None:
    """Each structural check rejects a body that passes the checksum."""
    with pytest.raises(CursorError):
        decode_cursor(_with_checksum(body))


@pytest.mark.parametrize(
    "value",
    [None, 12, b"AQ", "", "!!!!", "A", "AQ==", "a b", "x" * 5000, "AQEAAAAA", "é"],
)
def test_garbage_is_a_cursor_error(value: object) -> None:
    """Non-strings, bad characters, bad lengths and bad checksums are CursorError."""
    with pytest.raises(CursorError):
        decode_cursor(value)


def test_a_flipped_character_is_detected() -> None:
    """Changing any one character of a cursor makes it a CursorError or another valid cursor."""
    positions = tuple((NOW_MS - 11 * k, k % 2) for k in range(16))
    cursor = encode_cursor(positions)
    for i in range(len(cursor)):
        for replacement in "AZaz09-_":
            if replacement == cursor[i]:
                continue
            mutated = cursor[:i] + replacement + cursor[i + 1:]
            try:
                decoded = decode_cursor(mutated, shards=16)
            except CursorError:
                continue
            # Only base64's unused low bits of the last character can change harmlessly.
            assert decoded == positions


ENTRY = st.tuples(st.integers(0, MAX_ID_PART), st.integers(0, MAX_ID_PART))
NEAR = st.tuples(st.integers(NOW_MS - 10**7, NOW_MS), st.integers(0, 300))
VECTOR = st.lists(st.one_of(ENTRY, NEAR, st.just(ZERO_ID)), min_size=1, max_size=64).map(tuple)


@settings(max_examples=500, deadline=None)
@given(positions=VECTOR)
def test_round_trip_property(positions: tuple[tuple[int, int], ...]) -> None:
    """decode(encode(v)) == v for any vector of valid ids."""
    assert decode_cursor(encode_cursor(positions), shards=len(positions)) == positions


@settings(max_examples=1000, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_decodes_or_raises_cursor_error(text: str) -> None:
    """Any string either decodes to a valid vector or raises CursorError, nothing else."""
    try:
        positions = decode_cursor(text)
    except CursorError:
        return
    assert all(0 <= ms <= MAX_ID_PART and 0 <= seq <= MAX_ID_PART for ms, seq in positions)


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=120), valid_checksum=st.booleans())
def test_arbitrary_bytes_decode_or_raise_cursor_error(data: bytes, valid_checksum: bool) -> None:
    """Any byte body (with or without a matching checksum) decodes or raises CursorError only."""
    text = _with_checksum(data) if valid_checksum else _b64(data)
    if not text:
        return
    try:
        positions = decode_cursor(text)
    except CursorError:
        return
    assert 1 <= len(positions) <= 1024
    assert all(0 <= ms <= MAX_ID_PART and 0 <= seq <= MAX_ID_PART for ms, seq in positions)


@settings(max_examples=300, deadline=None)
@given(positions=VECTOR, index=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_mutated_cursors_decode_or_raise_cursor_error(
    positions: tuple[tuple[int, int], ...], index: int, byte: int
) -> None:
    """A valid cursor with one byte changed never raises anything but CursorError."""
    raw = bytearray(base64.urlsafe_b64decode(encode_cursor(positions) + "=="))
    raw[index % len(raw)] = byte
    try:
        decode_cursor(_b64(bytes(raw)))
    except CursorError:
        pass
