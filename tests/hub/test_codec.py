"""The sample codec: round trips, every limit, and a decoder that only ever says Sample or no."""

from __future__ import annotations

import enum
import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.codec import (
    DEFAULT_SCHEMA_CACHE_SIZE,
    FORMAT_VERSION,
    CodecLimits,
    SampleCodec,
    decode,
    encode,
)
from hub.errors import CodecError, ConfigError, HubError
from hub.names import KIND_RE, LABEL_KEY_RE, MAX_LABEL_VALUE_LEN, METRIC_RE, NODE_RE
from hub.sample import INT64_MIN, MAX_EPOCH, MAX_SEQ, NO_LABELS, UINT64_MAX, Sample

PROPERTY = settings(
    deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow]
)

# -- strategies -------------------------------------------------------------------------------
nodes = st.from_regex(NODE_RE, fullmatch=True)
kinds = st.from_regex(KIND_RE, fullmatch=True)
metric_names = st.from_regex(METRIC_RE, fullmatch=True)
metric_values = st.one_of(
    st.integers(INT64_MIN, UINT64_MAX),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
label_maps = st.dictionaries(
    st.from_regex(LABEL_KEY_RE, fullmatch=True), st.text(max_size=MAX_LABEL_VALUE_LEN),
    max_size=4,
)
timestamps = st.floats(min_value=0.0, allow_infinity=False) | st.integers(0, 2**63)
samples = st.builds(
    Sample.build,
    nodes,
    kinds,
    st.dictionaries(metric_names, metric_values, max_size=40),
    seq=st.integers(0, MAX_SEQ),
    epoch=st.integers(0, MAX_EPOCH),
    ts=timestamps,
    labels=st.none() | label_maps,
)
# Anything msgpack can carry, including what a sample must not hold.
msgpack_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(INT64_MIN, UINT64_MAX), st.floats(),
    st.floats(width=32), st.text(max_size=20), st.binary(max_size=8),
    st.sampled_from(["system", "web-1", "a b", "cpu", "", "1", "a a"]),
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=5) | st.binary(max_size=3), children, max_size=4),
    max_leaves=12,
)


def typical_values() -> dict[str, int | float]:
    return {
        "cpu_user_ratio": 0.1234, "cpu_system_ratio": 0.05, "load1": 0.42,
        "mem_used_bytes": 3_221_225_472, "net_rx_bytes_total.eth0": 123_456_789_012,
        "fs_used_ratio./var": 0.61, "procs_running": 1, "net_rx_errors_total.eth0": 0,
    }


def make(values: dict[str, Any] | None = None, **overrides: Any) -> Sample:
    parts: dict[str, Any] = {
        "node": "web-1", "kind": "system", "seq": 42, "epoch": 1_732_900_000_123,
        "ts": 1_732_900_000.25, "labels": None,
    }
    parts.update(overrides)
    return Sample.build(parts.pop("node"), parts.pop("kind"),
                        typical_values() if values is None else values, **parts)


def wire(*, version: Any = FORMAT_VERSION, node: Any = "web-1", kind: Any = "system",
         ts: Any = 1_732_900_000.25, seq: Any = 42, epoch: Any = 7, names: Any = "a b",
         values: Any = (1, 2.5), labels: Any = None, **pack_options: Any) -> bytes:
    """Hand-made wire bytes, one field at a time, for the cases an encoder never writes."""
    obj = [version, node, kind, ts, seq, epoch, names,
           list(values) if isinstance(values, tuple) else values,
           {} if labels is None else labels]
    packed: bytes = msgpack.packb(obj, use_bin_type=True, **pack_options)
    return packed


def check_decoded(codec: SampleCodec, sample: Sample) -> None:
    """A decoded sample is valid by Sample.build's rules and encodes again."""
    rebuilt = Sample.build(sample.node, sample.kind, sample.values, seq=sample.seq,
                           epoch=sample.epoch, ts=sample.ts, labels=sample.labels)
    assert rebuilt == sample
    assert type(sample.ts) is float
    assert all(type(value) in (int, float) for value in sample.values.values())
    assert len(sample.values) <= codec.limits.max_fields
    assert len(sample.labels) <= codec.limits.max_labels
    assert codec.decode(codec.encode(sample)) == sample


