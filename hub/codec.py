"""The msgpack wire format of a sample, with strict limits: decoding any byte string returns a
valid Sample or raises CodecError, and encoding never writes what a decoder would refuse.

Format 1 is ``[1, node, kind, ts, seq, epoch, "name name ...", [values ...], {labels}]``;
docs/model.md says why this layout, and how its caches keep it fast.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from hub.errors import CodecError, ConfigError, ValidationError
from hub.names import KIND_RE, LABEL_KEY_RE, MAX_LABEL_VALUE_LEN, METRIC_RE, NODE_RE
from hub.sample import MAX_EPOCH, MAX_SEQ, NO_LABELS, Number, Sample, check_value

FORMAT_VERSION: Final = 1
_INF: Final = math.inf
_EMPTY_MAP: Final[dict[str, str]] = {}
_unpackb = msgpack.unpackb
_isfinite = math.isfinite
_positive = operator.pos  # int -> itself, float -> itself, bool -> 0/1 int
_tuple_new = tuple.__new__  # Sample(...) runs a Python-level __new__; this is C

# A schema: the joined metric names and the names themselves.
_Schema = tuple[str, tuple[str, ...]]

# Cache bounds: entries, and approximate bytes held (per cache). A cache that is full is
# cleared, not trimmed: under a flood of distinct schemas or topics no eviction order helps,
# and clearing keeps the common path free of bookkeeping.
DEFAULT_SCHEMA_CACHE_SIZE: Final = 4096
DEFAULT_TOPIC_CACHE_SIZE: Final = 100_000
DEFAULT_CACHE_BYTES: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CodecLimits:
    """What a codec accepts; anything larger is a CodecError."""

    max_size: int = 64 * 1024
    max_fields: int = 1024
    max_labels: int = 32

    def __post_init__(self) -> None:
        for name, minimum in (("max_size", 1), ("max_fields", 0), ("max_labels", 0)):
            value = getattr(self, name)
            if type(value) is not int or value < minimum:
                raise ConfigError(f"CodecLimits.{name} must be an integer >= {minimum}")


DEFAULT_LIMITS = CodecLimits()


def _no_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"msgpack ext type {code} is not allowed")


class SampleCodec:
    """Encodes and decodes samples under one set of limits; reuse one per process.

    Not for concurrent use from several threads (its caches are plain dicts); asyncio code
    calls it from one thread.
    """

    def __init__(
        self,
        limits: CodecLimits = DEFAULT_LIMITS,
        *,
        schema_cache_size: int = DEFAULT_SCHEMA_CACHE_SIZE,
        topic_cache_size: int = DEFAULT_TOPIC_CACHE_SIZE,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        for name, size in (("schema_cache_size", schema_cache_size),
                           ("topic_cache_size", topic_cache_size), ("cache_bytes", cache_bytes)):
            if type(size) is not int or size < 1:
                raise ConfigError(f"SampleCodec {name} must be a positive integer")
        self.limits = limits
        self._max_size = limits.max_size
        self._pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
        # Validated schemas by their joined names.
        self._schemas: dict[str, _Schema] = {}
        # Validated (node, kind) -> the schema it last used. A topic's names rarely change,
        # so comparing with its last schema replaces hashing a 1 KB string (decode) or a
        # tuple of 40 names (encode) on every sample.
        self._topics: dict[tuple[str, str], _Schema] = {}
        self._schema_bytes = 0  # approximate bytes held by each cache
        self._topic_bytes = 0
        self._schema_cache_size = schema_cache_size
        self._topic_cache_size = topic_cache_size
        self._cache_bytes_cap = cache_bytes

    def cache_info(self) -> dict[str, int]:
        """Sizes of the validation caches (for a process's own metrics and for tests)."""
        return {
            "schemas": len(self._schemas),
            "schema_bytes": self._schema_bytes,
            "topics": len(self._topics),
            "topic_bytes": self._topic_bytes,
        }

    # -- encoding -------------------------------------------------------------------------
    def encode(self, sample: Sample) -> bytes:
        """Return the msgpack bytes of ``sample``; raises CodecError if it is invalid or too big.

        Checks everything the decoder checks, so whatever this returns decodes again (a
        Sample made without ``Sample.build`` is validated here).
        """
        try:
            node, kind, ts, seq, epoch, values, labels = sample
            keys = tuple(values)
            last = self._topics.get((node, kind))
            if last is not None and keys == last[1]:
                names = last[0]
            else:
                names = self._encoding_schema(node, kind, keys)
            numbers = list(values.values())
            if len(numbers) != len(keys):
                raise CodecError("values changed while encoding")
            try:
                finite = _isfinite(sum(numbers, 0.0))
            except (TypeError, OverflowError):
                finite = False
            if not finite:
                for name, value in values.items():
                    check_value(name, value)
            if (type(ts) is not float or not 0.0 <= ts < _INF
                    or type(seq) is not int or not 0 <= seq <= MAX_SEQ
                    or type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH):
                ts = _check_header(FORMAT_VERSION, ts, seq, epoch)
            labels = self._check_labels(labels) if labels else _EMPTY_MAP
            data: bytes = self._pack(
                [FORMAT_VERSION, node, kind, ts, seq, epoch, names, numbers, labels]
            )
        except (ValidationError, CodecError) as exc:
            raise CodecError(f"cannot encode sample: {exc}") from exc
        except (TypeError, ValueError, OverflowError, AttributeError) as exc:
            # not a Sample or a mapping, a value msgpack cannot pack, an int beyond 64 bits,
            # a string that is not UTF-8
            raise CodecError(f"cannot encode sample: {type(exc).__name__}: {exc}") from exc
        if len(data) > self._max_size:
            raise CodecError(f"encoded sample is {len(data)} bytes; limit is {self._max_size}")
        return data

    # -- decoding -------------------------------------------------------------------------
    def decode(self, data: bytes | bytearray | memoryview) -> Sample:
        """Return the Sample in ``data``; raises CodecError (only) for anything invalid."""
        if type(data) is not bytes:
            data = _as_bytes(data)
        if len(data) > self._max_size:
            raise CodecError(f"{len(data)} bytes exceeds the {self._max_size}-byte limit")
        try:
            # The max_*_len of unpackb default to len(data), which the size check bounds;
            # the field and label limits are checked below, on the decoded values.
            obj = _unpackb(data, ext_hook=_no_ext, max_bin_len=0, max_ext_len=0)
        except CodecError:
            raise
        except Exception as exc:  # msgpack raises a dozen types; all mean "not a sample"
            raise CodecError(f"not msgpack: {type(exc).__name__}: {exc}") from exc
        if type(obj) is not list or len(obj) != 9:
            raise CodecError("not a sample: expected an array of 9 items")
        version, node, kind, ts, seq, epoch, names, numbers, labels = obj
        # The common case in a few checks: a known topic with its usual names and plain
        # numbers; anything else falls to the slow paths, which name what is wrong.
        try:
            last = self._topics[node, kind]
        except (KeyError, TypeError):  # TypeError: a node or kind that is a list or a map
            last = None
        if (last is None or type(version) is not int or version != FORMAT_VERSION
                or type(ts) is not float or not 0.0 <= ts < _INF
                or type(seq) is not int or not 0 <= seq <= MAX_SEQ
                or type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH):
            ts = _check_header(version, ts, seq, epoch)
            if last is None:
                _check_topic(node, kind)
        if last is not None and names == last[0]:
            keys = last[1]
        else:
            keys = self._decoding_schema(node, kind, names)
        if type(numbers) is not list or len(numbers) != len(keys):
            raise CodecError(f"{len(keys)} names but values are not a list of as many numbers")
        try:
            # A finite sum rules out NaN, infinities and every non-number msgpack can
            # produce but bool, which _positive turns into 0 or 1.
            plain = _isfinite(sum(numbers, 0.0))
        except (TypeError, OverflowError):
            plain = False
        if plain:
            values = dict(zip(keys, map(_positive, numbers), strict=False))  # lengths checked
        else:
            try:
                pairs = zip(keys, numbers, strict=True)
                values = {name: check_value(name, value) for name, value in pairs}
            except ValidationError as exc:
                raise CodecError(str(exc)) from exc
        if labels:
            labels = self._check_labels(labels)
        elif type(labels) is dict:
            labels = NO_LABELS
        else:
            raise CodecError("invalid labels: expected a map")
        return _tuple_new(Sample, (node, kind, ts, seq, epoch, values, labels))

    # -- the slow paths: validate, name what is wrong, remember what is right ---------------
    def _decoding_schema(self, node: str, kind: str, names: object) -> tuple[str, ...]:
        """Validate the joined names of a decoded sample; remember them for its topic."""
        if type(names) is not str:
            raise CodecError("invalid names: expected a string of metric names")
        schema = self._schemas.get(names)
        if schema is None:
            if names and names.count(" ") >= self.limits.max_fields:  # count before split
                raise CodecError(f"more than {self.limits.max_fields} values")
            schema = self._add_schema(names, tuple(names.split(" ")) if names else ())
        self._remember_topic(node, kind, schema, 0)
        return schema[1]

    def _encoding_schema(self, node: str, kind: str, keys: tuple[str, ...]) -> str:
        """Validate the topic and names of a sample to encode; remember them for its topic."""
        if len(keys) > self.limits.max_fields:
            raise CodecError(f"sample has {len(keys)} values; limit is {self.limits.max_fields}")
        if (node, kind) not in self._topics:
            _check_topic(node, kind)
        for name in keys:
            if not isinstance(name, str):
                raise CodecError(f"invalid metric name {name!r}")
        exact = all(type(name) is str for name in keys)
        names = " ".join(keys)
        schema = self._schemas.get(names)
        if schema is None:
            # str subclasses (enums) are cached as plain str: decoding hands them out as keys
            schema = self._add_schema(names, keys if exact else tuple(map(str.__str__, keys)))
        elif schema[1] != keys:  # a name with a space in it joins like two names
            raise CodecError(f"invalid metric names {keys!r}")
        if exact:
            # Keep the caller's own name objects: next time they compare by identity. They
            # cost the tuple and, at worst, the names themselves.
            self._remember_topic(node, kind, (schema[0], keys), 64 + 8 * len(keys) + len(names))
        else:
            self._remember_topic(node, kind, schema, 0)
        return schema[0]

    def _add_schema(self, names: str, keys: tuple[str, ...]) -> _Schema:
        """Validate a schema and cache it if it fits the budget."""
        for name in keys:
            if METRIC_RE.fullmatch(name) is None:
                raise CodecError(f"invalid metric name {name!r}")
        if len(set(keys)) != len(keys):
            raise CodecError("duplicate metric name")
        schema = (names, keys)
        cost = 200 + len(names) + 8 * len(keys)
        if cost <= self._cache_bytes_cap:  # else: valid, but too big to keep
            if (len(self._schemas) >= self._schema_cache_size
                    or self._schema_bytes + cost > self._cache_bytes_cap):
                # Topics hold schemas, so they go too: what is cached stays within budget.
                self._clear_topics()
                self._schemas.clear()
                self._schema_bytes = 0
            self._schemas[names] = schema
            self._schema_bytes += cost
        return schema

    def _remember_topic(self, node: str, kind: str, schema: _Schema, cost: int) -> None:
        """Remember a validated topic with the schema it last used, if that schema is cached."""
        if self._schemas.get(schema[0]) is None:
            return  # too big to cache: keeping it here would hold it outside the budget
        if (len(self._topics) >= self._topic_cache_size
                or self._topic_bytes + cost > self._cache_bytes_cap):
            self._clear_topics()
        self._topics[node, kind] = schema
        self._topic_bytes += cost

    def _clear_topics(self) -> None:
        self._topics.clear()
        self._topic_bytes = 0

    def _check_labels(self, labels: object) -> dict[str, str]:
        """Return ``labels`` as a dict if it is a valid, non-empty label map."""
        if not isinstance(labels, Mapping):
            raise CodecError("invalid labels: expected a map")
        if len(labels) > self.limits.max_labels:
            raise CodecError(f"{len(labels)} labels; limit is {self.limits.max_labels}")
        for key, label in labels.items():
            if (not isinstance(key, str) or LABEL_KEY_RE.fullmatch(key) is None
                    or not isinstance(label, str) or len(label) > MAX_LABEL_VALUE_LEN):
                raise CodecError(f"invalid label {key!r}={label!r}")
        return labels if type(labels) is dict else dict(labels)


def _check_header(version: object, ts: object, seq: object, epoch: object) -> float:
    """Raise CodecError naming the first bad header field; return ts as a float."""
    if type(version) is not int or version != FORMAT_VERSION:
        raise CodecError(f"unknown sample format version {version!r}")
    if type(ts) is int:
        ts = float(ts)
    if type(ts) is not float or not 0.0 <= ts < _INF:
        raise CodecError(f"invalid ts {ts!r}: a finite, non-negative epoch time")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise CodecError(f"invalid seq {seq!r}: an integer from 0 to {MAX_SEQ}")
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
        raise CodecError(f"invalid epoch {epoch!r}: an integer from 0 to {MAX_EPOCH}")
    return ts


def _check_topic(node: object, kind: object) -> None:
    if not isinstance(node, str) or NODE_RE.fullmatch(node) is None:
        raise CodecError(f"invalid node {node!r}")
    if not isinstance(kind, str) or KIND_RE.fullmatch(kind) is None:
        raise CodecError(f"invalid kind {kind!r}")


def _as_bytes(data: object) -> bytes:
    """The bytes of a bytearray or memoryview (anything else is a CodecError)."""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise CodecError(f"expected bytes, got {type(data).__name__}")


def values_from(values: Mapping[str, Number]) -> dict[str, Number]:
    """A plain dict of ``values`` (for callers that hold a read-only mapping)."""
    return dict(values)


_default = SampleCodec()
encode = _default.encode
decode = _default.decode
