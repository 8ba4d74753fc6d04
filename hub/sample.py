"""The sample: one observation of one kind of metrics on one node, and the rules it keeps.

``Sample.build`` validates and normalises (bool to 0/1; NaN and infinities are refused, as
docs/model.md explains); the codec checks the same rules on both ways through the wire.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from hub.errors import ValidationError
from hub.names import validate_kind, validate_label, validate_metric_name, validate_node

Number = int | float

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1
MAX_EPOCH = 2**53 - 1  # JSON-safe for JavaScript clients
MAX_SEQ = 2**63 - 1


NO_LABELS: Mapping[str, str] = MappingProxyType({})


class Sample(NamedTuple):
    """One node's values of one kind at one time.

    ``seq`` counts samples of (node, kind) within one collector run, identified by ``epoch``:
    a jump in seq within an epoch is a lost sample, a new epoch is a restart.
    """

    node: str
    kind: str
    ts: float
    seq: int
    epoch: int
    values: Mapping[str, Number]
    labels: Mapping[str, str] = NO_LABELS

    @property
    def topic(self) -> str:
        """``node/kind``."""
        return f"{self.node}/{self.kind}"

    @classmethod
    def build(
        cls,
        node: str,
        kind: str,
        values: Mapping[str, Number | bool],
        *,
        seq: int,
        epoch: int,
        ts: float | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Sample:
        """Validate and normalise the parts of a sample (bool becomes 0/1, ts defaults to now).

        Raises ValidationError naming the first part that is wrong.
        """
        validate_node(node)
        validate_kind(kind)
        ts = check_ts(time.time() if ts is None else ts)
        check_counter("seq", seq, MAX_SEQ)
        check_counter("epoch", epoch, MAX_EPOCH)
        if not isinstance(values, Mapping):
            raise ValidationError(f"values must be a mapping, not {type(values).__name__}")
        clean: dict[str, Number] = {}
        for name, value in values.items():
            validate_metric_name(name)
            clean[name] = check_value(name, value)
        if not labels:
            return cls(node, kind, ts, seq, epoch, clean, NO_LABELS)
        if not isinstance(labels, Mapping):
            raise ValidationError(f"labels must be a mapping, not {type(labels).__name__}")
        clean_labels: dict[str, str] = {}
        for key, label in labels.items():
            validate_label(key, label)
            clean_labels[key] = label
        return cls(node, kind, ts, seq, epoch, clean, clean_labels)


def check_ts(ts: object) -> float:
    """Return ``ts`` as a float if it is a finite, non-negative time in seconds."""
    if type(ts) is float and 0.0 <= ts < math.inf:
        return ts
    if type(ts) is int and ts >= 0:
        try:
            return float(ts)
        except OverflowError:
            pass
    raise ValidationError(f"invalid ts {ts!r}: a finite, non-negative epoch time in seconds")


def check_counter(what: str, value: object, maximum: int) -> int:
    """Return ``value`` if it is an int from 0 to ``maximum`` (bool is not an int here)."""
    if type(value) is not int or not 0 <= value <= maximum:
        raise ValidationError(f"invalid {what} {value!r}: an integer from 0 to {maximum}")
    return value


def check_value(name: str, value: object) -> Number:
    """Return a valid metric value: bool as 0/1, finite floats, 64-bit integers."""
    if isinstance(value, bool):
        return int(value)
    if type(value) is float:
        if not math.isfinite(value):
            raise ValidationError(f"metric {name!r} is {value!r}: values must be finite")
        return value
    if type(value) is int:
        if not INT64_MIN <= value <= UINT64_MAX:
            raise ValidationError(f"metric {name!r} = {value!r} does not fit in 64 bits")
        return value
    raise ValidationError(f"metric {name!r} has a {type(value).__name__} value: use int or float")
