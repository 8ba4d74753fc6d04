"""The collector as a real process (``python -m collectors``) against a real redis-server:
an outage loses nothing, SIGTERM flushes and exits 0, the spill file survives a crash,
SIGHUP reloads, a bad setting stops the start with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collectors.buffer import SpillFile
from hub.codec import SampleCodec
from hub.sample import Sample
from tests.collectors.redis_read import read_samples, seqs
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis_server
ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class CollectorProcess:
    """A collector subprocess whose stderr goes to a file the test can read."""

    def __init__(self, tmp_path: Path, *args: str, name: str = "collector") -> None:
        self.log_path = tmp_path / f"{name}.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("PYTHONASYNCIODEBUG", None)  # a real deployment's speed, not debug mode
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collectors", "--no-plugins", "--node", "proc-node",
             "--log-level", "debug", *args],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self._log,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"collector did not exit in {timeout}s:\n{self.log()}") \
                from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def collectors(tmp_path: Path) -> Iterator[Callable[..., CollectorProcess]]:
    """Start collector processes; every one still running at the end is killed."""
    started: list[CollectorProcess] = []

    def start(*args: str, name: str = "collector") -> CollectorProcess:
        process = CollectorProcess(tmp_path, *args, name=f"{name}{len(started)}")
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def _system(server: RedisServer) -> list[Sample]:
    return read_samples(server.url, kind="system", node="proc-node")


def _unique_in_order(samples: list[Sample]) -> list[Sample]:
    """Drop repeats of an (epoch, seq) already seen: a publish retried after Redis took it
    but the reply was lost is written twice (readers drop duplicates the same way)."""
    seen: set[tuple[int, int]] = set()
    unique = []
    for sample in samples:
        if (sample.epoch, sample.seq) not in seen:
            seen.add((sample.epoch, sample.seq))
            unique.append(sample)
    return unique


def test_every_sample_taken_during_an_outage_arrives_in_order(
    own_redis_server: RedisServer, collectors: Callable[..., CollectorProcess]
) -> None:
    """Redis stops for 3 s and comes back on the same port: every sample taken meanwhile
    arrives, in order, with no gap in seq, with its original timestamp."""
    collector = collectors("--redis-url", own_redis_server.url, "--interval", "0.2",
                           "--reconnect-max-delay", "0.5")
    wait_until(lambda: len(_system(own_redis_server)) >= 3, what="first samples")
    stopped_at = time.time()
    own_redis_server.stop()
    time.sleep(3.0)  # the outage itself: the scenario under test, not a wait for a condition
    restarted_at = time.time()
    own_redis_server.start()  # same port, empty: only what the collector sends after
    wait_until(lambda: any(s.ts > restarted_at + 0.5 for s in _system(own_redis_server)),
               what="samples taken after the outage")
    collector.signal(signal.SIGTERM)
    assert collector.wait() == 0
    samples = _unique_in_order(_system(own_redis_server))
    assert seqs(samples) == list(range(samples[0].seq, samples[-1].seq + 1)), "a gap in seq"
    assert [s.ts for s in samples] == sorted(s.ts for s in samples)
    assert len({s.epoch for s in samples}) == 1
    # The first sample Redis has now was taken at the start of the outage (the ones before
    # went to the server that stopped)...
    assert samples[0].ts <= stopped_at + 1.0
    # ...and the whole outage is covered at the 0.2 s cadence (a loaded machine may skip
    # a tick now and then: a skipped tick takes no seq, so it is no gap).
    during = [s for s in samples if stopped_at <= s.ts <= restarted_at]
    assert len(during) >= int((restarted_at - stopped_at) / 0.2) // 2
    assert "buffering samples" in collector.log()
    assert "Redis is back" in collector.log()


def test_sigterm_flushes_the_buffer_and_exits_zero(
    own_redis_server: RedisServer, collectors: Callable[..., CollectorProcess]
) -> None:
    """Samples buffered while Redis was away are flushed at SIGTERM, before exit 0."""
    own_redis_server.stop()
    collector = collectors("--redis-url", own_redis_server.url, "--interval", "0.2",
                           "--reconnect-min-delay", "30", "--reconnect-max-delay", "30")
    wait_until(lambda: "buffering samples" in collector.log(), what="the outage noticed")
    time.sleep(0.6)  # the scenario: a few more samples taken while Redis is away
    own_redis_server.start()  # the collector sleeps 15-30 s before its next retry...
    started = time.monotonic()
    collector.signal(signal.SIGTERM)  # ...so only the shutdown flush can publish them
    assert collector.wait() == 0
    assert time.monotonic() - started < 8.0
    samples = _unique_in_order(_system(own_redis_server))
    assert len(samples) >= 2
    assert seqs(samples) == list(range(1, len(samples) + 1))


def test_spilled_samples_survive_a_crash_during_an_outage(
    own_redis_server: RedisServer, collectors: Callable[..., CollectorProcess],
    tmp_path: Path,
) -> None:
    """A collector killed (SIGKILL) while Redis is away leaves its samples in the spill
    file; the next collector publishes them, in order, with their epoch and seqs."""
    spill = tmp_path / "spill.bin"
    own_redis_server.stop()
    first = collectors("--redis-url", own_redis_server.url, "--interval", "0.2",
                       "--spill-file", str(spill), "--reconnect-max-delay", "0.3")
    def spilled() -> int:
        return len([s for s in SpillFile(spill).read(SampleCodec())[0] if s.kind == "system"])

    wait_until(lambda: spilled() >= 5, what="5 samples spilled")
    first.signal(signal.SIGKILL)
    first.wait()
    own_redis_server.start()
    second = collectors("--redis-url", own_redis_server.url, "--interval", "0.2",
                        "--spill-file", str(spill))
    wait_until(lambda: len({s.epoch for s in _system(own_redis_server)}) == 2,
               what="both runs' samples")
    second.signal(signal.SIGTERM)
    assert second.wait() == 0
    samples = _unique_in_order(_system(own_redis_server))
    old_epoch = samples[0].epoch
    old = [s for s in samples if s.epoch == old_epoch]
    new = [s for s in samples if s.epoch != old_epoch]
    assert len(old) >= 3
    assert seqs(old) == list(range(1, len(old) + 1))
    assert seqs(new) == list(range(1, len(new) + 1))
    assert samples.index(old[-1]) < samples.index(new[0])  # the old ones went first
    assert spill.stat().st_size == 0  # everything in it was published


def test_sighup_reloads_the_config_file(
    redis_server: RedisServer, collectors: Callable[..., CollectorProcess], tmp_path: Path
) -> None:
    """After the TOML file gains a source, SIGHUP starts it; a broken file is refused."""
    config = tmp_path / "hub.toml"
    config.write_text(f'redis_url = "{redis_server.url}"\n[collector]\ninterval = 0.2\n')
    collector = collectors("--config", str(config))
    wait_until(lambda: len(_system(redis_server)) >= 2, what="system samples")
    config.write_text(f'redis_url = "{redis_server.url}"\n[collector]\ninterval = 0.2\n'
                      'source = ["tests.collectors.sample_sources:good"]\n')
    collector.signal(signal.SIGHUP)
    wait_until(lambda: read_samples(redis_server.url, kind="good"), what="the new source")
    config.write_text("interval = 'broken'\n")
    collector.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in collector.log(), what="the refusal")
    assert collector.proc.poll() is None
    collector.signal(signal.SIGINT)
    assert collector.wait() == 0


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["--interval", "-1"], {}, "--interval -1: must be from 0.05 to 3600"),
    (["--redis-url", "http://x"], {}, "unknown scheme 'http'"),
    ([], {"METRICS_HUB_SHARDS": "many"}, "METRICS_HUB_SHARDS=many: expected a whole number"),
    (["--source", "nowhere.mod:f"], {}, "--source nowhere.mod:f: cannot import"),
    (["--statsd", "--statsd-address", "localhost"], {}, "expected host:port"),
])
def test_a_bad_setting_stops_the_start_with_one_line(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    """A bad flag or variable exits 2 at once with one line on stderr saying what to fix."""
    out = subprocess.run(
        [sys.executable, "-m", "collectors", "--no-plugins", *args], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True,
        timeout=30,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("metrics-hub collector: ")
    assert expected in lines[0]
