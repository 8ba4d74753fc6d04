"""Sample.build: what it accepts, how it normalises, and what it refuses."""

from __future__ import annotations

import enum
import math
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.errors import ValidationError
from hub.sample import (
    INT64_MIN,
    MAX_EPOCH,
    MAX_SEQ,
    NO_LABELS,
    UINT64_MAX,
    Sample,
    check_ts,
    check_value,
)

PROPERTY = settings(deadline=None, max_examples=200)


def build(**overrides: Any) -> Sample:
    parts: dict[str, Any] = {
        "node": "web-1", "kind": "system", "values": {"cpu_user_ratio": 0.25},
        "seq": 7, "epoch": 1_732_900_000_123, "ts": 1_732_900_000.5,
    }
    parts.update(overrides)
    return Sample.build(parts.pop("node"), parts.pop("kind"), parts.pop("values"), **parts)


def test_build_keeps_valid_parts() -> None:
    """A valid sample keeps its parts, and its topic is node/kind."""
    sample = build(labels={"region": "eu"})
    assert sample == Sample("web-1", "system", 1_732_900_000.5, 7, 1_732_900_000_123,
                            {"cpu_user_ratio": 0.25}, {"region": "eu"})
    assert sample.topic == "web-1/system"


def test_bool_values_become_ints() -> None:
    """True/False are stored as the ints 1/0 (JSON clients get numbers, not true/false)."""
    sample = build(values={"up": True, "down": False, "n": 3, "x": 0.5})
    assert sample.values == {"up": 1, "down": 0, "n": 3, "x": 0.5}
    assert [type(v) for v in sample.values.values()] == [int, int, int, float]


def test_ts_defaults_to_now_and_is_a_float() -> None:
    """Without ts the sample is stamped now; an int ts is kept as a float."""
    before = time.time()
    sample = build(ts=None)
    assert before <= sample.ts <= time.time()
    stamped = build(ts=1_700_000_000)
    assert stamped.ts == 1_700_000_000.0
    assert type(stamped.ts) is float


def test_values_and_labels_are_copied() -> None:
    """Changing the caller's dicts after build does not change the sample."""
    values = {"a": 1}
    labels = {"k": "v"}
    sample = build(values=values, labels=labels)
    values["a"] = 2
    values["b"] = 3
    labels["k"] = "w"
    assert sample.values == {"a": 1}
    assert sample.labels == {"k": "v"}


def test_no_labels_is_shared_and_read_only() -> None:
    """A sample without labels holds NO_LABELS, which cannot be modified."""
    assert build().labels is NO_LABELS
    assert build(labels={}).labels is NO_LABELS
    with pytest.raises(TypeError):
        NO_LABELS["k"] = "v"  # type: ignore[index]


def test_empty_values_are_allowed() -> None:
    """A sample may carry no values (a heartbeat of a kind with nothing to report)."""
    assert build(values={}).values == {}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_rejected(value: float) -> None:
    """NaN and infinities are ValidationErrors: JSON clients cannot receive them."""
    with pytest.raises(ValidationError, match="finite"):
        build(values={"x": value})


@pytest.mark.parametrize("value", [INT64_MIN, -1, 0, 2**63 - 1, 2**63, UINT64_MAX])
def test_64_bit_ints_are_accepted(value: int) -> None:
    """Every int from the int64 minimum to the uint64 maximum is a valid value."""
    assert build(values={"x": value}).values["x"] == value


@pytest.mark.parametrize("value", [INT64_MIN - 1, UINT64_MAX + 1, 10**100])
def test_ints_beyond_64_bits_are_rejected(value: int) -> None:
    """Ints msgpack cannot carry are rejected at build time, not at encode time."""
    with pytest.raises(ValidationError, match="64 bits"):
        build(values={"x": value})


class Level(enum.IntEnum):
    HIGH = 2


@pytest.mark.parametrize("value", ["1", None, [1], Decimal("1.5"), 1j, Level.HIGH, b"1"])
def test_non_numbers_are_rejected(value: object) -> None:
    """Only int, float and bool values are accepted (not str, Decimal, enums, ...)."""
    with pytest.raises(ValidationError):
        build(values={"x": value})


@pytest.mark.parametrize(
    "ts", [-1, -0.5, math.nan, math.inf, -math.inf, "1", True, 2**1024, [1]]
)
def test_invalid_ts_is_rejected(ts: object) -> None:
    """ts must be a finite, non-negative number of seconds; a huge int is not an OverflowError."""
    with pytest.raises(ValidationError, match="ts"):
        build(ts=ts)


@pytest.mark.parametrize(
    ("field", "value"),
    [("seq", -1), ("seq", MAX_SEQ + 1), ("seq", True), ("seq", 1.0), ("seq", "1"),
     ("epoch", -1), ("epoch", MAX_EPOCH + 1), ("epoch", False), ("epoch", 2.0)],
)
def test_invalid_counters_are_rejected(field: str, value: object) -> None:
    """seq is an int64 >= 0; epoch an int >= 0 below 2**53 (exact in JSON); bools are not ints."""
    with pytest.raises(ValidationError, match=field):
        build(**{field: value})


def test_counter_bounds_are_inclusive() -> None:
    """The largest seq and epoch are accepted."""
    sample = build(seq=MAX_SEQ, epoch=MAX_EPOCH)
    assert (sample.seq, sample.epoch) == (2**63 - 1, 2**53 - 1)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [({"node": "web 1"}, "node"), ({"kind": "System"}, "kind"),
     ({"values": {"bad name": 1}}, "metric name"), ({"values": [("x", 1)]}, "mapping"),
     ({"labels": {"bad-key": "v"}}, "label"), ({"labels": {"k": "\udc80"}}, "label"),
     ({"labels": [("k", "v")]}, "mapping")],
)
def test_invalid_parts_are_named(overrides: dict[str, Any], match: str) -> None:
    """Each invalid part raises a ValidationError that names it."""
    with pytest.raises(ValidationError, match=match):
        build(**overrides)


def test_check_value_and_check_ts() -> None:
    """The value and time checks the codec shares return normalised values."""
    assert check_value("x", True) == 1
    assert type(check_value("x", True)) is int
    assert check_value("x", -0.0) == 0.0
    assert check_ts(0) == 0.0
    assert check_ts(1.5) == 1.5


@PROPERTY
@given(st.one_of(st.integers(), st.floats(), st.booleans(), st.text(max_size=3), st.none()))
def test_check_value_accepts_exactly_finite_64_bit_numbers(value: object) -> None:
    """check_value accepts bools, finite floats and 64-bit ints, and raises for the rest."""
    expected = (
        isinstance(value, bool)
        or (type(value) is float and math.isfinite(value))
        or (type(value) is int and INT64_MIN <= value <= UINT64_MAX)
    )
    try:
        result = check_value("x", value)
    except ValidationError:
        assert not expected
    else:
        assert expected
        assert result == value
        assert type(result) in (int, float)
