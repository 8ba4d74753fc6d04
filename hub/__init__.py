"""metrics-hub's shared core: the sample model and codec, errors, and the three runtime
components (TaskManager, ConnectionManager, MetricsService), and the Redis layer (key layout,
connection factory, Publisher, StreamReader); nothing here opens I/O on import."""

from hub.codec import SampleCodec
from hub.connections import ConnectionInfo, ConnectionManager, ConnectionState
from hub.errors import (
    BackendUnavailable,
    CapacityError,
    CodecError,
    ConfigError,
    HubError,
    InvalidTransition,
    LayoutMismatch,
    LifecycleError,
    ValidationError,
)
from hub.keys import KeyLayout
from hub.latest import latest, list_topics
from hub.metrics_service import MetricsMessage, MetricsService, MetricsType
from hub.publisher import Publisher
from hub.reader import StreamEntry, StreamReader, history, read_range
from hub.redis_url import connect, redact
from hub.sample import Sample
from hub.tasks import ManagedTask, TaskManager, TaskState
from hub.throttle import Throttle

__all__ = [
    "BackendUnavailable",
    "CapacityError",
    "CodecError",
    "ConfigError",
    "ConnectionInfo",
    "ConnectionManager",
    "ConnectionState",
    "HubError",
    "InvalidTransition",
    "KeyLayout",
    "LayoutMismatch",
    "LifecycleError",
    "ManagedTask",
    "MetricsMessage",
    "MetricsService",
    "MetricsType",
    "Publisher",
    "Sample",
    "SampleCodec",
    "StreamEntry",
    "StreamReader",
    "TaskManager",
    "TaskState",
    "Throttle",
    "ValidationError",
    "connect",
    "history",
    "latest",
    "list_topics",
    "read_range",
    "redact",
]
