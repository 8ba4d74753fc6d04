"""The msgpack wire format of a sample, with strict limits on what a decoder accepts.

Layout: a msgpack array ``[1, node, kind, ts, seq, epoch, names, values, labels]`` where 1 is
the format version, ``names`` the metric names joined by single spaces and ``values`` the
numbers in the same order. Names repeat in every sample of a node, so both sides cache the
joined string: a decoder validates and splits a node's 40 names once, not per sample
(docs/model.md has the measurements that chose this layout over a plain map).

Decoding any byte string returns a valid Sample or raises CodecError, nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from hub.errors import CodecError, ValidationError
from hub.names import KIND_RE, LABEL_KEY_RE, MAX_LABEL_VALUE_LEN, METRIC_RE, NODE_RE
from hub.sample import MAX_EPOCH, MAX_SEQ, NO_LABELS, Number, Sample, check_value

FORMAT_VERSION = 1
_NUMBER_TYPES = frozenset({int, float})
_BYTES_TYPES = (bytes, bytearray, memoryview)
_SCHEMA_CACHE_CAP = 4096
_TOPIC_CACHE_CAP = 100_000


@dataclass(frozen=True, slots=True)
class CodecLimits:
    """What a codec accepts; anything larger is a CodecError."""

    max_size: int = 64 * 1024
    max_fields: int = 1024
    max_labels: int = 32


DEFAULT_LIMITS = CodecLimits()


def _no_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"msgpack ext type {code} is not allowed")


class SampleCodec:
    """Encodes and decodes samples under one set of limits; reuse one per process."""

    def __init__(self, limits: CodecLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        # joined names -> validated tuple of names; bounded, cleared when full
        self._schemas: dict[str, tuple[str, ...]] = {}
        self._topics: set[tuple[str, str]] = set()  # validated (node, kind) pairs
        self._unpack_options: dict[str, Any] = {
            "raw": False, "strict_map_key": True, "use_list": True, "ext_hook": _no_ext,
            "max_str_len": limits.max_size, "max_bin_len": 0, "max_ext_len": 0,
            "max_array_len": max(limits.max_fields, 16), "max_map_len": limits.max_labels,
        }

    # -- encoding -------------------------------------------------------------------------
    def encode(self, sample: Sample) -> bytes:
        """Return the msgpack bytes of ``sample``; raises CodecError if it is invalid or too big."""
        values = sample.values
        labels = sample.labels
        if len(values) > self.limits.max_fields:
            raise CodecError(f"sample has {len(values)} values; limit is {self.limits.max_fields}")
        if len(labels) > self.limits.max_labels:
            raise CodecError(f"sample has {len(labels)} labels; limit is {self.limits.max_labels}")
        names = " ".join(values)
        numbers = list(values.values())
        try:
            if names not in self._schemas:
                self._schema(names)
            if not _sum_is_finite(numbers):
                for name, value in values.items():
                    check_value(name, value)
            data: bytes = self._packer.pack([
                FORMAT_VERSION, sample.node, sample.kind, sample.ts, sample.seq, sample.epoch,
                names, numbers, labels if type(labels) is dict else dict(labels),
            ])
        except (ValidationError, CodecError) as exc:
            raise CodecError(f"cannot encode sample of {sample.node}/{sample.kind}: {exc}") from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"cannot encode sample: {exc}") from exc
        if len(data) > self.limits.max_size:
            raise CodecError(f"encoded sample is {len(data)} bytes; limit is "
                             f"{self.limits.max_size}")
        return data

    # -- decoding -------------------------------------------------------------------------
    def decode(self, data: bytes | bytearray | memoryview) -> Sample:
        """Return the Sample in ``data``; raises CodecError (only) for anything invalid."""
        if not isinstance(data, _BYTES_TYPES):
            raise CodecError(f"expected bytes, got {type(data).__name__}")
        if len(data) > self.limits.max_size:
            raise CodecError(f"{len(data)} bytes exceeds the {self.limits.max_size}-byte limit")
        try:
            obj = msgpack.unpackb(data, **self._unpack_options)
        except CodecError:
            raise
        except Exception as exc:  # msgpack raises a dozen types; all mean "not a sample"
            raise CodecError(f"not msgpack: {type(exc).__name__}: {exc}") from exc
        if type(obj) is not list or len(obj) != 9:
            raise CodecError("not a sample: expected an array of 9 items")
        version, node, kind, ts, seq, epoch, names, numbers, labels = obj
        # The common case in three checks: known (node, kind), known names, plain numbers;
        # anything else falls to _check_header/_schema, which name what is wrong.
        if (type(node) is not str or type(kind) is not str or type(seq) is not int
                or type(epoch) is not int or type(ts) is not float or version != FORMAT_VERSION
                or (node, kind) not in self._topics or not 0 <= ts < math.inf
                or not 0 <= seq <= MAX_SEQ or not 0 <= epoch <= MAX_EPOCH):
            ts = self._check_header(version, node, kind, ts, seq, epoch)
        if type(names) is not str or type(numbers) is not list:
            raise CodecError("invalid values: expected names and a list of numbers")
        keys = self._schemas.get(names)
        if keys is None:
            keys = self._schema(names)
        if len(keys) != len(numbers):
            raise CodecError(f"{len(keys)} names for {len(numbers)} values")
        if set(map(type, numbers)) <= _NUMBER_TYPES and _sum_is_finite(numbers):
            values = dict(zip(keys, numbers, strict=True))
        else:
            try:
                pairs = zip(keys, numbers, strict=True)
                values = {name: check_value(name, value) for name, value in pairs}
            except ValidationError as exc:
                raise CodecError(str(exc)) from exc
        if type(labels) is not dict:
            raise CodecError("invalid labels: expected a map")
        if labels:
            for key, label in labels.items():
                if (type(label) is not str or len(label) > MAX_LABEL_VALUE_LEN
                        or LABEL_KEY_RE.fullmatch(key) is None):
                    raise CodecError(f"invalid label {key!r}={label!r}")
        else:
            labels = NO_LABELS
        return Sample(node, kind, ts, seq, epoch, values, labels)

    def _check_header(self, version: object, node: object, kind: object, ts: object,
                      seq: object, epoch: object) -> float:
        """The slow path of the header checks: raise CodecError naming the first bad field."""
        if version != FORMAT_VERSION or type(version) is not int:
            raise CodecError(f"unknown sample format version {version!r}")
        if type(ts) is int:
            ts = float(ts)
        if type(ts) is not float or not 0 <= ts < math.inf:
            raise CodecError(f"invalid ts {ts!r}")
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            raise CodecError(f"invalid seq {seq!r}")
        if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
            raise CodecError(f"invalid epoch {epoch!r}")
        self._topic(node, kind)
        return ts

    def _topic(self, node: object, kind: object) -> None:
        """Validate a node and kind pair and remember it."""
        if type(node) is not str or NODE_RE.fullmatch(node) is None:
            raise CodecError(f"invalid node {node!r}")
        if type(kind) is not str or KIND_RE.fullmatch(kind) is None:
            raise CodecError(f"invalid kind {kind!r}")
        if len(self._topics) >= _TOPIC_CACHE_CAP:
            self._topics.clear()
        self._topics.add((node, kind))

    def _schema(self, names: str) -> tuple[str, ...]:
        """Validate a joined name string, remember it, and return its names."""
        keys = tuple(names.split(" ")) if names else ()
        if len(keys) > self.limits.max_fields:
            raise CodecError(f"{len(keys)} values; limit is {self.limits.max_fields}")
        for name in keys:
            if METRIC_RE.fullmatch(name) is None:
                raise CodecError(f"invalid metric name {name!r}")
        if len(set(keys)) != len(keys):
            raise CodecError("duplicate metric name")
        if len(self._schemas) >= _SCHEMA_CACHE_CAP:
            self._schemas.clear()
        self._schemas[names] = keys
        return keys


def _sum_is_finite(numbers: list[Any]) -> bool:
    """True when the numbers add up to a finite number: no NaN, no infinity, no str or None.

    Enough for encoding (a bool that passes is sent as a msgpack bool and read back as 0/1).
    """
    try:
        return math.isfinite(sum(numbers))
    except (TypeError, OverflowError):
        return False


def values_from(values: Mapping[str, Number]) -> dict[str, Number]:
    """A plain dict of ``values`` (for callers that hold a read-only mapping)."""
    return dict(values)


_default = SampleCodec()
encode = _default.encode
decode = _default.decode
