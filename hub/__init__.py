"""metrics-hub's shared core: the sample model and codec, errors, and the three runtime
components (TaskManager, ConnectionManager, MetricsService); nothing here opens I/O on import."""

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
from hub.metrics_service import MetricsMessage, MetricsService, MetricsType
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
    "LayoutMismatch",
    "LifecycleError",
    "ManagedTask",
    "MetricsMessage",
    "MetricsService",
    "MetricsType",
    "Sample",
    "SampleCodec",
    "TaskManager",
    "TaskState",
    "Throttle",
    "ValidationError",
]
