"""StatsD: the line parser and the per-interval aggregator, both pure (no sockets, no sleeps).

Accepted: ``name[,tag=val...]:value[:value...]|type[|@rate][|#tag:val,tag2]`` with types
``c`` (counter), ``g`` (gauge; ``+n``/``-n`` adjust it), ``ms`` (timer, milliseconds), ``h``
and ``d`` (histogram, distribution), ``s`` (set). Tags come DogStatsD style (``|#``) or
Telegraf style (``name,tag=val``); other extensions (``|c:...``, ``|T...``) are ignored, and
events and service checks are skipped. docs/metrics.md gives the names each
type produces. Memory is bounded: a cap on series, a fixed reservoir per timer for the
percentiles, and a budget of set members; what does not fit is dropped and counted.
"""

from __future__ import annotations

import enum
import hashlib
import math
import random
import re
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

Number = int | float

RESERVOIR_SIZE = 512
SET_MEMBERS_BUDGET = 50_000
MAX_FIELDS = 1000  # per published sample; the codec refuses more than 1024
_NAME_BAD = re.compile(r"[^A-Za-z0-9_:]")
_TAG_KEY_BAD = re.compile(r"[^A-Za-z0-9_]")
_TAG_VALUE_BAD = re.compile(r"[^A-Za-z0-9_:./@-]")
_MAX_BASE = 100  # leaves room for suffixes such as "_seconds_p99" within 128 characters


class StatsdType(enum.Enum):
    COUNTER = "c"
    GAUGE = "g"
    TIMER = "ms"
    HISTOGRAM = "h"
    DISTRIBUTION = "d"
    SET = "s"


_TYPES = {t.value: t for t in StatsdType}
_SUMMARY_TYPES = frozenset({StatsdType.TIMER, StatsdType.HISTOGRAM, StatsdType.DISTRIBUTION})


class MalformedLine(ValueError):
    """A StatsD line that cannot be parsed."""


class StatsdLine(NamedTuple):
    name: str
    type: StatsdType
    values: tuple[float, ...] | tuple[str, ...]
    rate: float = 1.0
    tags: tuple[tuple[str, str], ...] = ()
    relative: bool = False  # a gauge given as +n or -n


def parse_line(line: str) -> StatsdLine | None:
    """Parse one line; None for lines that are valid but carry no metric (events, checks).

    Raises MalformedLine for anything else that does not parse.
    """
    if line.startswith(("_e{", "_sc|")):
        return None
    head, bar, rest = line.partition("|")
    if not bar:
        raise MalformedLine("no '|type'")
    name, colon, raw_values = head.partition(":")
    if not colon or not name or not raw_values:
        raise MalformedLine("expected name:value")
    sections = rest.split("|")
    kind = _TYPES.get(sections[0])
    if kind is None:
        raise MalformedLine(f"unknown type {sections[0]!r}")
    rate = 1.0
    tags: tuple[tuple[str, str], ...] = ()
    for section in sections[1:]:
        if section.startswith("@"):
            try:
                rate = float(section[1:])
            except ValueError:
                raise MalformedLine(f"bad sample rate {section!r}") from None
            if not 0.0 < rate <= 1.0:
                raise MalformedLine(f"sample rate {section!r} not in (0, 1]")
        elif section.startswith("#"):
            tags = _parse_tags(section[1:])
        elif not section:
            raise MalformedLine("empty section")
        # other sections (c:container, T<timestamp>, e:...) are extensions we ignore
    if "," in name:  # InfluxDB/Telegraf style: name,tag=value,tag2=value2
        name, *pairs = name.split(",")
        if not name:
            raise MalformedLine("empty name before the tags")
        extra = tuple((k, v) for k, _, v in (pair.partition("=") for pair in pairs) if k)
        tags = tuple(sorted(tags + extra))
    parts = raw_values.split(":")
    if kind is StatsdType.SET:
        return StatsdLine(name, kind, tuple(parts), 1.0, tags)
    numbers: list[float] = []
    relative = False
    for part in parts:
        try:
            number = float(part)
        except ValueError:
            raise MalformedLine(f"bad value {part!r}") from None
        if not math.isfinite(number):
            raise MalformedLine(f"value {part!r} is not finite")
        numbers.append(number)
    if kind is StatsdType.GAUGE:
        if len(numbers) != 1:
            raise MalformedLine("a gauge takes one value")
        relative = parts[0][:1] in "+-"
    return StatsdLine(name, kind, tuple(numbers), rate, tags, relative)