def decode_or_reject(codec: SampleCodec, data: bytes) -> Sample | None:
    """Decode ``data``: a valid Sample or a CodecError; any other exception fails the test."""
    try:
        sample = codec.decode(data)
    except CodecError:
        return None
    check_decoded(codec, sample)
    return sample


def warm(sample: Sample | None = None) -> tuple[SampleCodec, bytes]:
    """A codec that has decoded ``sample`` once (its caches hold the topic and names)."""
    codec = SampleCodec()
    data = codec.encode(sample or make())
    codec.decode(data)
    return codec, data


# -- round trips -------------------------------------------------------------------------------
@PROPERTY
@given(samples)
def test_round_trip(sample: Sample) -> None:
    """Any valid sample encodes and decodes to an equal sample with the same value types."""
    codec = SampleCodec()
    for _ in range(2):  # cold caches, then warm ones
        decoded = codec.decode(codec.encode(sample))
        assert decoded == sample
        assert type(decoded.ts) is float
        assert [type(v) for v in decoded.values.values()] == [
            type(v) for v in sample.values.values()
        ]
        assert list(decoded.values) == list(sample.values)  # order is kept
        check_decoded(codec, decoded)


@settings(PROPERTY, max_examples=40)
@given(st.lists(samples, min_size=2, max_size=5))
def test_round_trip_with_shared_caches(batch: list[Sample]) -> None:
    """One codec round-trips samples of many topics and schemas, interleaved, twice over."""
    codec = SampleCodec(schema_cache_size=3, topic_cache_size=2)
    for sample in batch + batch:
        assert codec.decode(codec.encode(sample)) == sample


def test_module_level_functions() -> None:
    """hub.codec.encode/decode use a shared default codec."""
    sample = make(labels={"region": "eu-west-1"})
    assert decode(encode(sample)) == sample


def test_wire_layout_is_pinned() -> None:
    """The bytes are exactly [1, node, kind, ts, seq, epoch, "names", [values], {labels}]."""
    sample = make({"a": 1, "b.x": 2.5}, labels={"k": "v"})
    expected = msgpack.packb(
        [1, "web-1", "system", 1_732_900_000.25, 42, 1_732_900_000_123, "a b.x", [1, 2.5],
         {"k": "v"}], use_bin_type=True)
    assert encode(sample) == expected
    # hub.reader relies on this prefix to skip other topics without decoding them
    assert encode(sample).startswith(b"\x99\x01" + msgpack.packb("web-1") + msgpack.packb("system"))


def test_decoded_values_are_plain_dicts() -> None:
    """Decoded values are a dict (json.dumps needs one) and no labels is NO_LABELS."""
    codec, data = warm()
    sample = codec.decode(data)
    assert type(sample.values) is dict
    assert sample.labels is NO_LABELS


def test_bytearray_and_memoryview_are_accepted() -> None:
    """decode takes bytes, bytearray and memoryview alike."""
    codec, data = warm()
    assert codec.decode(bytearray(data)) == codec.decode(memoryview(data)) == codec.decode(data)


@pytest.mark.parametrize("data", ["text", None, 12, [1], {"a": 1}])
def test_non_bytes_are_a_codec_error(data: Any) -> None:
    """Anything but a bytes-like object is a CodecError, not a TypeError."""
    with pytest.raises(CodecError, match="expected bytes"):
        decode(data)


# -- any bytes: Sample or CodecError ----------------------------------------------------------
@PROPERTY
@given(st.binary(max_size=200))
def test_arbitrary_short_bytes(data: bytes) -> None:
    """Arbitrary short byte strings decode to a valid Sample or raise CodecError."""
    decode_or_reject(SampleCodec(), data)


@PROPERTY
@given(st.binary(min_size=200, max_size=70_000))
def test_arbitrary_long_bytes(data: bytes) -> None:
    """Long byte strings (also past the size limit) decode or raise CodecError."""
    decode_or_reject(SampleCodec(), data)


@PROPERTY
@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_a_sample_header(tail: bytes) -> None:
    """Bytes behind a valid array header and version reach the field checks, warm or cold."""
    codec, _ = warm()
    decode_or_reject(codec, b"\x99\x01" + tail)
    decode_or_reject(codec, b"\x99\x01" + msgpack.packb("web-1") + msgpack.packb("system")
                     + tail)


@PROPERTY
@given(st.data())
def test_mutated_encodings(data: st.DataObject) -> None:
    """Valid encodings with bytes flipped, inserted, deleted or cut decode or raise CodecError."""
    sample = data.draw(samples)
    codec = SampleCodec()
    blob = bytearray(codec.encode(sample))
    if data.draw(st.booleans()):
        codec.decode(bytes(blob))  # warm: the fast path is taken where it can be
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "replace", "truncate"]))
        if not blob:
            break
        index = data.draw(st.integers(0, len(blob) - 1))
        if op == "flip":
            blob[index] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            blob[index:index] = data.draw(st.binary(min_size=1, max_size=9))
        elif op == "delete":
            del blob[index:index + data.draw(st.integers(1, 9))]
        elif op == "replace":
            blob[index] = data.draw(st.integers(0, 255))
        else:
            del blob[index:]
    decode_or_reject(codec, bytes(blob))


@PROPERTY
@given(st.integers(0, 8), msgpack_values, st.booleans())
def test_any_msgpack_in_any_field(field: int, value: Any, warmed: bool) -> None:
    """Any msgpack value in any of the nine fields decodes validly or raises CodecError."""
    codec, data = warm(make({"a": 1, "b": 2.5}))
    obj = msgpack.unpackb(data)
    obj[field] = value
    decode_or_reject(codec if warmed else SampleCodec(), msgpack.packb(obj, use_bin_type=True))


@PROPERTY
@given(
    st.dictionaries(
        st.from_regex(LABEL_KEY_RE, fullmatch=True) | st.text(max_size=4) | st.binary(max_size=2)
        | st.integers(-2, 2),
        st.text(max_size=4) | msgpack_values,
        max_size=4,
    ),
    st.booleans(),
)
def test_any_label_map(labels: dict[Any, Any], warmed: bool) -> None:
    """Label maps with any keys (str, bin, int) and any values decode validly or raise."""
    codec, _ = warm()
    data = msgpack.packb([1, "web-1", "system", 1.0, 1, 1, "a", [1], labels], use_bin_type=True)
    decode_or_reject(codec if warmed else SampleCodec(), data)


@PROPERTY
@given(msgpack_values)
def test_any_msgpack_document(value: Any) -> None:
    """Any msgpack document at all decodes validly or raises CodecError."""
    decode_or_reject(SampleCodec(), msgpack.packb(value, use_bin_type=True))


# -- limits -----------------------------------------------------------------------------------
def test_size_limit_is_exact() -> None:
    """A sample of exactly max_size bytes passes both ways; one byte less of limit fails both."""
    sample = make()
    size = len(encode(sample))
    at_limit = SampleCodec(CodecLimits(max_size=size))
    assert at_limit.decode(at_limit.encode(sample)) == sample
    below = SampleCodec(CodecLimits(max_size=size - 1))
    with pytest.raises(CodecError, match="limit"):
        below.encode(sample)
    with pytest.raises(CodecError, match="limit"):
        below.decode(encode(sample))


def test_default_size_limit_is_64_kib() -> None:
    """By default 64 KiB is the largest sample; a bigger byte string is refused unread."""
    assert CodecLimits().max_size == 64 * 1024
    with pytest.raises(CodecError, match="65537 bytes"):
        decode(b"\x99" + b"\x00" * 64 * 1024)
    many = {f"metric_{'x' * 60}_{i:05d}": float(i) for i in range(1000)}
    with pytest.raises(CodecError, match="limit"):
        encode(make(many))


def test_field_limit() -> None:
    """More than max_fields values is a CodecError when encoding and when decoding."""
    limited = SampleCodec(CodecLimits(max_fields=3))
    three = make({"a": 1, "b": 2, "c": 3})
    assert limited.decode(limited.encode(three)) == three
    four = make({"a": 1, "b": 2, "c": 3, "d": 4})
    with pytest.raises(CodecError, match="limit is 3"):
        limited.encode(four)
    with pytest.raises(CodecError, match="more than 3"):
        limited.decode(encode(four))


