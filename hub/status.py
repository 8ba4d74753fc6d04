"""``metrics-hub status`` (the hub's state as tables: nodes, gateways, streams, consumer lag)
and ``metrics-hub tail PATTERN`` (live updates in the terminal), both read-only on Redis.

Gathering (``gather``) is apart from rendering (``render``), which is pure: tests and
``--json`` use the same ``HubStatus`` value.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fnmatch
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from gateway import ProtocolError
from gateway.topics import TopicPattern, parse_pattern
from hub.config import (
    ConfigSpec,
    Loaded,
    in_range,
    non_negative,
    setting,
    valid_key_prefix,
    valid_redis_url,
)
from hub.errors import ConfigError, HubError
from hub.keys import MAX_SHARDS, KeyLayout
from hub.latest import latest
from hub.reader import StreamEntry, StreamReader
from hub.redis_url import REDIS_ERRORS, RedisClient, connect, redact, translate_error
from hub.sample import Sample
from hub.tasks import TaskManager

log = logging.getLogger(__name__)

# What a gateway's own samples (kind "gateway", gateway/selfmetrics.py) call its open
# WebSocket connections and its reader's lag behind each shard stream.
CONNECTIONS_METRIC = "connections.connected"
LAG_METRIC = "reader_lag_seconds"
# Shown first by `tail` when present, as the numbers people look at first.
PREFERRED_VALUES = ("cpu_utilization_ratio", "load1", "memory_used_ratio",
                    "net_rx_bytes_per_second", "net_tx_bytes_per_second",
                    "connections.connected", "messages_out_total")


# -- the state ------------------------------------------------------------------------------
@dataclass
class NodeRow:
    """One node: its kinds, when it last published, and its sample rate."""

    node: str
    kinds: list[str]
    last_seen_s: float | None          # seconds ago (node index, whole seconds)
    live: bool                         # some topic of it still has a latest key
    rate_per_s: float | None           # samples per second of its busiest kind
    rate_estimated: bool = False       # from seq since the run started, not measured


@dataclass
class GatewayRow:
    """One gateway, from its own ``gateway`` kind samples."""

    gateway: str
    last_seen_s: float | None
    connections: float | None
    reader_lag_s: float | None
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class StreamRow:
    """One shard stream: its length and the ages of its oldest and newest entries."""

    shard: int
    key: str
    length: int
    oldest_age_s: float | None
    newest_age_s: float | None


@dataclass
class GroupRow:
    """A consumer group on a shard stream (alerting, rollups): how far behind it is."""

    shard: int
    group: str
    consumers: int
    pending: int
    lag: int | None                    # entries not yet delivered (Redis 7+)


@dataclass
class HubStatus:
    """Everything ``status`` shows, as plain data (``--json`` prints ``asdict`` of it)."""

    redis: str
    prefix: str
    shards: int
    server: dict[str, str]
    nodes: list[NodeRow]
    gateways: list[GatewayRow]
    streams: list[StreamRow]
    groups: list[GroupRow]
    nodes_total: int
    rate_window_s: float


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _id_ms(entry_id: Any) -> int | None:
    head = _text(entry_id).partition("-")[0]
    return int(head) if head.isdigit() else None


def sample_rate(before: Sample | None, after: Sample | None) -> float | None:
    """Samples per second between two readings of a topic's latest sample, if measurable."""
    if before is None or after is None or before.epoch != after.epoch:
        return None
    if after.seq <= before.seq or after.ts <= before.ts:
        return None
    return (after.seq - before.seq) / (after.ts - before.ts)


def lifetime_rate(sample: Sample) -> float | None:
    """Samples per second since the publishing run started, where ``epoch`` is its start in
    epoch milliseconds (the collector's and the simulator's are); else None."""
    started = sample.epoch / 1000
    if not 0 < sample.ts - started < 10 * 365 * 86400 or sample.seq < 2:
        return None
    return sample.seq / (sample.ts - started)