def _parse_tags(text: str) -> tuple[tuple[str, str], ...]:
    tags = []
    for item in text.split(","):
        if not item:
            continue
        key, _, value = item.partition(":")
        tags.append((key, value))
    return tuple(sorted(tags))


def parse_packet(data: bytes) -> Iterator[StatsdLine | MalformedLine | None]:
    """Every non-empty line of a datagram: parsed, MalformedLine if bad, None if skipped."""
    text = data.decode("utf-8", errors="replace")
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        try:
            yield parse_line(line)
        except MalformedLine as exc:
            yield exc


# -- names ---------------------------------------------------------------------------------
def metric_base(name: str) -> str:
    """A StatsD name as a metric base name: ``api.req-count`` -> ``api_req_count``."""
    base = _NAME_BAD.sub("_", name)[:_MAX_BASE]
    return "_" + base[:_MAX_BASE - 1] if base[0].isdigit() else base


def tag_instance(tags: Iterable[tuple[str, str]]) -> str:
    """Tags as a metric's instance suffix: ``env=prod+route=/api`` (sorted by key)."""
    parts = []
    for key, value in tags:
        clean_key = _TAG_KEY_BAD.sub("_", key) or "_"
        parts.append(f"{clean_key}={_TAG_VALUE_BAD.sub('_', value)}" if value else clean_key)
    text = "+".join(parts)
    if len(text) > 127:
        digest = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:10]
        text = f"{text[:110]}+h={digest}"
    return text


# -- aggregation ------------------------------------------------------------------------------
@dataclass
class _Summary:
    count: float = 0.0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    seen: int = 0  # values offered to the reservoir this interval
    reservoir: array[float] = field(default_factory=lambda: array("d"))


@dataclass
class _Series:
    type: StatsdType
    base: str  # output base name (already with _seconds for timers)
    instance: str
    last_update: float
    counter_total: float = 0.0  # counters: cumulative since the series appeared
    counter_interval: float = 0.0
    gauge: float = 0.0
    summary: _Summary | None = None
    members: set[int] | None = None
    touched: bool = False  # updated during the current interval


@dataclass
class StatsdStats:
    packets: int = 0
    lines: int = 0
    malformed: int = 0
    dropped: int = 0