def test_label_limit() -> None:
    """More than max_labels labels is a CodecError when encoding and when decoding."""
    limited = SampleCodec(CodecLimits(max_labels=2))
    two = make(labels={"a": "1", "b": "2"})
    assert limited.decode(limited.encode(two)) == two
    three = make(labels={"a": "1", "b": "2", "c": "3"})
    with pytest.raises(CodecError, match="3 labels"):
        limited.encode(three)
    with pytest.raises(CodecError, match="3 labels"):
        limited.decode(encode(three))


@pytest.mark.parametrize(
    ("fields", "valid"),
    [({"node": "n" * 128}, True), ({"node": "n" * 129}, False),
     ({"kind": "k" * 64}, True), ({"kind": "k" * 65}, False),
     ({"names": "m" * 128}, True), ({"names": "m" * 129}, False),
     ({"names": "m." + "i" * 127}, True), ({"names": "m." + "i" * 128}, False),
     ({"labels": {"k" * 64: "v"}}, True), ({"labels": {"k" * 65: "v"}}, False),
     ({"labels": {"k": "v" * MAX_LABEL_VALUE_LEN}}, True),
     ({"labels": {"k": "v" * (MAX_LABEL_VALUE_LEN + 1)}}, False)],
)
def test_string_length_limits(fields: dict[str, Any], valid: bool) -> None:
    """Node, kind, metric name and label lengths are checked at their exact bounds."""
    if "names" in fields:
        fields["values"] = [1]
    data = wire(**fields)
    for codec in (SampleCodec(), warm()[0]):
        if valid:
            check_decoded(codec, codec.decode(data))
        else:
            with pytest.raises(CodecError):
                codec.decode(data)


# -- what the decoder refuses -----------------------------------------------------------------
EXT = msgpack.ExtType(5, b"xyz")
EMPTY_EXT = msgpack.ExtType(1, b"")


@pytest.mark.parametrize(
    "data",
    [msgpack.packb(EXT), msgpack.packb(msgpack.Timestamp(1, 0)),
     wire(node=EXT), wire(kind=EMPTY_EXT), wire(ts=msgpack.Timestamp(1, 0)), wire(seq=EXT),
     wire(epoch=EMPTY_EXT), wire(names=EXT), wire(values=[EXT, 1]), wire(values=[1, EMPTY_EXT]),
     wire(labels={"k": EXT}), wire(labels=EMPTY_EXT), wire(version=EXT)],
)
def test_ext_types_are_rejected(data: bytes) -> None:
    """No msgpack ext type (timestamps included) is accepted anywhere."""
    for codec in (SampleCodec(), warm()[0]):
        with pytest.raises(CodecError):
            codec.decode(data)


@pytest.mark.parametrize(
    "labels", [{1: "v"}, {b"": "v"}, {b"k": "v"}, {None: "v"}, {1.5: "v"}, {True: "v"}]
)
def test_non_str_map_keys_are_rejected(labels: dict[Any, str]) -> None:
    """Label keys must be strings: ints, bins (even empty) and others are CodecErrors."""
    data = msgpack.packb([1, "web-1", "system", 1.0, 1, 1, "a", [1], labels], use_bin_type=True)
    for codec in (SampleCodec(), warm()[0]):
        with pytest.raises(CodecError):
            codec.decode(data)


@pytest.mark.parametrize(
    "data",
    [wire(node=b"web-1"), wire(kind=b""), wire(names=b"a b"), wire(values=[b"", 1]),
     wire(labels={"k": b"v"}), wire(labels={"k": b""}), msgpack.packb(b"x" * 20)],
)
def test_bin_is_rejected(data: bytes) -> None:
    """msgpack bin (bytes) is not a valid type for any field, empty or not."""
    for codec in (SampleCodec(), warm()[0]):
        with pytest.raises(CodecError):
            codec.decode(data)


@pytest.mark.parametrize("version", [0, 2, -1, 255, True, 1.0, "1", None, [1]])
def test_other_versions_are_rejected(version: Any) -> None:
    """Only format version 1 (the int, not True or 1.0) decodes, whatever the caches hold."""
    data = wire(version=version)
    for codec in (SampleCodec(), warm()[0]):
        with pytest.raises(CodecError, match="version"):
            codec.decode(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x90", b"\xc0", msgpack.packb({"node": "web-1"}), msgpack.packb([1] * 8),
     msgpack.packb([1] * 10), wire() + b"\x00", wire()[:-1], wire()[:5], b"\xc1",
     b"\x91" * 10_000],
)
def test_not_a_sample(data: bytes) -> None:
    """Wrong shapes, trailing bytes, truncation, reserved codes and deep nesting are rejected."""
    with pytest.raises(CodecError):
        SampleCodec().decode(data)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_rejected_both_ways(bad: float) -> None:
    """NaN/inf values fail encode (hand-made Sample) and decode (float64 or float32, any cache)."""
    hand_made = Sample("web-1", "system", 1.0, 1, 1, {"a": 1, "b": bad})
    with pytest.raises(CodecError, match="finite"):
        SampleCodec().encode(hand_made)
    for data in (wire(values=[1, bad]), wire(values=[bad, 1.5], use_single_float=True)):
        for codec in (SampleCodec(), warm(make({"a": 1, "b": 2.5}))[0]):
            with pytest.raises(CodecError, match="finite"):
                codec.decode(data)


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf, -1.0, -1, "1", True, None])
def test_invalid_ts_is_rejected_both_ways(ts: Any) -> None:
    """A ts that is not a finite, non-negative number fails encode and decode."""
    with pytest.raises(CodecError, match="ts"):
        SampleCodec().encode(Sample("web-1", "system", ts, 1, 1, {"a": 1}))
    for codec in (SampleCodec(), warm()[0]):
        with pytest.raises(CodecError, match="ts"):
            codec.decode(wire(ts=ts))


def test_int_ts_decodes_as_float() -> None:
    """A ts sent as an int (another encoder's choice) is read as a float."""
    sample = SampleCodec().decode(wire(ts=1_700_000_000))
    assert sample.ts == 1_700_000_000.0
    assert type(sample.ts) is float


def test_bools_are_normalised_to_ints() -> None:
    """A msgpack bool value decodes as 0/1 ints; a hand-made Sample's bool is sent as such."""
    for codec in (SampleCodec(), warm(make({"a": 1, "b": 2.5}))[0]):
        sample = codec.decode(wire(values=[True, False]))
        assert sample.values == {"a": 1, "b": 0}
        assert [type(v) for v in sample.values.values()] == [int, int]
    hand_made = Sample("web-1", "system", 1.0, 1, 1, {"a": True, "b": 2.5})
    decoded = decode(encode(hand_made))
    assert decoded.values == {"a": 1, "b": 2.5}
    assert type(decoded.values["a"]) is int


@pytest.mark.parametrize("value", [INT64_MIN, -1, 2**63 - 1, 2**63, UINT64_MAX])
def test_64_bit_bounds_round_trip(value: int) -> None:
    """The int64 minimum and uint64 maximum survive a round trip exactly."""
    sample = make({"x": value})
    assert decode(encode(sample)).values["x"] == value