async def gather(redis: RedisClient, layout: KeyLayout, *, rate_window_s: float = 2.0,
                 max_nodes: int = 200, sleep: Callable[[float], Any] = asyncio.sleep,
                 redis_label: str = "") -> HubStatus:
    """Read the hub's state from Redis (read-only; a gateway's ACL user is enough).

    Rates are measured from the latest samples read twice, ``rate_window_s`` apart (0: not
    measured); a topic with no new sample in the window gets the rate since its run started
    when the epoch allows it. Raises BackendUnavailable. Cancelling is safe.
    """
    try:
        seconds, micros = await redis.time()
        now = float(seconds) + micros / 1e6
        pipe = redis.pipeline(transaction=False)
        for shard in range(layout.shards):
            pipe.zrange(layout.topics_key(shard), 0, -1, withscores=True)
            pipe.xinfo_stream(layout.stream_key(shard))
            pipe.xinfo_groups(layout.stream_key(shard))
        replies = await pipe.execute(raise_on_error=False)
        server = await _server_info(redis)
    except REDIS_ERRORS as exc:
        raise translate_error(exc, "reading the hub's state", redis) from exc

    seen: dict[str, float] = {}
    streams: list[StreamRow] = []
    groups: list[GroupRow] = []
    for shard in range(layout.shards):
        index, info, group_info = replies[3 * shard: 3 * shard + 3]
        if isinstance(index, list):
            for member, score in index:
                seen[_text(member)] = float(score)
        streams.append(_stream_row(shard, layout.stream_key(shard), info, now))
        if isinstance(group_info, list):
            groups.extend(GroupRow(shard, _text(g.get("name")), int(g.get("consumers") or 0),
                                   int(g.get("pending") or 0),
                                   None if g.get("lag") is None else int(g["lag"]))
                          for g in group_info)

    by_node: dict[str, list[str]] = {}
    for topic in seen:
        node, _, kind = topic.partition("/")
        by_node.setdefault(node, []).append(kind)
    # A gateway's own samples make it a "node" of kind gateway: it is listed as a gateway.
    hosts = sorted(node for node, kinds in by_node.items() if kinds != ["gateway"])
    shown = hosts[:max_nodes]
    gateway_nodes = sorted(node for node, kinds in by_node.items() if "gateway" in kinds)
    topics = sorted({f"{n}/{k}" for n in shown for k in by_node[n]}
                    | {f"{n}/gateway" for n in gateway_nodes})
    first = {s.topic: s for s in await latest(redis, layout, topics)}
    second = first
    if rate_window_s > 0:
        await sleep(rate_window_s)
        second = {s.topic: s for s in await latest(redis, layout, topics)}

    nodes = [_node_row(node, sorted(by_node[node]), seen, first, second, now) for node in shown]
    gateways = [_gateway_row(node, seen, second.get(f"{node}/gateway"), now)
                for node in gateway_nodes]
    return HubStatus(redis_label, layout.prefix, layout.shards, server, nodes, gateways,
                     streams, groups, len(hosts), rate_window_s)


async def _server_info(redis: RedisClient) -> dict[str, str]:
    """Version and memory of a single server; a Cluster reports per node, so it is left out."""
    from redis.asyncio.cluster import RedisCluster

    if isinstance(redis, RedisCluster):
        return {"mode": "cluster"}
    info: dict[str, Any] = {}
    for section in ("server", "memory"):
        with contextlib.suppress(*REDIS_ERRORS):  # INFO may be denied to a read-only user
            info.update(await redis.info(section))
    keep = ("redis_version", "valkey_version", "redis_mode", "used_memory_human",
            "maxmemory_human", "maxmemory_policy")
    return {key: str(info[key]) for key in keep if key in info}


def _stream_row(shard: int, key: str, info: Any, now: float) -> StreamRow:
    if not isinstance(info, Mapping):  # no such key yet (or the reply was an error)
        return StreamRow(shard, key, 0, None, None)
    ages = []
    for name in ("first-entry", "last-entry"):
        entry = info.get(name)
        ms = _id_ms(entry[0]) if entry else None
        ages.append(None if ms is None else max(0.0, now - ms / 1000))
    return StreamRow(shard, key, int(info.get("length") or 0), ages[0], ages[1])


def _node_row(node: str, kinds: list[str], seen: Mapping[str, float],
              first: Mapping[str, Sample], second: Mapping[str, Sample], now: float) -> NodeRow:
    scores = [seen[f"{node}/{kind}"] for kind in kinds]
    best: float | None = None
    estimated = False
    # The system kind is what a node is about; other kinds stand in for nodes without it.
    for kind in sorted(kinds, key=lambda k: k != "system"):
        topic = f"{node}/{kind}"
        rate = sample_rate(first.get(topic), second.get(topic))
        guess = False
        if rate is None and topic in second:
            rate, guess = lifetime_rate(second[topic]), True
        if rate is not None:
            best, estimated = rate, guess
            break
    live = any(f"{node}/{kind}" in second for kind in kinds)
    return NodeRow(node, kinds, max(0.0, now - max(scores)) if scores else None, live, best,
                   estimated)