class StatsdAggregator:
    """Aggregates StatsD lines over one interval; ``flush`` returns that interval's values."""

    def __init__(
        self,
        *,
        percentiles: Iterable[float] = (50.0, 90.0, 95.0, 99.0),
        max_series: int = 500,
        expire_s: float = 300.0,
        max_fields: int = MAX_FIELDS,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.percentiles = tuple(sorted(set(percentiles)))
        for p in self.percentiles:
            if not 0 < p <= 100:
                raise ValueError(f"percentile {p} must be in (0, 100]")
        # p99.9 -> "p99_9": a dot would start the instance suffix
        self._labels = tuple((p, "p" + f"{p:g}".replace(".", "_")) for p in self.percentiles)
        self.max_series = max_series
        self.expire_s = expire_s
        self.max_fields = max_fields
        self.stats = StatsdStats()
        self._clock = clock
        self._rng = rng or random.Random()
        self._series: dict[tuple[StatsdType, str, str], _Series] = {}
        self._set_members = 0
        self._last_flush = clock()

    def __len__(self) -> int:
        return len(self._series)

    def ingest(self, data: bytes) -> None:
        """Take one datagram: parse every line, count the bad ones, aggregate the rest."""
        stats = self.stats
        stats.packets += 1
        for item in parse_packet(data):
            stats.lines += 1
            if isinstance(item, MalformedLine):
                stats.malformed += 1
            elif item is not None:
                self.add(item)

    def add(self, line: StatsdLine) -> bool:
        """Aggregate one parsed line; False if it was dropped (series cap reached)."""
        series = self._find(line)
        if series is None:
            self.stats.dropped += 1
            return False
        series.last_update = self._clock()
        series.touched = True
        kind = line.type
        if kind is StatsdType.COUNTER:
            increase = sum(line.values) / line.rate  # type: ignore[arg-type]
            series.counter_interval += increase
            series.counter_total += increase
        elif kind is StatsdType.GAUGE:
            value = float(line.values[0])
            series.gauge = series.gauge + value if line.relative else value
        elif kind is StatsdType.SET:
            members = series.members if series.members is not None else set()
            series.members = members
            for member in line.values:
                key = hash(member)
                if key in members:
                    continue
                if self._set_members >= SET_MEMBERS_BUDGET:
                    self.stats.dropped += 1
                    break
                members.add(key)
                self._set_members += 1
        else:
            summary = series.summary if series.summary is not None else _Summary()
            series.summary = summary
            scale = 1000.0 if kind is StatsdType.TIMER else 1.0  # ms -> seconds
            weight = 1.0 / line.rate
            for raw in line.values:
                value = float(raw) / scale
                summary.count += weight
                summary.total += value * weight
                summary.low = min(summary.low, value)
                summary.high = max(summary.high, value)
                summary.seen += 1
                if len(summary.reservoir) < RESERVOIR_SIZE:
                    summary.reservoir.append(value)
                else:  # reservoir sampling (algorithm R): a uniform sample of the interval
                    slot = self._rng.randrange(summary.seen)
                    if slot < RESERVOIR_SIZE:
                        summary.reservoir[slot] = value
        return True

    def _find(self, line: StatsdLine) -> _Series | None:
        kind = StatsdType.HISTOGRAM if line.type is StatsdType.DISTRIBUTION else line.type
        instance = tag_instance(line.tags) if line.tags else ""
        key = (kind, line.name, instance)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.max_series:
                return None
            base = metric_base(line.name)
            if kind is StatsdType.TIMER and not base.endswith("_seconds"):
                base += "_seconds"
            series = _Series(kind, base, instance, self._clock())
            self._series[key] = series
        return series

    def flush(self) -> dict[str, Number]:
        """The values of the interval that ends now; starts the next interval."""
        now = self._clock()
        elapsed = now - self._last_flush
        self._last_flush = now
        values: dict[str, Number] = {}
        expired = []
        for key, series in self._series.items():
            if not series.touched and now - series.last_update > self.expire_s:
                expired.append(key)
                continue
            self._emit(series, elapsed, values)
        for key in expired:
            gone = self._series.pop(key)
            if gone.members:
                self._set_members -= len(gone.members)
        if len(values) > self.max_fields:
            excess = len(values) - self.max_fields
            self.stats.dropped += excess
            values = dict(list(values.items())[: self.max_fields])
        return values

    def _emit(self, series: _Series, elapsed: float, out: dict[str, Number]) -> None:
        suffix = f".{series.instance}" if series.instance else ""
        base = series.base
        kind = series.type
        touched = series.touched
        series.touched = False
        if kind is StatsdType.COUNTER:
            stem = base[:-6] if base.endswith("_total") else base
            out[f"{stem}_total{suffix}"] = series.counter_total
            if elapsed > 0:
                out[f"{stem}_per_second{suffix}"] = series.counter_interval / elapsed
            series.counter_interval = 0.0
        elif kind is StatsdType.GAUGE:
            out[f"{base}{suffix}"] = series.gauge
        elif kind is StatsdType.SET:
            members = series.members or set()
            if touched:
                out[f"{base}_unique{suffix}"] = len(members)
            self._set_members -= len(members)
            series.members = None
        else:
            summary = series.summary
            series.summary = None
            if summary is None or summary.seen == 0:
                return
            out[f"{base}_count{suffix}"] = summary.count
            out[f"{base}_sum{suffix}"] = summary.total
            out[f"{base}_min{suffix}"] = summary.low
            out[f"{base}_max{suffix}"] = summary.high
            out[f"{base}_mean{suffix}"] = summary.total / summary.count
            ordered = sorted(summary.reservoir)
            for p, label in self._labels:
                out[f"{base}_{label}{suffix}"] = percentile(ordered, p)


def percentile(ordered: list[float], p: float) -> float:
    """The ``p``-th percentile (0 < p <= 100) of sorted values, interpolating linearly."""
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * p / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction
