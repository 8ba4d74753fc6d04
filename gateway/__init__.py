"""The WebSocket gateway: clients subscribe to topics and get live, throttled, resumable updates.

The pure core (topics, protocol, cursor, replay, outbound, ratelimit) takes values and a clock
and does no I/O. The errors it raises live here so every module can import them without a
cycle; both are ``HubError`` subclasses:

    HubError
    ├── ProtocolError     a client frame the protocol rejects; ``code`` is the PROTOCOL.md code
    │   └── FrameTooLarge a frame over the size limit: the caller closes with 1009
    └── CursorError       a resume cursor that is garbled, of another version or shard count

Keep this module light: it is imported by every part of the core.
"""

from __future__ import annotations

import enum

from hub.errors import HubError

RequestId = int | str | None


class ErrorCode(enum.StrEnum):
    """The ``code`` of an ``error`` message (PROTOCOL.md, "Server to client")."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    INVALID_TOPIC = "invalid_topic"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    HISTORY_UNAVAILABLE = "history_unavailable"
    INTERNAL = "internal"


class ProtocolError(HubError):
    """A request the protocol rejects: answered with an ``error`` message, the connection lives.

    ``request_id`` is the request's ``id`` when it could be read (else None, sent as null).
    ``close_code`` is None except for the few errors that end the connection (FrameTooLarge).
    """

    close_code: int | None = None

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value!r}, {self.message!r}, {self.request_id!r})"


class FrameTooLarge(ProtocolError):
    """A client frame over the configured size: the caller closes the connection with 1009."""

    close_code = 1009

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            ErrorCode.BAD_REQUEST, f"frame of {size} bytes exceeds the {limit}-byte limit"
        )
        self.size = size
        self.limit = limit


class CursorError(HubError):
    """A resume cursor this gateway cannot use; the caller answers with ``reset``."""


__all__ = [
    "CursorError",
    "ErrorCode",
    "FrameTooLarge",
    "ProtocolError",
    "RequestId",
]
