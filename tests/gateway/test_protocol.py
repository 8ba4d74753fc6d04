"""Client frames in, server messages out: parsing, every error code, encodings and batches."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import ErrorCode, FrameTooLarge, ProtocolError
from gateway.cursor import decode_cursor, encode_cursor
from gateway.protocol import (
    JSON_BACKEND,
    CloseCode,
    Encoding,
    History,
    Ping,
    ProtocolLimits,
    ResetReason,
    SnapshotMessage,
    Subscribe,
    Unsubscribe,
    UpdateMessage,
    ack_message,
    alert_message,
    batch_message,
    check_subscription_count,
    choose_subprotocol,
    decode_frame,
    encode,
    encode_batch,
    encode_update,
    encoding_for,
    error_from,
    error_message,
    history_message,
    parse_request,
    pong_message,
    render_frame,
    reset_message,
    snapshot_message,
    std_json_dumps,
    std_json_loads,
    subscribe_ack,
    update_message,
    welcome_message,
)
from gateway.topics import parse_pattern
from hub.errors import CodecError
from hub.sample import Sample

SAMPLE = Sample.build(
    "web-1", "system", {"cpu_percent": 12.5, "mem_used_bytes": 2**40, "load1": 0.0},
    seq=42, epoch=7, ts=1_700_000_000.25,
)
LABELLED = Sample.build(
    "web-1", "app", {"requests_total": 10}, seq=1, epoch=1, ts=1.0, labels={"env": "prod"}
)
POSITIONS = ((1_700_000_000_000, 0), (1_699_999_999_000, 3))


def req(encoding: Encoding, obj: Any) -> str | bytes:
    """A client frame of ``obj`` as a client of ``encoding`` would send it."""
    if encoding is Encoding.JSON:
        return json.dumps(obj)
    data: bytes = msgpack.packb(obj)
    return data


def parse(obj: Any, encoding: Encoding = Encoding.JSON, **limits: int) -> Any:
    return parse_request(req(encoding, obj), encoding, ProtocolLimits(**limits))


def error_of(obj: Any, encoding: Encoding = Encoding.JSON, **limits: int) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(obj, encoding, **limits)
    return info.value


BOTH = pytest.mark.parametrize("encoding", [Encoding.JSON, Encoding.MSGPACK])


# -- subprotocols ------------------------------------------------------------------------------
def test_subprotocol_negotiation() -> None:
    """The client's first subprotocol we speak wins; none offered means the JSON default."""
    assert choose_subprotocol(["mh.v1.msgpack", "mh.v1.json"]) is Encoding.MSGPACK
    assert choose_subprotocol(["chat", "mh.v1.json"]) is Encoding.JSON
    assert choose_subprotocol(["chat"]) is None
    assert choose_subprotocol([]) is None
    assert encoding_for(None) is Encoding.JSON
    assert encoding_for("mh.v1.msgpack") is Encoding.MSGPACK
    assert Encoding.JSON.is_text
    assert not Encoding.MSGPACK.is_text
    assert int(CloseCode.TRY_AGAIN_LATER) == 1013
    assert int(CloseCode.POLICY_VIOLATION) == 4008


# -- valid requests ----------------------------------------------------------------------------
@BOTH
def test_subscribe_with_every_field(encoding: Encoding) -> None:
    """A full subscribe parses into a typed request with parsed, deduplicated patterns."""
    request = parse(
        {"op": "subscribe", "id": 3, "topics": ["*", "*/*", "web-1/system"],
         "throttle_ms": 250, "snapshot": False, "resume": "AQ"},
        encoding,
    )
    assert request == Subscribe(
        3, ("*", "*/*", "web-1/system"), (parse_pattern("*"), parse_pattern("web-1/system")),
        250, False, "AQ",
    )


def test_subscribe_defaults() -> None:
    """Without optional fields: default throttle, snapshots on, no resume; null means absent."""
    request = parse({"op": "subscribe", "id": 1, "topics": ["a/b"]})
    assert isinstance(request, Subscribe)
    assert (request.throttle_ms, request.snapshot, request.resume) == (0, True, None)
    request = parse({"op": "subscribe", "topics": ["a/b"], "throttle_ms": None,
                     "snapshot": None, "resume": None, "extra": {"ignored": True}})
    assert isinstance(request, Subscribe)
    assert (request.id, request.throttle_ms, request.snapshot) == (None, 0, True)


