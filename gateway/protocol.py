"""Client protocol v1 (shared/PROTOCOL.md) as values: parse client frames, build and encode replies.

Parsing turns one frame into a typed request or raises ProtocolError with the code to answer;
building returns plain dicts; encoding turns them into the bytes of a frame for either
subprotocol. Update and snapshot frames are encoded once per (message, encoding) and the same
bytes go to every connection (``UpdateMessage``, ``SnapshotMessage``).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from gateway import ErrorCode, FrameTooLarge, ProtocolError, RequestId
from gateway.cursor import EntryId, Positions, encode_cursor
from gateway.topics import TopicPattern, parse_pattern, parse_topic
from hub.errors import CodecError
from hub.sample import Sample

PROTOCOL_VERSION: Final = 1
MAX_SAFE_INT: Final = 2**53 - 1  # ids must survive a JavaScript client's number type


class Encoding(enum.StrEnum):
    """A subprotocol, named as on the wire; JSON travels in text frames, msgpack in binary."""

    JSON = "mh.v1.json"
    MSGPACK = "mh.v1.msgpack"

    @property
    def is_text(self) -> bool:
        """Whether frames of this encoding go out as text frames (``send(data, text=True)``)."""
        return self is Encoding.JSON


SUBPROTOCOLS: Final = (Encoding.JSON, Encoding.MSGPACK)


def choose_subprotocol(offered: Sequence[str]) -> Encoding | None:
    """The subprotocol to answer a handshake with: the client's first one we speak, else None.

    None with nothing offered means JSON without a header (PROTOCOL.md's default); None when
    the client offered only others means the client will not accept us (browsers fail the
    handshake themselves), so the caller may reject it early.
    """
    for name in offered:
        if name in _BY_NAME:
            return _BY_NAME[name]
    return None


def encoding_for(subprotocol: str | None) -> Encoding:
    """The encoding of a connection from its negotiated subprotocol (None: the JSON default)."""
    return _BY_NAME.get(subprotocol or "", Encoding.JSON)


_BY_NAME: Final = {e.value: e for e in Encoding}


class CloseCode(enum.IntEnum):
    """The WebSocket close codes PROTOCOL.md assigns."""

    NORMAL = 1000
    DRAINING = 1001
    FRAME_TOO_LARGE = 1009
    TRY_AGAIN_LATER = 1013  # slow consumer, or the gateway is over capacity
    UNAUTHORIZED = 4001
    FORBIDDEN = 4003
    POLICY_VIOLATION = 4008


class ResetReason(enum.StrEnum):
    """The ``reason`` of a ``reset`` message."""

    CURSOR_INVALID = "cursor_invalid"  # garbled, another version or another shard count
    CURSOR_EXPIRED = "cursor_expired"  # older than the stream retention
    CURSOR_UNKNOWN = "cursor_unknown"  # ahead of every stream here (e.g. Redis was reset)
    REPLAY_LIMIT = "replay_limit"  # more updates to replay than the gateway's limit


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """What one request may ask for; docs/protocol-notes.md gives the reasons for defaults."""

    max_frame_bytes: int = 64 * 1024
    max_subscriptions: int = 256  # patterns per connection, so also per subscribe request
    min_throttle_ms: int = 0
    max_throttle_ms: int = 60_000
    default_throttle_ms: int = 0
    max_history_points: int = 10_000
    default_history_points: int = 1_000
    max_token_len: int = 4096
    max_id_len: int = 128

    def __post_init__(self) -> None:
        if not 0 <= self.min_throttle_ms <= self.default_throttle_ms <= self.max_throttle_ms:
            raise ValueError("need 0 <= min_throttle_ms <= default_throttle_ms <= max_throttle_ms")
        if not 1 <= self.default_history_points <= self.max_history_points:
            raise ValueError("need 1 <= default_history_points <= max_history_points")
        if self.max_frame_bytes < 1024 or self.max_subscriptions < 1:
            raise ValueError("max_frame_bytes must be >= 1024 and max_subscriptions >= 1")

    def effective_throttle_ms(self, requested: int | None) -> int:
        """The throttle a subscription gets: the request's, clamped to the allowed range."""
        if requested is None:
            return self.default_throttle_ms
        return min(max(requested, self.min_throttle_ms), self.max_throttle_ms)


DEFAULT_LIMITS: Final = ProtocolLimits()


# -- requests -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Subscribe:
    """``subscribe``: ``topics`` as the client wrote them, ``patterns`` parsed and deduplicated.

    ``throttle_ms`` is already the effective value (clamped by the limits); ``resume`` is the
    raw cursor, decoded by the caller (a bad one is answered with ``reset``, not an error).
    """

    id: RequestId
    topics: tuple[str, ...]
    patterns: tuple[TopicPattern, ...]
    throttle_ms: int
    snapshot: bool = True
    resume: str | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``unsubscribe``: the patterns to drop; patterns not held are ignored."""

    id: RequestId
    topics: tuple[str, ...]
    patterns: tuple[TopicPattern, ...]


@dataclass(frozen=True, slots=True)
class History:
    """``history`` of one concrete topic; ``max_points`` is already clamped by the limits."""

    id: RequestId
    node: str
    kind: str
    since: float
    until: float | None
    max_points: int


@dataclass(frozen=True, slots=True)
class Auth:
    """``auth`` with a bearer token."""

    id: RequestId
    token: str


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``: answered with ``pong``."""

    id: RequestId


Request = Subscribe | Unsubscribe | History | Auth | Ping


def check_subscription_count(
    held: Collection[TopicPattern], request: Subscribe, limits: ProtocolLimits = DEFAULT_LIMITS
) -> None:
    """Raise too_many_subscriptions if ``request`` would take a connection holding ``held``
    past ``limits.max_subscriptions`` patterns (re-subscribing a held pattern is free)."""
    total = len(held) + sum(1 for pattern in request.patterns if pattern not in held)
    if total > limits.max_subscriptions:
        raise ProtocolError(
            ErrorCode.TOO_MANY_SUBSCRIPTIONS,
            f"this would hold {total} subscriptions; the limit is {limits.max_subscriptions}",
            request.id,
        )


# -- JSON backend ---------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_STD_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_STD_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def std_json_dumps(obj: Any) -> bytes:
    """The stdlib encoder with the same output conventions as orjson (compact, UTF-8)."""
    return _STD_ENCODER.encode(obj).encode("utf-8")


def std_json_loads(data: str | bytes) -> Any:
    """The stdlib decoder, rejecting NaN and Infinity as orjson does."""
    return _STD_DECODER.decode(data.decode("utf-8") if isinstance(data, bytes) else data)


json_dumps: Callable[[Any], bytes]
json_loads: Callable[[str | bytes], Any]
try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; a bare install still works
    json_dumps, json_loads, JSON_BACKEND = std_json_dumps, std_json_loads, "json"
else:
    # About 11x faster than the stdlib on an update frame (docs/protocol-notes.md, figures).
    json_dumps, json_loads, JSON_BACKEND = orjson.dumps, orjson.loads, "orjson"


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


# -- parsing --------------------------------------------------------------------------------
def parse_request(
    frame: str | bytes, encoding: Encoding, limits: ProtocolLimits = DEFAULT_LIMITS
) -> Request:
    """Parse one client frame into a request.

    Raises FrameTooLarge (close with 1009) for a frame over ``limits.max_frame_bytes``, and
    ProtocolError with the code to answer for everything else that is not a valid request.
    Fields the protocol does not define are ignored, so newer clients work with this gateway.
    """
    obj = _load(frame, encoding, limits)
    if type(obj) is not dict:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a request must be an object with an 'op'")
    request_id = _request_id(obj.get("id"), limits)
    op = obj.get("op")
    parser = _PARSERS.get(op) if isinstance(op, str) else None
    if parser is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_OP,
            f"unknown op {op!r}: expected one of {', '.join(sorted(_PARSERS))}",
            request_id,
        )
    return parser(obj, request_id, limits)