def _gateway_row(node: str, seen: Mapping[str, float], sample: Sample | None,
                 now: float) -> GatewayRow:
    score = seen.get(f"{node}/gateway")
    values = {k: float(v) for k, v in sample.values.items()} if sample is not None else {}
    # A state with no connection may be left out of the sample: absent means 0.
    connections = values.get(CONNECTIONS_METRIC, 0.0)
    # One lag per shard (reader_lag_seconds.s<k>): the worst is what a client feels.
    lags = [v for k, v in values.items() if k.partition(".")[0] == LAG_METRIC]
    return GatewayRow(node, None if score is None else max(0.0, now - score),
                      connections if sample is not None else None,
                      max(lags) if lags else None, values)


# -- rendering ------------------------------------------------------------------------------
def age(seconds: float | None) -> str:
    """``3s``, ``4m``, ``2h``, ``5d``; ``-`` for unknown."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart; numbers are pre-formatted by the caller."""
    rows = [list(headers)] + [list(row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"


def render(status: HubStatus) -> str:
    """The text ``status`` prints."""
    server = status.server
    version = server.get("valkey_version") and f"valkey {server['valkey_version']}" \
        or server.get("redis_version") and f"redis {server['redis_version']}" \
        or server.get("mode", "")
    memory = f", {server['used_memory_human']} used" if "used_memory_human" in server else ""
    out = [f"Redis {status.redis} ({version}{memory}); prefix {status.prefix!r}, "
           f"{status.shards} shards", ""]
    out.append(f"Nodes: {status.nodes_total}")
    if status.nodes:
        rows = [[n.node, "up" if n.live else "stale", age(n.last_seen_s) + " ago",
                 ("~" if n.rate_estimated else "") + _number(n.rate_per_s) + "/s"
                 if n.rate_per_s is not None else "-", ",".join(n.kinds)]
                for n in status.nodes]
        out.append(table(["NODE", "STATE", "LAST SEEN", "RATE", "KINDS"], rows))
        if status.nodes_total > len(status.nodes):
            out.append(f"... and {status.nodes_total - len(status.nodes)} more "
                       "(--max-nodes to show them)")
    out.append("")
    out.append(f"Gateways: {len(status.gateways)}")
    if status.gateways:
        out.append(table(["GATEWAY", "LAST SEEN", "CONNECTIONS", "READER LAG"], [
            [g.gateway, age(g.last_seen_s) + " ago", _number(g.connections, 0),
             "-" if g.reader_lag_s is None else f"{g.reader_lag_s:.3f}s"]
            for g in status.gateways]))
    out.append("")
    total = sum(s.length for s in status.streams)
    out.append(f"Streams: {total} entries in {len(status.streams)} shards")
    out.append(table(["SHARD", "KEY", "LENGTH", "OLDEST", "NEWEST"], [
        [str(s.shard), s.key, str(s.length), age(s.oldest_age_s), age(s.newest_age_s)]
        for s in status.streams]))
    if status.groups:
        out.append("")
        out.append("Consumer groups (reader lag)")
        out.append(table(["SHARD", "GROUP", "CONSUMERS", "PENDING", "LAG"], [
            [str(g.shard), g.group, str(g.consumers), str(g.pending),
             "-" if g.lag is None else str(g.lag)] for g in status.groups]))
    if any(n.rate_estimated for n in status.nodes):
        out.append("")
        out.append("~ rate since the node's collector started (no new sample within "
                   f"{status.rate_window_s:g}s)")
    return "\n".join(out)


# -- settings and argument handling ----------------------------------------------------------
@dataclass(frozen=True)
class StatusSettings:
    """Settings of ``metrics-hub status``."""

    redis_url: str = setting("redis://127.0.0.1:6379/0", help="the hub's Redis",
                             validator=valid_redis_url, redact=redact, metavar="URL")
    key_prefix: str = setting("mh", help="prefix of every Redis key", validator=valid_key_prefix,
                              metavar="PREFIX")
    shards: int = setting(16, help="number of shard streams", validator=in_range(1, MAX_SHARDS),
                          metavar="N")
    rate_window: float = setting(2.0, help="seconds between the two readings that measure "
                                 "sample rates (0: no wait, estimate from seq)",
                                 validator=in_range(0, 60), metavar="SECONDS")
    max_nodes: int = setting(200, help="most nodes listed", validator=in_range(1, 1_000_000),
                             metavar="N")
    json: bool = setting(False, help="print JSON instead of tables")


@dataclass(frozen=True)
class TailSettings:
    """Settings of ``metrics-hub tail``."""

    redis_url: str = setting("redis://127.0.0.1:6379/0", help="the hub's Redis",
                             validator=valid_redis_url, redact=redact, metavar="URL")
    key_prefix: str = setting("mh", help="prefix of every Redis key", validator=valid_key_prefix,
                              metavar="PREFIX")
    shards: int = setting(16, help="number of shard streams", validator=in_range(1, MAX_SHARDS),
                          metavar="N")
    json: bool = setting(False, help="print one JSON object per update (JSON Lines)")
    since: float = setting(0.0, help="first replay the updates of the last N seconds",
                           validator=non_negative, metavar="SECONDS")
    count: int = setting(0, help="exit after N updates (0: run until Ctrl-C)",
                         validator=non_negative, metavar="N")
    metric: tuple[str, ...] = setting((), help="show only metrics matching this glob "
                                      "(e.g. 'cpu_*')", metavar="GLOB")
    max_values: int = setting(6, help="most values per line in text mode (0: all)",
                              validator=non_negative, metavar="N")


STATUS_SPEC: ConfigSpec[StatusSettings] = ConfigSpec(
    StatusSettings, prog="metrics-hub status",
    description="Print the hub's state: nodes, gateways, shard streams, consumer lag.")
TAIL_SPEC: ConfigSpec[TailSettings] = ConfigSpec(
    TailSettings, prog="metrics-hub tail",
    description="Print live updates of the topics matching PATTERN (node/kind, with * "
                "wildcards; default *).")


def split_positionals(parser: argparse.ArgumentParser, args: Sequence[str]
                      ) -> tuple[list[str], list[str]]:
    """(positional arguments, the rest) of ``args``, knowing which options take a value."""
    takes_value = {flag for action in parser._actions for flag in action.option_strings
                   if action.nargs != 0}
    positionals: list[str] = []
    rest: list[str] = []
    items = iter(args)
    for arg in items:
        if arg == "--":
            positionals.extend(items)
            break
        if arg.startswith("-") and len(arg) > 1:
            rest.append(arg)
            if arg in takes_value:  # "--flag value"; "--flag=value" is one item
                value = next(items, None)
                if value is not None:
                    rest.append(value)
            continue
        positionals.append(arg)
    return positionals, rest


def _load(spec: ConfigSpec[Any], args: Sequence[str]) -> Loaded[Any] | int:
    """Loaded settings, or the exit code after printing help or a one-line error."""
    try:
        return spec.load(list(args))
    except ConfigError as exc:
        print(f"{spec.prog}: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0


def _as_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# -- status ---------------------------------------------------------------------------------
async def run_status(settings: StatusSettings, out: TextIO) -> int:
    layout = KeyLayout(settings.key_prefix, settings.shards)
    redis = connect(settings.redis_url, client_name="metrics-hub-status")
    try:
        status = await gather(redis, layout, rate_window_s=settings.rate_window,
                              max_nodes=settings.max_nodes,
                              redis_label=redact(settings.redis_url))
    finally:
        await redis.aclose()
    out.write((_as_json(dataclasses.asdict(status)) if settings.json else render(status)) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``metrics-hub status``: print the hub's state; 1 if Redis cannot be read."""
    loaded = _load(STATUS_SPEC, sys.argv[1:] if argv is None else argv)
    if isinstance(loaded, int):
        return loaded
    if loaded.print_config:
        print(loaded.describe(STATUS_SPEC))
        return 0
    try:
        return asyncio.run(run_status(loaded.settings, sys.stdout))
    except HubError as exc:
        print(f"{STATUS_SPEC.prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


# -- tail -----------------------------------------------------------------------------------
def _pick_values(values: Mapping[str, float | int], globs: Sequence[str],
                 limit: int) -> tuple[list[tuple[str, float | int]], int]:
    """The values a text line shows, and how many it leaves out."""
    if globs:
        chosen = [(k, v) for k, v in values.items()
                  if any(fnmatch.fnmatchcase(k, g) for g in globs)]
    else:
        # The preferred names first, in their order; then the rest as the sample has them,
        # per-device series (name.instance) after the host-wide ones.
        rank = {name: i for i, name in enumerate(PREFERRED_VALUES)}
        chosen = sorted(values.items(), key=lambda kv: rank.get(
            kv[0], len(PREFERRED_VALUES) + ("." in kv[0])))
    if limit and len(chosen) > limit:
        return chosen[:limit], len(chosen) - limit
    return chosen, 0


def _short(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


class TailPrinter:
    """Formats updates for the terminal or as JSON Lines, and notes seq gaps (lost samples)."""

    def __init__(self, settings: TailSettings, out: TextIO, err: TextIO) -> None:
        self.settings = settings
        self.out = out
        self.err = err
        self.last: dict[tuple[str, str], tuple[int, int]] = {}
        self.printed = 0
        self.broken = False

    def missed(self, sample: Sample) -> int:
        """Samples lost before this one (a seq jump within one epoch)."""
        key = (sample.node, sample.kind)
        previous = self.last.get(key)
        self.last[key] = (sample.epoch, sample.seq)
        if previous is None or previous[0] != sample.epoch or sample.seq <= previous[1]:
            return 0
        return sample.seq - previous[1] - 1

    def line(self, entry: StreamEntry) -> str:
        sample = entry.sample
        missed = self.missed(sample)
        if self.settings.json:
            record: dict[str, Any] = {
                "node": sample.node, "kind": sample.kind, "ts": sample.ts, "seq": sample.seq,
                "epoch": sample.epoch, "id": entry.entry_id, "values": dict(sample.values)}
            if sample.labels:
                record["labels"] = dict(sample.labels)
            if missed:
                record["missed"] = missed
            return _as_json(record)
        if missed:
            self.err.write(f"# {sample.topic}: {missed} sample(s) missed before seq "
                           f"{sample.seq}\n")
        stamp = time.strftime("%H:%M:%S", time.localtime(sample.ts)) + \
            f".{int(sample.ts % 1 * 1000):03d}"
        shown, more = _pick_values(sample.values, self.settings.metric,
                                   self.settings.max_values)
        text = " ".join(f"{k}={_short(v)}" for k, v in shown)
        return f"{stamp} {sample.topic} #{sample.seq} {text}" + (f" (+{more})" if more else "")

    def write(self, entry: StreamEntry) -> None:
        self.out.write(self.line(entry) + "\n")
        self.out.flush()
        self.printed += 1


async def run_tail(settings: TailSettings, pattern: TopicPattern, out: TextIO,
                   err: TextIO) -> int:
    """Print matching updates until ``count`` is reached or SIGINT/SIGTERM. Cancelling is
    safe."""
    layout = KeyLayout(settings.key_prefix, settings.shards)
    redis = connect(settings.redis_url, client_name="metrics-hub-tail")
    printer = TailPrinter(settings, out, err)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        start: str = "$"
        if settings.since > 0:
            seconds, _ = await redis.time()
            start = f"{max(0, int((float(seconds) - settings.since) * 1000))}-0"
        async with TaskManager(name="tail") as tasks:
            reader = StreamReader(redis, layout, task_manager=tasks, start=start,
                                  block_ms=1000, name="tail")

            async def follow() -> None:
                async for batch in reader:
                    for entry in batch:
                        if pattern.matches(entry.sample.node, entry.sample.kind):
                            try:
                                printer.write(entry)
                            except BrokenPipeError:  # `| head`: the reader has gone
                                printer.broken = True
                                stop.set()
                                return
                            if settings.count and printer.printed >= settings.count:
                                stop.set()
                                return

            follower = tasks.create_task(follow(), name="tail:follow")
            stopper = tasks.create_task(stop.wait(), name="tail:stop")
            await asyncio.wait([follower.task, stopper.task], return_when=asyncio.FIRST_COMPLETED)
            if follower.task.done() and not follower.task.cancelled():
                follower.task.result()
            await reader.aclose()
        if printer.broken:
            raise BrokenPipeError
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
        await redis.aclose()
    return 0


def tail_main(argv: list[str] | None = None) -> int:
    """``metrics-hub tail [PATTERN]``: print live updates; 2 for a bad pattern or option."""
    args = sys.argv[1:] if argv is None else list(argv)
    positionals, rest = split_positionals(TAIL_SPEC.parser(), args)
    if len(positionals) > 1:
        print(f"{TAIL_SPEC.prog}: one PATTERN only, got {len(positionals)}: quote patterns "
              "with * so the shell leaves them alone", file=sys.stderr)
        return 2
    loaded = _load(TAIL_SPEC, rest)
    if isinstance(loaded, int):
        return loaded
    if loaded.print_config:
        print(loaded.describe(TAIL_SPEC))
        return 0
    try:
        pattern = parse_pattern(positionals[0] if positionals else "*")
    except ProtocolError as exc:
        print(f"{TAIL_SPEC.prog}: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_tail(loaded.settings, pattern, sys.stdout, sys.stderr))
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining
        # again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except HubError as exc:
        print(f"{TAIL_SPEC.prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
