"""Custom sources: the public API, how they are found (flags, entry points) and adapted.

A source is a plain function, or a class, or an object with a ``collect`` method; sync or
async. Each call returns a mapping of metric name to number (or a ``Reading`` with labels,
or None for "nothing this time"). docs/collector.md is the user's guide to this API; the
runner that calls sources under timeouts lives in collectors/runner.py.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, NamedTuple, TypeVar

from hub.errors import ConfigError
from hub.names import KIND_RE

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "metrics_hub.sources"
Number = int | float


class Reading(NamedTuple):
    """What a source may return instead of a bare mapping: values plus sample labels."""

    values: Mapping[str, Number | bool]
    labels: Mapping[str, str] | None = None


SourceResult = Mapping[str, Number | bool] | Reading | None
F = TypeVar("F")

_ATTR = "__metrics_hub_source__"
_TARGET_RE = re.compile(r"(?:(?P<kind>[a-z0-9_.-]{1,64})=)?(?P<module>[\w.]+):(?P<attr>[\w.]+)")


def source(
    *, kind: str | None = None, interval: float | None = None, timeout: float | None = None
) -> Callable[[F], F]:
    """Mark a function or class as a source and set its defaults (flags can override kind).

    ``@source(kind="myapp", interval=5.0, timeout=2.0)``; every argument is optional.
    """

    def mark(target: F) -> F:
        setattr(target, _ATTR, {"kind": kind, "interval": interval, "timeout": timeout})
        return target

    return mark


@dataclass
class Source:
    """A source ready to run: how to call it, under which kind, how often, for how long.

    ``collect`` is called once per tick. ``blocking`` sources (sync functions) run on their
    own daemon thread; others run on the event loop, ``inline`` ones (built-ins that neither
    block nor hang) without a task of their own. ``delay`` postpones the first tick (a
    source that needs two readings to compute rates sets it to its interval).
    """

    name: str
    kind: str
    interval: float
    timeout: float
    collect: Callable[[], Any]
    blocking: bool = False
    inline: bool = False
    delay: float = 0.0
    open: Callable[[], Any] | None = None
    close: Callable[[], Any] | None = None
    origin: str = ""  # where it came from, for messages ("--source", "plugin foo")

    def __post_init__(self) -> None:
        if KIND_RE.fullmatch(self.kind) is None:
            raise ConfigError(
                f"{self.origin or self.name}: kind {self.kind!r} is not valid: "
                "use 1-64 of [a-z0-9_.-]"
            )


async def maybe_await(value: Any) -> Any:
    """``value``, awaited first if it is awaitable (for optional sync-or-async hooks)."""
    if inspect.isawaitable(value):
        return await value
    return value


def kind_from_name(name: str) -> str:
    """A valid kind made from any name: lower case, other characters as ``_``."""
    kind = re.sub(r"[^a-z0-9_.-]", "_", name.lower()).strip("._-")[:64]
    return kind or "custom"


def adapt(
    target: Any,
    *,
    name: str | None = None,
    kind: str | None = None,
    interval: float,
    timeout: float | None,
    origin: str,
) -> Source:
    """Make a ``Source`` of a function, class or object (see the module docstring).

    Precedence for kind/interval/timeout: explicit argument, then the ``@source`` marks or
    class attributes, then the defaults given here. ``timeout`` None means the interval.
    """
    marks: dict[str, Any] = dict(getattr(target, _ATTR, None) or {})
    obj = target
    if inspect.isclass(target):
        try:
            obj = target()
        except Exception as exc:
            raise ConfigError(f"{origin}: cannot create {target.__name__}(): {exc!r}") from exc
    collect: Callable[[], Any]
    if callable(getattr(obj, "collect", None)):
        collect = obj.collect
        for attr in ("kind", "interval", "timeout"):
            value = getattr(obj, attr, None)
            if value is not None and marks.get(attr) is None:
                marks[attr] = value
        opener = getattr(obj, "open", None)
        closer = getattr(obj, "close", None) or getattr(obj, "aclose", None)
    elif callable(obj):
        collect, opener, closer = obj, None, None
    else:
        raise ConfigError(f"{origin}: {obj!r} is neither callable nor has a collect() method")
    default_name = getattr(target, "__name__", None) or type(obj).__name__
    chosen_kind = kind or marks.get("kind") or kind_from_name(name or default_name)
    chosen_interval = _positive(marks.get("interval"), interval, origin, "interval")
    chosen_timeout = _positive(marks.get("timeout"), timeout or chosen_interval, origin, "timeout")
    blocking = not _is_async(collect)
    return Source(
        name=name or chosen_kind, kind=chosen_kind, interval=chosen_interval,
        timeout=chosen_timeout, collect=collect, blocking=blocking,
        open=opener if callable(opener) else None,
        close=closer if callable(closer) else None, origin=origin,
    )


def _is_async(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - an object whose __call__ is async
    return inspect.iscoroutinefunction(call)


def _positive(value: Any, fallback: float, origin: str, what: str) -> float:
    if value is None:
        return fallback
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{origin}: {what} {value!r} must be a number of seconds > 0")
    return float(value)


def parse_target(text: str) -> tuple[str | None, str, str]:
    """Split ``[kind=]package.module:attribute`` into (kind, module, attribute)."""
    match = _TARGET_RE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(
            f"--source {text!r}: expected [kind=]package.module:function (or :Class)"
        )
    return match["kind"], match["module"], match["attr"]


def import_target(module_name: str, attr_path: str, origin: str) -> Any:
    """Import ``module_name`` and return its ``attr_path`` (dotted) attribute."""
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"{origin}: cannot import {module_name!r} ({exc!r}); "
                          "is it installed or on PYTHONPATH?") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{origin}: {module_name} has no attribute {attr_path!r}") from None
    return obj


def load_flag_sources(
    targets: tuple[str, ...], *, interval: float, timeout: float | None
) -> list[Source]:
    """The sources named by ``--source``; any problem is a ConfigError (the process stops)."""
    loaded = []
    for text in targets:
        kind, module_name, attr = parse_target(text)
        origin = f"--source {text}"
        target = import_target(module_name, attr, origin)
        loaded.append(adapt(target, kind=kind, interval=interval, timeout=timeout,
                            origin=origin))
    return loaded


def load_plugin_sources(
    *, interval: float, timeout: float | None, group: str = ENTRY_POINT_GROUP
) -> list[Source]:
    """Every source installed under the entry-point group; a broken plugin is logged, skipped.

    The entry point's name is the source's name and its default kind.
    """
    loaded = []
    for entry in sorted(entry_points(group=group), key=lambda e: e.name):
        origin = f"plugin {entry.name} ({entry.value})"
        try:
            target = entry.load()
            loaded.append(adapt(target, name=entry.name, interval=interval, timeout=timeout,
                                origin=origin))
        except Exception as exc:
            log.error("skipping %s: %s", origin, exc)
    return loaded
