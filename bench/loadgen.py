"""Load generator for a metrics-hub gateway: thousands of lean WebSocket clients in a few processes.

    python -m bench.loadgen --url ws://127.0.0.1:8080/ws --clients 1000 --procs 2 --duration 20 \
        --subscribe '*' [--throttle-ms N] [--idle] [--resume-storm --failover-url URL ...] \
        [--redis-url URL --publish-rate 20 --nodes 20]

The clients live in ``--procs`` worker processes, each an asyncio loop of bare
``asyncio.Protocol`` connections with a hand-rolled RFC 6455 receive path (no task, queue or
full JSON parse per update), so the generator costs far less per delivery than the server it
loads. Over one measurement window they count: updates delivered, latency from the sample's
``ts`` (the publisher's wall clock at publish) to receipt, seq gaps and duplicates per topic,
closes by code, heartbeat pings, resumes, and their own CPU. The merged result is one JSON object
on stdout. ``--control`` prints ``{"event": "ready", ...}`` once every client is in and then
obeys JSON commands on stdin (``{"cmd": "measure", "t0": .., "t1": ..}``, ``{"cmd": "quit"}``):
that is how bench/gateway.py drives it. ``--publisher`` runs the publish side instead: samples of
40 fields at a target rate over N nodes, each stamped with its publish time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from bench._wsclient import (
    HIST_CAP,
    HIST_PER_S,
    Client,
    ClientOptions,
    ConnectionLost,
    HandshakeFailed,
    Meter,
    Target,
)
from hub.tasks import TaskManager

BENCHMARK = False  # a tool of the gateway benchmark, not a benchmark of its own

CONNECT_ATTEMPTS = 5
HANDSHAKE_TIMEOUT_S = 30.0
# Per worker: 2 workers x 50 keep a connect burst within asyncio's default listen backlog (100).
CONNECTS_IN_FLIGHT = 50


# -- a worker process -----------------------------------------------------------------------
@dataclass
class WorkerConfig:
    targets: list[Target]
    clients: int
    options: ClientOptions
    index: int = 0
    connect_deadline_s: float = 120.0
    connects_in_flight: int = CONNECTS_IN_FLIGHT


class Worker:
    """The clients of one process, the commands it obeys, and its connect/reconnect tasks."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.meter = Meter()
        self.tasks = TaskManager(name=f"loadgen-worker-{config.index}")
        self.slots = asyncio.Semaphore(config.connects_in_flight)
        self.clients = [Client(config.index * 1_000_000 + n, config.targets, config.options,
                               self.meter, self) for n in range(config.clients)]
        self.connect_failures = 0
        self.transports = 0  # open TCP connections
        self.all_closed = asyncio.Event()

    async def open(self, client: Client) -> bool:
        """Connect ``client`` to its current target and wait until subscribed; with retries.

        Cancelling is safe (the half-open transport is aborted).
        """
        loop = asyncio.get_running_loop()
        async with self.slots:
            for attempt in range(CONNECT_ATTEMPTS):
                ready = client.prepare(loop)
                target = client.target
                try:
                    await loop.create_connection(lambda: client, target.host, target.port)
                    async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                        await ready
                    return True
                except (OSError, TimeoutError, HandshakeFailed, ConnectionLost) as exc:
                    if not ready.done():
                        ready.cancel()
                    elif not ready.cancelled():
                        ready.exception()  # retrieved: no "never retrieved" warning
                    if client.transport is not None:
                        client.closing = True
                        client.transport.abort()
                    if attempt == CONNECT_ATTEMPTS - 1:
                        client._note_error(f"connect to {target.host}:{target.port}: {exc!r}")
                    await asyncio.sleep(0.05 * 2 ** attempt)
        self.connect_failures += 1
        return False

    def transport_opened(self) -> None:
        self.transports += 1

    def transport_closed(self) -> None:
        self.transports -= 1
        if self.transports <= 0:
            self.all_closed.set()

    def reconnect(self, client: Client) -> None:
        """Called from ``connection_lost``: reopen on the client's next target."""
        self.tasks.create_task(self.open(client), name=f"reconnect-{client.index}",
                               group="reconnect")

    async def run(self) -> None:
        started = time.monotonic()
        async with self.tasks:
            opened = [self.tasks.create_task(self.open(c), name=f"connect-{c.index}",
                                             group="connect") for c in self.clients]
            await asyncio.wait([record.task for record in opened],
                               timeout=self.config.connect_deadline_s)
            await self.tasks.cancel_group("connect")
            ready = sum(1 for client in self.clients if client.is_open)
            heartbeats = {c.heartbeat_s for c in self.clients if c.heartbeat_s is not None}
            emit({"event": "ready", "connected": ready,
                  "connect_failures": len(self.clients) - ready,
                  "connect_s": round(time.monotonic() - started, 3),
                  "heartbeat_s": max(heartbeats) if heartbeats else None,
                  "error_samples": self.meter.error_samples[:3]})
            await self.obey()
            await self.close_all()

    async def obey(self) -> None:
        """Run commands from stdin, one JSON object a line, until ``quit`` or EOF."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            while line := await reader.readline():
                command = json.loads(line)
                if command.get("cmd") == "measure":
                    emit(await self.measure(float(command["t0"]), float(command["t1"])))
                elif command.get("cmd") == "quit":
                    break
        finally:
            transport.close()

    async def measure(self, t0: float, t1: float) -> dict[str, Any]:
        """Count what arrives in [t0, t1) (wall clock) and this process's CPU meanwhile."""
        self.meter.arm(t0, t1)
        await asyncio.sleep(max(0.0, t0 - time.time()))
        cpu0 = time.process_time()
        await asyncio.sleep(max(0.0, t1 - time.time()))
        cpu1 = time.process_time()
        report = self.meter.report()
        report.update(event="result", t0=t0, t1=t1, cpu_s=cpu1 - cpu0,
                      open=sum(1 for client in self.clients if client.is_open),
                      clients=len(self.clients))
        return report

    async def close_all(self) -> None:
        await self.tasks.cancel_group("reconnect")
        for client in self.clients:
            client.close()
        if self.transports > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    await self.all_closed.wait()


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed (the coordinator reads it)."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def raise_fd_limit(wanted: int = 1 << 16) -> None:
    """Lift the open-files limit towards ``wanted`` (10,000 connections need it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):  # not root: as high as the hard limit allows
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))


# -- the publisher driver -------------------------------------------------------------------
async def run_publisher(redis_url: str, rate: float, nodes: int, kind: str) -> None:
    """Publish 40-field samples at ``rate`` per second over ``nodes`` nodes until stdin ends.

    Each sample's ts is the wall time just before its batch is sent, so a client's receipt
    time minus ts is the end-to-end latency. Commands on stdin: ``{"cmd": "rate", "rate": R}``,
    ``{"cmd": "stats"}`` (answers ``{"published": n, "t": now}``), ``{"cmd": "quit"}``.
    """
    from bench.codec import typical_system_sample
    from hub.publisher import Publisher
    from hub.redis_url import connect

    base = typical_system_sample()
    samples = [base._replace(node=f"bench-{n:03d}", kind=kind) for n in range(nodes)]
    seqs = [0] * nodes
    epoch = int(time.time() * 1000)
    redis = connect(redis_url)
    publisher = Publisher(redis, interval_s=1.0)
    state = {"rate": rate, "base": time.monotonic(), "due_sent": 0, "published": 0}
    changed = asyncio.Event()
    stop = asyncio.Event()

    async def commands() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            while line := await reader.readline():
                command = json.loads(line)
                if command.get("cmd") == "rate":
                    state.update(rate=float(command["rate"]), base=time.monotonic(), due_sent=0)
                    changed.set()
                elif command.get("cmd") == "stats":
                    emit({"event": "stats", "published": state["published"], "t": time.time()})
                elif command.get("cmd") == "quit":
                    break
        finally:
            transport.close()
            stop.set()
            changed.set()

    async def publish() -> None:
        next_node = 0
        while not stop.is_set():
            current = state["rate"]
            if current <= 0:
                changed.clear()
                await changed.wait()
                continue
            due = int((time.monotonic() - state["base"]) * current) - int(state["due_sent"])
            if due > 0:
                due = min(due, 1000)
                now = time.time()
                batch = []
                for _ in range(due):
                    node = next_node
                    next_node = (next_node + 1) % nodes
                    seqs[node] += 1
                    batch.append(samples[node]._replace(seq=seqs[node], epoch=epoch, ts=now))
                await publisher.publish_batch(batch)
                state["due_sent"] += due
                state["published"] += due
            wake = state["base"] + (state["due_sent"] + 1) / current
            changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake - time.monotonic())):
                    await changed.wait()

    try:
        async with TaskManager(name="publisher-driver") as tasks:
            tasks.create_task(commands(), name="commands")
            runner = tasks.create_task(publish(), name="publish")
            await redis.ping()  # a wrong Redis URL fails here, before the harness waits on us
            emit({"event": "ready", "rate": rate, "nodes": nodes})
            await stop.wait()
            await tasks.cancel_task(runner)
    finally:
        emit({"event": "done", "published": state["published"]})
        await redis.aclose()


# -- the coordinator ------------------------------------------------------------------------
class LineReader:
    """Lines from a child's stdout with a deadline (a hung child must not hang the bench)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.fd = stream.fileno()
        self.buf = b""

    def readline(self, timeout: float) -> bytes | None:
        """The next line without its newline; None at end of file; TimeoutError past timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line from the child within {timeout:g} s")
            readable, _, _ = select.select([self.fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                rest, self.buf = self.buf, b""
                return rest or None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def read_json(self, timeout: float) -> dict[str, Any]:
        """The next line that holds a JSON object (other lines are echoed to stderr)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise EOFError("the child exited")
            if line.startswith(b"{"):
                obj: dict[str, Any] = json.loads(line)
                return obj
            sys.stderr.write(line.decode(errors="replace") + "\n")


def quantile_ms(hist: dict[int, int], total: int, q: float) -> float:
    """The ``q`` quantile of a merged latency histogram, in milliseconds."""
    if total <= 0:
        return math.nan
    rank = q * (total - 1)
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen > rank:
            return (bucket + 0.5) * 1000 / HIST_PER_S
    return HIST_CAP * 1000 / HIST_PER_S


def merge(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One result from the workers': sums, the merged histogram and its quantiles."""
    results = list(results)
    out: dict[str, Any] = {}
    for key in ("delivered", "bytes", "gaps", "dups", "snapshots", "resets", "errors", "pings",
                "drops", "resumed", "other", "gaps_total", "dups_total", "open", "clients"):
        out[key] = sum(int(r.get(key, 0)) for r in results)
    out["cpu_s"] = sum(float(r.get("cpu_s", 0.0)) for r in results)
    closes: Counter[str] = Counter()
    hist: Counter[int] = Counter()
    close_times: list[float] = []
    resume_ms: list[float] = []
    resume_times: list[float] = []
    samples: list[str] = []
    for r in results:
        closes.update(r.get("closes", {}))
        hist.update({int(bucket): n for bucket, n in r.get("hist", {}).items()})
        close_times += r.get("close_times", [])
        resume_ms += r.get("resume_ms", [])
        resume_times += r.get("resume_times", [])
        samples += r.get("error_samples", [])
    t0 = min(r["t0"] for r in results) if results else 0.0
    t1 = max(r["t1"] for r in results) if results else 0.0
    window = max(t1 - t0, 1e-9)
    delivered = out["delivered"]
    out.update(
        t0=t0, t1=t1, window_s=window, closes=dict(closes), close_times=sorted(close_times),
        resume_ms=sorted(resume_ms), resume_times=sorted(resume_times), error_samples=samples[:5],
        delivered_per_s=delivered / window, bytes_per_s=out["bytes"] / window,
        cpu_cores=out["cpu_s"] / window,
        cpu_us_per_delivery=out["cpu_s"] / delivered * 1e6 if delivered else math.nan,
        latency_ms={
            "p50": quantile_ms(hist, delivered, 0.50), "p90": quantile_ms(hist, delivered, 0.90),
            "p99": quantile_ms(hist, delivered, 0.99),
            "p999": quantile_ms(hist, delivered, 0.999),
            "max": quantile_ms(hist, delivered, 1.0),
            "mean": (sum((b + 0.5) * n for b, n in hist.items()) / delivered * 1000 / HIST_PER_S
                     if delivered else math.nan),
        },
    )
    return out


@dataclass
class Coordinator:
    """Starts the worker processes, merges their results; ``close()`` always stops them."""

    argv: list[str]
    procs: int
    clients: int
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    readers: list[LineReader] = field(default_factory=list)

    def start(self, timeout: float) -> dict[str, Any]:
        """Spawn the workers and wait until each is connected; returns the merged ready line."""
        shares = [self.clients // self.procs + (1 if n < self.clients % self.procs else 0)
                  for n in range(self.procs)]
        for index, share in enumerate(shares):
            worker = subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen", "--worker", str(index),
                 *self.argv, "--clients", str(share)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
            self.workers.append(worker)
            assert worker.stdout is not None
            self.readers.append(LineReader(worker.stdout))
        ready = [reader.read_json(timeout) for reader in self.readers]
        heartbeats = [r["heartbeat_s"] for r in ready if r.get("heartbeat_s") is not None]
        return {"event": "ready", "clients": self.clients, "procs": self.procs,
                "connected": sum(r["connected"] for r in ready),
                "connect_failures": sum(r["connect_failures"] for r in ready),
                "connect_s": max(r["connect_s"] for r in ready),
                "heartbeat_s": max(heartbeats) if heartbeats else None,
                "error_samples": [s for r in ready for s in r.get("error_samples", [])][:3]}

    def send(self, command: dict[str, Any]) -> None:
        line = (json.dumps(command) + "\n").encode()
        for worker in self.workers:
            assert worker.stdin is not None
            worker.stdin.write(line)
            worker.stdin.flush()

    def measure(self, t0: float, t1: float) -> dict[str, Any]:
        """Every worker counts [t0, t1); returns the merged result (after t1)."""
        self.send({"cmd": "measure", "t0": t0, "t1": t1})
        timeout = max(0.0, t1 - time.time()) + 30.0
        merged = merge(reader.read_json(timeout) for reader in self.readers)
        merged["event"] = "result"
        return merged

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send({"cmd": "quit"})
        for worker in self.workers:
            with contextlib.suppress(OSError, ValueError):
                if worker.stdin is not None:
                    worker.stdin.close()
        deadline = time.monotonic() + 10.0
        for worker in self.workers:
            try:
                worker.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The options every worker gets (``--clients`` is added per worker)."""
    argv = ["--url", args.url, "--connect-deadline", str(args.connect_deadline),
            "--connects-in-flight", str(args.connects_in_flight)]
    for pattern in args.subscribe:
        argv += ["--subscribe", pattern]
    for url in args.failover_url:
        argv += ["--failover-url", url]
    if args.throttle_ms is not None:
        argv += ["--throttle-ms", str(args.throttle_ms)]
    argv += [flag for flag, on in (("--idle", args.idle), ("--snapshot", args.snapshot),
                                   ("--resume-storm", args.resume_storm)) if on]
    return argv


def summary(result: dict[str, Any]) -> str:
    latency = result["latency_ms"]
    return (f"{result['delivered_per_s']:,.0f} deliveries/s over {result['window_s']:.1f} s; "
            f"latency p50 {latency['p50']:.1f} ms p99 {latency['p99']:.1f} ms max "
            f"{latency['max']:.1f} ms; gaps {result['gaps']} dups {result['dups']}; drops "
            f"{result['drops']}; open {result['open']}/{result['clients']}; loadgen CPU "
            f"{result['cpu_cores']:.2f} cores ({result['cpu_us_per_delivery']:.1f} µs/delivery)")


def coordinate(args: argparse.Namespace) -> int:
    raise_fd_limit()
    publisher: subprocess.Popen[bytes] | None = None
    coordinator = Coordinator(worker_argv(args), args.procs, args.clients)
    try:
        if args.publish_rate:
            if not args.redis_url:
                raise SystemExit("--publish-rate needs --redis-url")
            publisher = subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen", "--publisher", "--redis-url",
                 args.redis_url, "--publish-rate", str(args.publish_rate),
                 "--nodes", str(args.nodes)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
            assert publisher.stdout is not None
            LineReader(publisher.stdout).read_json(30.0)
        ready = coordinator.start(args.connect_deadline + 30.0)
        if args.control:
            emit(ready)
            return control(coordinator)
        print(f"{ready['connected']}/{args.clients} clients connected in "
              f"{ready['connect_s']:.1f} s", file=sys.stderr)
        time.sleep(args.warmup)
        t0 = time.time() + 0.2
        result = coordinator.measure(t0, t0 + args.duration)
        result.update(connected=ready["connected"], connect_s=ready["connect_s"])
        print(summary(result), file=sys.stderr)
        emit(result)
        return 0
    finally:
        coordinator.close()
        if publisher is not None:
            with contextlib.suppress(OSError):
                assert publisher.stdin is not None
                publisher.stdin.close()
            try:
                publisher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                publisher.kill()
                publisher.wait()


def control(coordinator: Coordinator) -> int:
    """Obey the harness: measure windows on request, until ``quit`` or end of input."""
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("cmd") == "measure":
            emit(coordinator.measure(float(command["t0"]), float(command["t1"])))
        elif command.get("cmd") == "quit":
            break
    return 0


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws", help="the gateway's /ws URL")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--duration", type=float, default=20.0, help="measurement window, s")
    parser.add_argument("--warmup", type=float, default=2.0, help="s between connected and "
                        "the window")
    parser.add_argument("--subscribe", action="append", default=None, metavar="PATTERN",
                        help="topic pattern (repeatable; default '*')")
    parser.add_argument("--throttle-ms", type=int, default=None)
    parser.add_argument("--snapshot", action="store_true", help="ask for snapshots on subscribe")
    parser.add_argument("--idle", action="store_true",
                        help="connect and subscribe to nothing (ready on welcome)")
    parser.add_argument("--resume-storm", action="store_true",
                        help="track cursors; when a connection drops, resume on the next "
                             "--failover-url with the last cursor")
    parser.add_argument("--failover-url", action="append", default=[], metavar="URL")
    parser.add_argument("--connect-deadline", type=float, default=120.0,
                        help="s allowed for all clients to connect")
    parser.add_argument("--connects-in-flight", type=int, default=CONNECTS_IN_FLIGHT,
                        help="handshakes (and resumes) in progress at once per process")
    parser.add_argument("--control", action="store_true",
                        help="print a ready line, then obey JSON commands on stdin")
    parser.add_argument("--redis-url", help="with --publish-rate: publish into this Redis")
    parser.add_argument("--publish-rate", type=float, default=0.0,
                        help="also run a publisher at this many samples/s")
    parser.add_argument("--nodes", type=int, default=20, help="nodes the publisher spreads over")
    parser.add_argument("--kind", default="system", help="kind of the published samples")
    parser.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.subscribe = args.subscribe or ["*"]
    if args.clients < 1 or args.procs < 1 or args.duration <= 0:
        parser.error("--clients, --procs and --duration must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    # The parent (bench/gateway.py) stops us with SIGTERM: exit through finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.publisher:
        asyncio.run(run_publisher(args.redis_url, args.publish_rate, args.nodes, args.kind))
        return 0
    if args.worker is not None:
        raise_fd_limit()
        targets = [Target.parse(url) for url in (args.url, *args.failover_url)]
        options = ClientOptions(tuple(args.subscribe), args.throttle_ms, args.idle,
                                args.snapshot, track_cursor=args.resume_storm)
        config = WorkerConfig(targets, args.clients, options, args.worker, args.connect_deadline,
                              args.connects_in_flight)
        asyncio.run(Worker(config).run())
        return 0
    return coordinate(args)


if __name__ == "__main__":
    sys.exit(main())