def test_throttle_is_clamped_to_the_limits() -> None:
    """The effective throttle is the request's, clamped into [min, max]."""
    limits = ProtocolLimits(min_throttle_ms=50, default_throttle_ms=100, max_throttle_ms=1000)
    for throttle, effective in ((None, 100), (0, 50), (70, 70), (10**9, 1000)):
        frame = json.dumps({"op": "subscribe", "topics": ["a/b"], "throttle_ms": throttle})
        request = parse_request(frame, Encoding.JSON, limits)
        assert isinstance(request, Subscribe)
        assert request.throttle_ms == effective


@BOTH
def test_other_ops(encoding: Encoding) -> None:
    """unsubscribe, history, auth and ping parse with their fields; ids may be strings."""
    assert parse({"op": "unsubscribe", "id": "u1", "topics": ["a/*"]}, encoding) == Unsubscribe(
        "u1", ("a/*",), (parse_pattern("a/*"),)
    )
    assert parse({"op": "history", "id": 2, "topic": "web-1/system", "since": 10,
                  "until": 20.5, "max_points": 50}, encoding) == History(
        2, "web-1", "system", 10.0, 20.5, 50
    )
    history = parse({"op": "history", "id": 2, "topic": "a/b", "since": 0}, encoding)
    assert (history.until, history.max_points) == (None, 1000)
    assert parse({"op": "history", "topic": "a/b", "since": 1, "max_points": 10**9},
                 encoding).max_points == 10_000
    auth = parse({"op": "auth", "id": 4, "token": "secret"}, encoding)
    assert auth.token == "secret"
    assert parse({"op": "ping", "id": 5}, encoding) == Ping(5)
    assert parse({"op": "ping"}, encoding) == Ping(None)


def test_binary_json_frames_are_read_as_utf8() -> None:
    """A JSON client sending a binary frame is understood (lenient, harmless)."""
    frame = json.dumps({"op": "ping", "id": 1}).encode()
    assert parse_request(frame, Encoding.JSON) == Ping(1)
    assert parse_request(bytearray(frame), Encoding.JSON) == Ping(1)  # type: ignore[arg-type]


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("obj", "code", "request_id"),
    [
        ([1, 2], ErrorCode.BAD_REQUEST, None),
        ("ping", ErrorCode.BAD_REQUEST, None),
        ({"id": 1}, ErrorCode.UNKNOWN_OP, 1),
        ({"op": "publish", "id": 2}, ErrorCode.UNKNOWN_OP, 2),
        ({"op": 7, "id": 3}, ErrorCode.UNKNOWN_OP, 3),
        ({"op": "SUBSCRIBE", "id": 3}, ErrorCode.UNKNOWN_OP, 3),
        ({"op": "ping", "id": 1.5}, ErrorCode.BAD_REQUEST, None),
        ({"op": "ping", "id": True}, ErrorCode.BAD_REQUEST, None),
        ({"op": "ping", "id": 2**53}, ErrorCode.BAD_REQUEST, None),
        ({"op": "ping", "id": "x" * 129}, ErrorCode.BAD_REQUEST, None),
        ({"op": "ping", "id": [1]}, ErrorCode.BAD_REQUEST, None),
        ({"op": "subscribe", "id": 1}, ErrorCode.BAD_REQUEST, 1),
        ({"op": "subscribe", "id": 1, "topics": "a/b"}, ErrorCode.BAD_REQUEST, 1),
        ({"op": "subscribe", "id": 1, "topics": []}, ErrorCode.BAD_REQUEST, 1),
        ({"op": "subscribe", "id": 1, "topics": [7]}, ErrorCode.INVALID_TOPIC, 1),
        ({"op": "subscribe", "id": 1, "topics": ["a/b", "bad"]}, ErrorCode.INVALID_TOPIC, 1),
        ({"op": "subscribe", "id": 1, "topics": ["a/B"]}, ErrorCode.INVALID_TOPIC, 1),
        ({"op": "subscribe", "id": 1, "topics": ["a/b"], "throttle_ms": -1},
         ErrorCode.BAD_REQUEST, 1),
        ({"op": "subscribe", "id": 1, "topics": ["a/b"], "throttle_ms": 2.5},
         ErrorCode.BAD_REQUEST, 1),
        ({"op": "subscribe", "id": 1, "topics": ["a/b"], "throttle_ms": True},
         ErrorCode.BAD_REQUEST, 1),
        ({"op": "subscribe", "id": 1, "topics": ["a/b"], "throttle_ms": "100"},
         ErrorCode.BAD_REQUEST, 1),
        ({"op": "subscribe", "id": 1, "topics": ["a/b"], "snapshot": 1},
         ErrorCode.BAD_REQUEST, 1),
        ({"op": "subscribe", "id": 1, "topics": ["a/b"], "resume": 5},
         ErrorCode.BAD_REQUEST, 1),
        ({"op": "unsubscribe", "id": 1, "topics": None}, ErrorCode.BAD_REQUEST, 1),
        ({"op": "unsubscribe", "id": 1, "topics": ["a//b"]}, ErrorCode.INVALID_TOPIC, 1),
        ({"op": "history", "id": 1, "since": 0}, ErrorCode.INVALID_TOPIC, 1),
        ({"op": "history", "id": 1, "topic": "a/*", "since": 0}, ErrorCode.INVALID_TOPIC, 1),
        ({"op": "history", "id": 1, "topic": "a/b"}, ErrorCode.BAD_REQUEST, 1),
        ({"op": "history", "id": 1, "topic": "a/b", "since": -1}, ErrorCode.BAD_REQUEST, 1),
        ({"op": "history", "id": 1, "topic": "a/b", "since": "0"}, ErrorCode.BAD_REQUEST, 1),
        ({"op": "history", "id": 1, "topic": "a/b", "since": True}, ErrorCode.BAD_REQUEST, 1),
        ({"op": "history", "id": 1, "topic": "a/b", "since": 5, "until": 4},
         ErrorCode.BAD_REQUEST, 1),
        ({"op": "history", "id": 1, "topic": "a/b", "since": 5, "until": "x"},
         ErrorCode.BAD_REQUEST, 1),
        ({"op": "history", "id": 1, "topic": "a/b", "since": 5, "max_points": 0},
         ErrorCode.BAD_REQUEST, 1),
        ({"op": "history", "id": 1, "topic": "a/b", "since": 5, "max_points": 1.0},
         ErrorCode.BAD_REQUEST, 1),
        ({"op": "auth", "id": 1}, ErrorCode.BAD_REQUEST, 1),
        ({"op": "auth", "id": 1, "token": ""}, ErrorCode.BAD_REQUEST, 1),
        ({"op": "auth", "id": 1, "token": 12345}, ErrorCode.BAD_REQUEST, 1),
        ({"op": "auth", "id": 1, "token": "t" * 4097}, ErrorCode.BAD_REQUEST, 1),
    ],
)
@BOTH
def test_every_malformed_request_gets_its_code(
    obj: Any, code: ErrorCode, request_id: Any, encoding: Encoding
) -> None:
    """Each malformed request raises ProtocolError with PROTOCOL.md's code and the id if read."""
    error = error_of(obj, encoding)
    assert error.code is code
    assert error.request_id == request_id
    assert error.close_code is None
    message = error_from(error)
    assert message == {"type": "error", "id": request_id, "code": code.value,
                       "message": error.message}


def test_too_many_topics_in_one_request() -> None:
    """More topics than max_subscriptions in one request is too_many_subscriptions."""
    error = error_of({"op": "subscribe", "id": 9, "topics": ["a/b"] * 4}, max_subscriptions=3)
    assert (error.code, error.request_id) == (ErrorCode.TOO_MANY_SUBSCRIPTIONS, 9)


def test_subscription_count_per_connection() -> None:
    """Held plus new patterns over the limit is too_many_subscriptions; held ones are free."""
    limits = ProtocolLimits(max_subscriptions=3)
    held = {parse_pattern("a/b"), parse_pattern("c/*")}
    request = parse_request('{"op":"subscribe","id":4,"topics":["a/b","*"]}', Encoding.JSON)
    assert isinstance(request, Subscribe)
    check_subscription_count(held, request, limits)
    held.add(parse_pattern("d/*"))
    with pytest.raises(ProtocolError) as info:
        check_subscription_count(held, request, limits)
    assert (info.value.code, info.value.request_id) == (ErrorCode.TOO_MANY_SUBSCRIPTIONS, 4)


def test_auth_errors_never_echo_the_token() -> None:
    """A rejected token does not appear in the error message."""
    error = error_of({"op": "auth", "id": 1, "token": "s3cr3t" * 1000})
    assert "s3cr3t" not in error.message


@pytest.mark.parametrize(
    "frame", ["", "{", "nul", "{'op': 'ping'}", '{"op": NaN}', '{"op":"ping","id":Infinity}',
              "[" * 100_00, b"\xff\xfe"],
)
def test_frames_that_are_not_json(frame: str | bytes) -> None:
    """Text that is not JSON is bad_request with a null id."""
    with pytest.raises(ProtocolError) as info:
        parse_request(frame, Encoding.JSON)
    assert (info.value.code, info.value.request_id) == (ErrorCode.BAD_REQUEST, None)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",  # never used in msgpack
        msgpack.packb({"op": "ping"}) + b"\x00",  # trailing data
        msgpack.packb(msgpack.ExtType(1, b"x")),
        msgpack.packb({1: "ping"}),  # non-string key
        msgpack.packb({"op": "ping", "id": b"\xff"}) [:-1],  # truncated
        b"\xa2\xff\xfe",  # invalid UTF-8 string
    ],
)
def test_frames_that_are_not_msgpack(frame: bytes) -> None:
    """Bytes that are not a valid msgpack value are bad_request with a null id."""
    with pytest.raises(ProtocolError) as info:
        parse_request(frame, Encoding.MSGPACK)
    assert (info.value.code, info.value.request_id) == (ErrorCode.BAD_REQUEST, None)


def test_msgpack_connections_need_binary_frames() -> None:
    """A text frame on the msgpack subprotocol is bad_request."""
    with pytest.raises(ProtocolError, match="binary"):
        parse_request('{"op":"ping"}', Encoding.MSGPACK)


def test_frames_over_the_limit_are_frame_too_large() -> None:
    """A frame over max_frame_bytes raises FrameTooLarge (close 1009), measured in bytes."""
    limits = ProtocolLimits(max_frame_bytes=1024)
    with pytest.raises(FrameTooLarge) as info:
        parse_request(b"x" * 1025, Encoding.MSGPACK, limits)
    assert info.value.close_code == CloseCode.FRAME_TOO_LARGE
    with pytest.raises(FrameTooLarge):
        parse_request('{"op":"ping","id":"' + "é" * 600 + '"}', Encoding.JSON, limits)
    # 300 two-byte characters are 600 bytes: under the limit, so just a bad id.
    with pytest.raises(ProtocolError) as small:
        parse_request('{"op":"ping","id":"' + "é" * 300 + '"}', Encoding.JSON, limits)
    assert not isinstance(small.value, FrameTooLarge)
    with pytest.raises(ProtocolError):
        parse_request(12, Encoding.JSON)  # type: ignore[arg-type]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)
REQUESTISH = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe", "history", "auth", "ping", "x"])},
    optional={"id": JSON_VALUES, "topics": st.one_of(JSON_VALUES, st.lists(
        st.sampled_from(["*", "a/b", "a*/b", "bad", "a/*"]) | JSON_VALUES, max_size=3)),
        "throttle_ms": JSON_VALUES, "snapshot": JSON_VALUES, "resume": JSON_VALUES,
        "topic": JSON_VALUES, "since": JSON_VALUES, "until": JSON_VALUES,
        "max_points": JSON_VALUES, "token": JSON_VALUES},
)


@settings(max_examples=500, deadline=None)
@given(obj=st.one_of(REQUESTISH, JSON_VALUES), encoding=st.sampled_from(list(Encoding)))
def test_any_value_parses_or_raises_protocol_error(obj: Any, encoding: Encoding) -> None:
    """Whatever a client sends, parse_request returns a request or raises ProtocolError only."""
    try:
        frame = req(encoding, obj)
    except (OverflowError, ValueError, TypeError):
        return  # msgpack cannot carry some huge integers; not a frame a client can send
    try:
        parse_request(frame, encoding)
    except ProtocolError:
        pass


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200) | st.text(max_size=200),
       encoding=st.sampled_from(list(Encoding)))
def test_any_bytes_parse_or_raise_protocol_error(data: str | bytes, encoding: Encoding) -> None:
    """Arbitrary bytes and text never raise anything but ProtocolError."""
    try:
        parse_request(data, encoding)
    except ProtocolError:
        pass


# -- server messages ---------------------------------------------------------------------------
def test_message_shapes_follow_protocol_md() -> None:
    """Every builder produces exactly the fields PROTOCOL.md lists."""
    assert welcome_message("gw-1", 12.5, 20) == {
        "type": "welcome", "protocol": 1, "gateway": "gw-1", "server_time": 12.5,
        "heartbeat_s": 20}
    assert ack_message(1, ok=True) == {"type": "ack", "id": 1, "ok": True}
    assert subscribe_ack(2, ("*",), 250) == {"type": "ack", "id": 2, "topics": ["*"],
                                             "throttle_ms": 250}
    assert error_message(None, ErrorCode.INTERNAL, "x") == {
        "type": "error", "id": None, "code": "internal", "message": "x"}
    assert snapshot_message(SAMPLE) == {
        "type": "snapshot", "node": "web-1", "kind": "system", "ts": 1_700_000_000.25,
        "seq": 42, "epoch": 7, "values": dict(SAMPLE.values)}
    assert update_message(SAMPLE, "CUR") == {
        "type": "update", "node": "web-1", "kind": "system", "ts": 1_700_000_000.25,
        "seq": 42, "epoch": 7, "cursor": "CUR", "values": dict(SAMPLE.values)}
    assert update_message(LABELLED, "C")["labels"] == {"env": "prod"}
    assert snapshot_message(LABELLED)["labels"] == {"env": "prod"}
    assert history_message(3, "a", "b", [(1.0, {"x": 1}), (2.0, {"x": 2})]) == {
        "type": "history", "id": 3, "node": "a", "kind": "b",
        "points": [[1.0, {"x": 1}], [2.0, {"x": 2}]]}
    assert alert_message("cpu", "web-1", "firing", "warning", 97.0, 5.0, "hot") == {
        "type": "alert", "rule": "cpu", "node": "web-1", "state": "firing",
        "severity": "warning", "value": 97.0, "ts": 5.0, "message": "hot"}
    with pytest.raises(ValueError, match="firing"):
        alert_message("cpu", "web-1", "on", "warning", 1.0, 5.0, "x")
    assert reset_message(ResetReason.CURSOR_EXPIRED) == {"type": "reset",
                                                         "reason": "cursor_expired"}
    assert pong_message(4, 9.5) == {"type": "pong", "id": 4, "server_time": 9.5}
    assert batch_message([{"type": "pong"}]) == {"type": "batch", "items": [{"type": "pong"}]}


@BOTH
def test_encode_round_trips(encoding: Encoding) -> None:
    """encode() then decode_frame() gives the message back in both encodings."""
    message = update_message(LABELLED, "abc")
    assert decode_frame(encode(message, encoding), encoding) == message


def test_json_frames_are_compact_utf8() -> None:
    """JSON frames carry no spaces and keep non-ASCII characters as UTF-8."""
    data = encode({"type": "error", "id": None, "code": "x", "message": "é"}, Encoding.JSON)
    assert data == '{"type":"error","id":null,"code":"x","message":"é"}'.encode()


@BOTH
def test_encode_failures_are_codec_errors(encoding: Encoding) -> None:
    """A message holding something neither encoding can carry raises CodecError."""
    with pytest.raises(CodecError, match="'ack'"):
        encode({"type": "ack", "id": object()}, encoding)


@pytest.mark.parametrize("count", [0, 1, 15, 16, 300, 65_536])
@BOTH
def test_batches_splice_encoded_frames(count: int, encoding: Encoding) -> None:
    """encode_batch builds a valid batch frame from encoded items, at every header size."""
    items = [{"type": "pong", "id": i, "server_time": 1.0} for i in range(count)]
    frame = encode_batch([encode(item, encoding) for item in items], encoding)
    assert decode_frame(frame, encoding) == {"type": "batch", "items": items}


def test_stdlib_json_fallback_matches_the_fast_encoder() -> None:
    """The stdlib path encodes to the same JSON value and rejects NaN on input."""
    message = update_message(LABELLED, "abc")
    assert json.loads(std_json_dumps(message)) == decode_frame(
        encode(message, Encoding.JSON), Encoding.JSON)
    assert std_json_loads(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError, match="NaN"):
        std_json_loads("[NaN]")
    assert JSON_BACKEND in ("orjson", "json")


def test_limits_are_validated() -> None:
    """Inconsistent protocol limits are refused at construction."""
    for bad in ({"min_throttle_ms": 10, "default_throttle_ms": 5},
                {"default_history_points": 0}, {"max_frame_bytes": 10},
                {"max_subscriptions": 0}):
        with pytest.raises(ValueError, match="need|must"):
            ProtocolLimits(**bad)


# -- shared frames -----------------------------------------------------------------------------
@BOTH
def test_update_message_encodes_once_per_encoding(encoding: Encoding) -> None:
    """The frame of an update is built once and the same bytes are returned to every caller."""
    message = UpdateMessage(1, (5, 0), SAMPLE, POSITIONS)
    first = message.frame(encoding)
    assert message.frame(encoding) is first
    decoded = decode_frame(first, encoding)
    assert decoded == update_message(SAMPLE, message.cursor)
    assert decode_cursor(decoded["cursor"]) == POSITIONS
    assert message.cursor == encode_cursor(POSITIONS)
    assert first == encode_update(SAMPLE, message.cursor, encoding)


def test_update_message_with_another_cursor() -> None:
    """frame_with_cursor and with_positions give the same update under another cursor."""
    message = UpdateMessage(0, (5, 0), SAMPLE, POSITIONS)
    other = decode_frame(message.frame_with_cursor(Encoding.JSON, "Z"), Encoding.JSON)
    assert other == update_message(SAMPLE, "Z")
    moved = message.with_positions(((9, 9), (9, 9)))
    assert (moved.shard, moved.entry_id, moved.sample) == (0, (5, 0), SAMPLE)
    assert decode_cursor(moved.cursor) == ((9, 9), (9, 9))
    assert "web-1/system" in repr(message)


@BOTH
def test_snapshot_message_encodes_once(encoding: Encoding) -> None:
    """A cached sample's snapshot frame is encoded once per encoding."""
    snapshot = SnapshotMessage(LABELLED)
    frame = snapshot.frame(encoding)
    assert snapshot.frame(encoding) is frame
    assert decode_frame(frame, encoding) == snapshot_message(LABELLED)


def test_render_frame_picks_the_shared_or_the_per_connection_frame() -> None:
    """Control bytes pass through; an update takes the newer update's cursor when told to."""
    older = UpdateMessage(0, (5, 0), SAMPLE, POSITIONS)
    newer = UpdateMessage(1, (6, 0), LABELLED, ((1_700_000_000_000, 0), (1_700_000_000_001, 0)))
    assert render_frame(b"ack", Encoding.JSON) == b"ack"
    assert render_frame(older, Encoding.JSON) is older.frame(Encoding.JSON)
    moved = decode_frame(render_frame(older, Encoding.MSGPACK, newer), Encoding.MSGPACK)
    assert moved == update_message(SAMPLE, newer.cursor)
    snapshot = SnapshotMessage(SAMPLE)
    assert render_frame(snapshot, Encoding.JSON, newer) is snapshot.frame(Encoding.JSON)