def _load(frame: str | bytes, encoding: Encoding, limits: ProtocolLimits) -> Any:
    if isinstance(frame, str):
        # A str is at most 4 bytes per character; only measure exactly near the limit.
        size = len(frame)
        if size * 4 > limits.max_frame_bytes:
            size = len(frame.encode("utf-8", "surrogatepass"))
    elif isinstance(frame, bytes | bytearray | memoryview):
        size = len(frame)
    else:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a frame is text or bytes")
    if size > limits.max_frame_bytes:
        raise FrameTooLarge(size, limits.max_frame_bytes)
    if encoding is Encoding.JSON:
        # A binary frame on the JSON subprotocol is read as UTF-8 JSON: lenient, and harmless.
        data = bytes(frame) if isinstance(frame, bytearray | memoryview) else frame
        try:
            return json_loads(data)
        except Exception as exc:  # the decoders raise several types; all mean "not JSON"
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"not JSON: {exc}") from exc
    if isinstance(frame, str):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "mh.v1.msgpack requests travel in binary frames"
        )
    try:
        return msgpack.unpackb(
            frame, raw=False, strict_map_key=True, use_list=True, ext_hook=_no_ext,
            max_str_len=limits.max_frame_bytes, max_bin_len=limits.max_frame_bytes,
            max_array_len=limits.max_frame_bytes, max_map_len=limits.max_frame_bytes,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a dozen types; all mean "not msgpack"
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"not msgpack: {exc}") from exc


def _request_id(value: object, limits: ProtocolLimits) -> RequestId:
    if value is None:
        return None
    if type(value) is int:
        if -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            return value
    elif type(value) is str and len(value) <= limits.max_id_len:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return value
    raise ProtocolError(
        ErrorCode.BAD_REQUEST,
        f"'id' must be an integer within +-(2**53-1) or a string of at most "
        f"{limits.max_id_len} characters",
    )


def _parse_subscribe(obj: dict[str, Any], rid: RequestId, limits: ProtocolLimits) -> Subscribe:
    topics, patterns = _patterns(obj, rid, limits)
    throttle = obj.get("throttle_ms")
    if throttle is not None and (type(throttle) is not int or throttle < 0):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "'throttle_ms' must be a non-negative integer", rid
        )
    snapshot = obj.get("snapshot", True)
    if snapshot is None:
        snapshot = True
    if type(snapshot) is not bool:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'snapshot' must be true or false", rid)
    resume = obj.get("resume")
    if resume is not None and type(resume) is not str:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'resume' must be a cursor string", rid)
    return Subscribe(
        rid, topics, patterns, limits.effective_throttle_ms(throttle), snapshot, resume
    )


def _parse_unsubscribe(
    obj: dict[str, Any], rid: RequestId, limits: ProtocolLimits
) -> Unsubscribe:
    topics, patterns = _patterns(obj, rid, limits)
    return Unsubscribe(rid, topics, patterns)


def _patterns(
    obj: dict[str, Any], rid: RequestId, limits: ProtocolLimits
) -> tuple[tuple[str, ...], tuple[TopicPattern, ...]]:
    topics = obj.get("topics")
    if type(topics) is not list or not topics:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "'topics' must be a non-empty list of topic patterns", rid
        )
    if len(topics) > limits.max_subscriptions:
        raise ProtocolError(
            ErrorCode.TOO_MANY_SUBSCRIPTIONS,
            f"{len(topics)} topics in one request; the limit is {limits.max_subscriptions}",
            rid,
        )
    patterns: dict[TopicPattern, None] = {}
    for topic in topics:
        try:
            patterns[parse_pattern(topic)] = None
        except ProtocolError as exc:
            raise ProtocolError(exc.code, exc.message, rid) from None
    return tuple(topics), tuple(patterns)


def _parse_history(obj: dict[str, Any], rid: RequestId, limits: ProtocolLimits) -> History:
    try:
        node, kind = parse_topic(obj.get("topic"))
    except ProtocolError as exc:
        raise ProtocolError(exc.code, exc.message, rid) from None
    since = _epoch(obj.get("since"), "since", rid)
    until = obj.get("until")
    if until is not None:
        until = _epoch(until, "until", rid)
    if until is not None and until < since:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'until' is before 'since'", rid)
    max_points = obj.get("max_points")
    if max_points is None:
        max_points = limits.default_history_points
    elif type(max_points) is not int or max_points < 1:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'max_points' must be a positive integer", rid)
    return History(rid, node, kind, since, until, min(max_points, limits.max_history_points))


def _epoch(value: object, name: str, rid: RequestId) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"'{name}' must be a time in epoch seconds", rid
        )
    return float(value)


def _parse_auth(obj: dict[str, Any], rid: RequestId, limits: ProtocolLimits) -> Auth:
    token = obj.get("token")
    if type(token) is not str or not token or len(token) > limits.max_token_len:
        # Never echo the token: it is a secret even when malformed.
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"'token' must be a non-empty string of at most {limits.max_token_len} characters",
            rid,
        )
    return Auth(rid, token)


def _parse_ping(obj: dict[str, Any], rid: RequestId, limits: ProtocolLimits) -> Ping:
    return Ping(rid)


_PARSERS: Final[dict[str, Callable[[dict[str, Any], RequestId, ProtocolLimits], Request]]] = {
    "subscribe": _parse_subscribe,
    "unsubscribe": _parse_unsubscribe,
    "history": _parse_history,
    "auth": _parse_auth,
    "ping": _parse_ping,
}


# -- server messages ------------------------------------------------------------------------
def welcome_message(gateway: str, server_time: float, heartbeat_s: int) -> dict[str, Any]:
    """``welcome``: the first message of every connection."""
    return {"type": "welcome", "protocol": PROTOCOL_VERSION, "gateway": gateway,
            "server_time": server_time, "heartbeat_s": heartbeat_s}


def ack_message(request_id: RequestId, **fields: Any) -> dict[str, Any]:
    """``ack`` of a request, with the fields of its result."""
    return {"type": "ack", "id": request_id, **fields}


def subscribe_ack(
    request_id: RequestId, topics: Sequence[str], throttle_ms: int
) -> dict[str, Any]:
    """``ack`` of a subscribe: the topics as the client wrote them and the effective throttle."""
    return {"type": "ack", "id": request_id, "topics": list(topics), "throttle_ms": throttle_ms}


def error_message(request_id: RequestId, code: ErrorCode, message: str) -> dict[str, Any]:
    """``error`` answering a request (``id`` null when the request's could not be read)."""
    return {"type": "error", "id": request_id, "code": code.value, "message": message}


def error_from(exc: ProtocolError) -> dict[str, Any]:
    """The ``error`` message answering a ProtocolError."""
    return error_message(exc.request_id, exc.code, exc.message)


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    # orjson and msgpack serialise dict only (a sample may hold a read-only mapping).
    return mapping if type(mapping) is dict else dict(mapping)


def snapshot_message(sample: Sample) -> dict[str, Any]:
    """``snapshot`` of a cached sample (with ``labels`` when it has some, as ``update``)."""
    message = {"type": "snapshot", "node": sample.node, "kind": sample.kind, "ts": sample.ts,
               "seq": sample.seq, "epoch": sample.epoch, "values": _plain(sample.values)}
    if sample.labels:
        message["labels"] = _plain(sample.labels)
    return message


def update_message(sample: Sample, cursor: str) -> dict[str, Any]:
    """``update`` of a sample with its resume cursor."""
    message = {"type": "update", "node": sample.node, "kind": sample.kind, "ts": sample.ts,
               "seq": sample.seq, "epoch": sample.epoch, "cursor": cursor,
               "values": _plain(sample.values)}
    if sample.labels:
        message["labels"] = _plain(sample.labels)
    return message


def history_message(
    request_id: RequestId, node: str, kind: str,
    points: Iterable[tuple[float, Mapping[str, float | int]]],
) -> dict[str, Any]:
    """``history``: the points of one topic, ``[[ts, {values}], ...]`` in ascending ts."""
    return {"type": "history", "id": request_id, "node": node, "kind": kind,
            "points": [[ts, _plain(values)] for ts, values in points]}


def alert_message(
    rule: str, node: str, state: str, severity: str, value: float, ts: float, message: str
) -> dict[str, Any]:
    """``alert``: a rule firing or resolving on a node."""
    if state not in ("firing", "resolved"):
        raise ValueError(f"alert state must be 'firing' or 'resolved', not {state!r}")
    return {"type": "alert", "rule": rule, "node": node, "state": state, "severity": severity,
            "value": value, "ts": ts, "message": message}


def reset_message(reason: ResetReason) -> dict[str, Any]:
    """``reset``: the resume cursor cannot be served; snapshots follow."""
    return {"type": "reset", "reason": reason.value}


def pong_message(request_id: RequestId, server_time: float) -> dict[str, Any]:
    """``pong`` answering a ping."""
    return {"type": "pong", "id": request_id, "server_time": server_time}