@pytest.mark.parametrize("value", [INT64_MIN - 1, UINT64_MAX + 1, 10**30])
def test_ints_beyond_64_bits_cannot_be_encoded(value: int) -> None:
    """A hand-made Sample with an int msgpack cannot carry is a CodecError, not OverflowError."""
    with pytest.raises(CodecError):
        SampleCodec().encode(Sample("web-1", "system", 1.0, 1, 1, {"x": value}))


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [("seq", MAX_SEQ, True), ("seq", MAX_SEQ + 1, False), ("seq", UINT64_MAX, False),
     ("seq", -1, False), ("seq", 1.0, False), ("seq", True, False),
     ("epoch", MAX_EPOCH, True), ("epoch", MAX_EPOCH + 1, False), ("epoch", -5, False),
     ("epoch", "1", False)],
)
def test_seq_and_epoch_bounds(field: str, value: Any, valid: bool) -> None:
    """seq is an int64 >= 0 and epoch an int below 2**53, on the wire as in the model."""
    data = wire(**{field: value})
    for codec in (SampleCodec(), warm()[0]):
        if valid:
            assert getattr(codec.decode(data), field) == value
        else:
            with pytest.raises(CodecError, match=field):
                codec.decode(data)
    if not valid and type(value) is int and value <= UINT64_MAX:
        changes: dict[str, Any] = {field: value}
        hand_made = Sample("web-1", "system", 1.0, 1, 1, {"a": 1})._replace(**changes)
        with pytest.raises(CodecError, match=field):
            SampleCodec().encode(hand_made)


@pytest.mark.parametrize(
    ("names", "values", "match"),
    [("a a", [1, 2], "duplicate"), ("a b a", [1, 2, 3], "duplicate"),
     ("a b", [1], "2 names"), ("a", [1, 2], "1 names"), ("", [1], "0 names"),
     ("a  b", [1, 2, 3], "metric name"), (" a", [1, 2], "metric name"),
     ("a ", [1, 2], "metric name"), ("a b", {"a": 1}, "2 names"), ("a b", "ab", "2 names"),
     ("a b", [1, "2"], "str value"), ("a b", [1, None], "NoneType value"),
     ("a b", [1, [2]], "list value"), ("1a b", [1, 2], "metric name")],
)
def test_names_and_values_must_agree(names: str, values: Any, match: str) -> None:
    """Duplicate, empty or invalid names and values that do not pair up are rejected."""
    for codec in (SampleCodec(), warm(make({"a": 1, "b": 2.5}))[0]):
        with pytest.raises(CodecError, match=match):
            codec.decode(wire(names=names, values=values))


def test_finite_values_whose_sum_overflows() -> None:
    """Huge finite floats (their sum is inf) are still valid, both ways, warm or cold."""
    sample = make({"a": 1.7e308, "b": 1.7e308, "c": -1.7e308})
    codec = SampleCodec()
    for _ in range(2):
        assert codec.decode(codec.encode(sample)) == sample


class Host(enum.StrEnum):
    WEB = "web-1"


class Metric(enum.StrEnum):
    CPU = "cpu_user_ratio"


def test_str_subclasses_round_trip_as_plain_str() -> None:
    """Enum names (str subclasses) that Sample.build accepts encode; decoding gives plain str."""
    sample = Sample.build(Host.WEB, "system", {Metric.CPU: 0.5, "load1": 1.0}, seq=1, epoch=1,
                          ts=1.0, labels={"role": Host.WEB})
    codec = SampleCodec()
    for _ in range(2):
        decoded = codec.decode(codec.encode(sample))
        assert decoded == sample
        assert all(type(name) is str for name in decoded.values)
        assert type(decoded.node) is str


def test_empty_sample_round_trips() -> None:
    """A sample with no values encodes names as "" and decodes to empty values."""
    sample = make({})
    data = encode(sample)
    assert msgpack.unpackb(data)[6:8] == ["", []]
    assert decode(data) == sample


@pytest.mark.parametrize(
    ("sample", "match"),
    [(Sample("web 1", "system", 1.0, 1, 1, {"a": 1}), "node"),
     (Sample("web-1", "System", 1.0, 1, 1, {"a": 1}), "kind"),
     (Sample("web-1", "system", 1.0, 1, 1, {"a b": 1, "c": 2}), "metric name"),
     (Sample("web-1", "system", 1.0, 1, 1, {"a b": 1}), "metric name"),
     (Sample("web-1", "system", 1.0, 1, 1, {1: 1}), "metric name"),  # type: ignore[dict-item]
     (Sample("web-1", "system", 1.0, 1, 1, {"a": "1"}), "str value"),  # type: ignore[dict-item]
     (Sample("web-1", "system", 1.0, 1, 1, {"a": 1}, {"bad-key": "v"}), "label"),
     (Sample("web-1", "system", 1.0, 1, 1, {"a": 1}, {"k": 1}), "label"),  # type: ignore[dict-item]
     (Sample("web-1", "system", 1.0, 1, 1, {"a": 1}, {"k": "\ud800"}), "surrogate"),
     (Sample("web-1", "system", 1.0, 1, 1, [("a", 1)]), "metric name"),  # type: ignore[arg-type]
     (None, "Error"), ((1, 2), "Error")],
)
def test_encode_validates_hand_made_samples(sample: Any, match: str) -> None:
    """A Sample made without Sample.build is checked by encode: CodecError, never bad bytes."""
    with pytest.raises(CodecError, match=match):
        SampleCodec().encode(sample)
    codec, _ = warm(make({"a": 1}))  # the topic and names of a valid sample are cached
    with pytest.raises(CodecError):
        codec.encode(sample)


def test_topic_changing_names_decodes_each_correctly() -> None:
    """A topic whose names change back and forth decodes each sample with its own names."""
    codec = SampleCodec()
    first, second = make({"a": 1, "b": 2}), make({"b": 3, "c": 4.5})
    for _ in range(3):
        assert codec.decode(encode(first)) == first
        assert codec.decode(encode(second)) == second
        assert codec.decode(codec.encode(first)) == first
        assert codec.decode(codec.encode(second)) == second


# -- caches stay bounded ----------------------------------------------------------------------
def test_schema_cache_is_bounded() -> None:
    """A flood of distinct schemas never holds more than the schema cache size."""
    codec = SampleCodec(schema_cache_size=16)
    for i in range(500):
        sample = make({f"m{i}": i, "x": 1.5})
        assert codec.decode(encode(sample)) == sample
        assert codec.encode(sample)
        assert codec.cache_info()["schemas"] <= 16


def test_default_schema_cache_is_bounded() -> None:
    """The default codec also stops at DEFAULT_SCHEMA_CACHE_SIZE schemas."""
    codec = SampleCodec()
    for i in range(DEFAULT_SCHEMA_CACHE_SIZE + 500):
        codec.decode(wire(names=f"m{i}", values=[i]))
        assert codec.cache_info()["schemas"] <= DEFAULT_SCHEMA_CACHE_SIZE


def test_topic_cache_is_bounded() -> None:
    """A flood of distinct topics never holds more than the topic cache size."""
    codec = SampleCodec(topic_cache_size=8)
    for i in range(300):
        sample = make(node=f"node-{i}")
        assert codec.decode(codec.encode(sample)) == sample
        assert codec.cache_info()["topics"] <= 8


def test_cache_bytes_are_bounded() -> None:
    """Big schemas count against the byte budget; one larger than it is validated, not kept."""
    codec = SampleCodec(cache_bytes=20_000)
    for i in range(100):
        names = {f"metric_{i}_{j:03d}_with_a_rather_long_name": j for j in range(60)}
        sample = make(names, node=f"n{i}")
        assert codec.decode(codec.encode(sample)) == sample
        info = codec.cache_info()
        assert info["schema_bytes"] <= 20_000
        assert info["topic_bytes"] <= 20_000
    huge = make({f"metric_{j:04d}_" + "x" * 100: j for j in range(300)})
    for _ in range(2):
        assert codec.decode(codec.encode(huge)) == huge
    assert codec.cache_info()["schema_bytes"] <= 20_000


def test_limits_and_cache_sizes_are_checked() -> None:
    """Nonsense limits or cache sizes are ConfigErrors at construction."""
    bad_limits: list[dict[str, Any]] = [{"max_size": 0}, {"max_fields": -1}, {"max_labels": 1.5}]
    for bad in bad_limits:
        with pytest.raises(ConfigError):
            CodecLimits(**bad)
    bad_sizes: list[dict[str, Any]] = [
        {"schema_cache_size": 0}, {"topic_cache_size": -1}, {"cache_bytes": 0}
    ]
    for bad_size in bad_sizes:
        with pytest.raises(ConfigError):
            SampleCodec(**bad_size)


def test_codec_error_is_a_hub_error() -> None:
    """CodecError sits under the single HubError root."""
    assert issubclass(CodecError, HubError)
