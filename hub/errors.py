"""The exceptions every metrics-hub package raises, under one root.

    HubError
    ├── CodecError            bytes that are not a valid sample, or a sample that cannot be encoded
    ├── ValidationError       a name, value or sample that breaks the model's rules
    ├── ConfigError           a setting that cannot work; processes stop at start with its message
    ├── BackendUnavailable    Redis cannot be reached (or answered with a connection-level error)
    ├── LayoutMismatch        Redis holds data written with another key layout (shard count)
    ├── InvalidTransition     a connection state change the state machine forbids
    ├── CapacityError         a configured cap (connections, queues) is reached
    ├── LifecycleError        a manager used before it was opened or after it was closed
    ├── gateway.ProtocolError a client frame the protocol rejects (answered with ``error``)
    │   └── gateway.FrameTooLarge   over the frame limit: the connection closes with 1009
    ├── gateway.CursorError   a resume cursor the gateway cannot use (answered with ``reset``)
    └── hub.demo.DemoError    the demo cannot start or a part of it died (never leaves main())

The gateway's errors live in ``gateway/__init__.py`` so its pure core imports nothing else.

Library errors are translated at the edge with ``raise X(...) from exc`` so the cause is kept.
"""

from __future__ import annotations


class HubError(Exception):
    """Root of every error metrics-hub raises on purpose."""


class CodecError(HubError):
    """Bytes that do not decode to a valid sample, or a sample that cannot be encoded."""


class ValidationError(HubError, ValueError):
    """A name, value or sample that breaks the model's rules."""


class ConfigError(HubError):
    """A configuration value that cannot work; the message says what to fix."""


class BackendUnavailable(HubError):
    """Redis could not be reached or dropped the connection."""


class LayoutMismatch(HubError):
    """Redis already holds a hub with another key layout under the same prefix."""


class InvalidTransition(HubError):
    """A connection state change that the state machine does not allow."""


class CapacityError(HubError):
    """A configured cap is reached (for example the connection limit)."""


class LifecycleError(HubError):
    """A manager used outside its open lifetime (before start, or after close)."""