def batch_message(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``batch`` of messages in one frame (see ``encode_batch`` for already encoded ones)."""
    return {"type": "batch", "items": list(items)}


# -- encoding -------------------------------------------------------------------------------
def encode(message: Mapping[str, Any], encoding: Encoding) -> bytes:
    """The frame bytes of ``message``: UTF-8 JSON (send as text) or msgpack (send as binary).

    Raises CodecError when the message holds something the encoding cannot carry.
    """
    try:
        if encoding is Encoding.JSON:
            return json_dumps(message)
        data: bytes = _packer.pack(message)
        return data
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode a {message.get('type')!r} message: {exc}") from exc


_JSON_BATCH_HEAD: Final = b'{"type":"batch","items":['
_MSGPACK_BATCH_HEAD: Final = msgpack.packb({"type": "batch", "items": []})[:-1]  # minus "[]"


def encode_batch(frames: Sequence[bytes], encoding: Encoding) -> bytes:
    """One ``batch`` frame from already encoded frames, by splicing (nothing is re-encoded)."""
    if encoding is Encoding.JSON:
        return b"".join((_JSON_BATCH_HEAD, b",".join(frames), b"]}"))
    count = len(frames)
    if count < 16:
        header = bytes((0x90 | count,))
    elif count < 0x10000:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return b"".join((_MSGPACK_BATCH_HEAD, header, *frames))


def decode_frame(data: str | bytes, encoding: Encoding) -> Any:
    """Decode a server frame (for clients, tests and the benchmark; no limits applied)."""
    if encoding is Encoding.JSON:
        return json_loads(data)
    return msgpack.unpackb(data, raw=False)


def encode_update(sample: Sample, cursor: str, encoding: Encoding) -> bytes:
    """The frame of one update (uncached; ``UpdateMessage.frame`` caches it per message)."""
    return encode(update_message(sample, cursor), encoding)


class UpdateMessage:
    """One stream entry on its way to clients: its sample, position, and frames made once.

    ``positions`` is the reader's vector right after this entry (its cursor). ``frame`` is
    encoded on first use per encoding and shared by every connection that sends it.
    """

    __slots__ = ("shard", "entry_id", "sample", "positions", "_cursor", "_json", "_msgpack")

    def __init__(
        self, shard: int, entry_id: EntryId, sample: Sample, positions: Positions
    ) -> None:
        self.shard = shard
        self.entry_id = entry_id
        self.sample = sample
        self.positions = positions
        self._cursor: str | None = None
        self._json: bytes | None = None
        self._msgpack: bytes | None = None

    @property
    def cursor(self) -> str:
        """The encoded cursor of ``positions`` (computed once)."""
        cursor = self._cursor
        if cursor is None:
            cursor = self._cursor = encode_cursor(self.positions)
        return cursor

    def frame(self, encoding: Encoding) -> bytes:
        """The update frame in ``encoding``, encoded once; raises CodecError if it cannot be."""
        if encoding is Encoding.JSON:
            if self._json is None:
                self._json = encode_update(self.sample, self.cursor, encoding)
            return self._json
        if self._msgpack is None:
            self._msgpack = encode_update(self.sample, self.cursor, encoding)
        return self._msgpack

    def frame_with_cursor(self, encoding: Encoding, cursor: str) -> bytes:
        """This update with another connection's cursor (not cached: a rare, per-client frame)."""
        return encode_update(self.sample, cursor, encoding)

    def with_positions(self, positions: Positions) -> UpdateMessage:
        """The same entry carrying another vector (a per-connection replay cursor)."""
        return UpdateMessage(self.shard, self.entry_id, self.sample, positions)

    def __repr__(self) -> str:
        ms, seq = self.entry_id
        return f"UpdateMessage({self.shard}, {ms}-{seq}, {self.sample.topic!r})"


class SnapshotMessage:
    """A cached sample's ``snapshot`` frames, made once per encoding and shared."""

    __slots__ = ("sample", "_json", "_msgpack")

    def __init__(self, sample: Sample) -> None:
        self.sample = sample
        self._json: bytes | None = None
        self._msgpack: bytes | None = None

    def frame(self, encoding: Encoding) -> bytes:
        """The snapshot frame in ``encoding``, encoded once; raises CodecError if it cannot be."""
        if encoding is Encoding.JSON:
            if self._json is None:
                self._json = encode(snapshot_message(self.sample), encoding)
            return self._json
        if self._msgpack is None:
            self._msgpack = encode(snapshot_message(self.sample), encoding)
        return self._msgpack


Outgoing = bytes | UpdateMessage | SnapshotMessage
"""What a connection's outbound queue holds: an encoded control frame or a shared message."""


def render_frame(
    item: Outgoing, encoding: Encoding, cursor_from: Outgoing | None = None
) -> bytes:
    """The bytes to send for a queued item (``OutboundQueue.take`` gives ``cursor_from``).

    An update sent after a newer one carries the newer one's cursor (a per-connection frame);
    everything else is the shared frame. Raises CodecError if the item cannot be encoded.
    """
    if isinstance(item, bytes):
        return item
    if isinstance(item, UpdateMessage) and isinstance(cursor_from, UpdateMessage):
        return item.frame_with_cursor(encoding, cursor_from.cursor)
    return item.frame(encoding)
