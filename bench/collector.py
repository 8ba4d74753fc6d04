"""The collector's overhead: its own CPU time over a minute at the default 1 s interval with the
default sources, as a percentage of one core, next to the floor (a bare loop making the same
psutil calls at the same cadence and nothing else), both running in the same minute; and the
collector's RSS at the start and the end of that minute.

Goals (issue 3): at most 0.3% of one core; RSS under 40 MB that does not grow. The collector
runs as a real process (``python -m collectors``) against a private redis-server (or the
``--redis-url`` given, under its own key prefix); CPU comes from psutil.Process.cpu_times().
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis

GOAL_CPU_PCT = 0.3
GOAL_RSS_MB = 40.0
PREFIX = "mh-bench-collector"
WARMUP_S = 5.0  # imports, the first readings and the first slow refresh are not steady state
ROOT = Path(__file__).resolve().parents[1]

# The floor: what the collector's system source asks psutil each second (fast part) and
# every 10 s (slow part), in a plain loop on the same drift-free cadence, and nothing else.
FLOOR = """
import os, time, psutil
slow_at = 0.0
next_at = time.monotonic()
while True:
    psutil.cpu_times(percpu=True)
    psutil.getloadavg()
    psutil.virtual_memory()
    psutil.swap_memory()
    psutil.cpu_stats()
    psutil.disk_io_counters(perdisk=True)
    psutil.net_io_counters(pernic=True)
    os.listdir("/sys/block") if os.path.isdir("/sys/block") else None
    if time.monotonic() >= slow_at:
        slow_at = time.monotonic() + 10.0
        for part in psutil.disk_partitions(all=False):
            try:
                os.statvfs(part.mountpoint)
            except OSError:
                pass
        len(psutil.pids())
        psutil.boot_time()
        psutil.cpu_count()
        if hasattr(psutil, "sensors_temperatures"):
            psutil.sensors_temperatures()
    next_at += 1.0
    time.sleep(max(0.0, next_at - time.monotonic()))
"""


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _rss_mb(proc: psutil.Process) -> float:
    return float(proc.memory_info().rss) / (1024 * 1024)


def _published(url: str) -> int:
    from hub.keys import KeyLayout

    client = redis.Redis.from_url(url)
    try:
        return sum(int(client.xlen(key)) for key in KeyLayout(PREFIX).stream_keys())
    finally:
        client.close()


def _clear(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{PREFIX}:*", count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


def measure(url: str, seconds: float) -> dict[str, float]:
    """Run the collector and the floor side by side for ``seconds`` after the warm-up."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONASYNCIODEBUG", None)
    collector = subprocess.Popen(
        [sys.executable, "-m", "collectors", "--redis-url", url, "--key-prefix", PREFIX,
         "--node", "bench-node", "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    floor = subprocess.Popen([sys.executable, "-c", FLOOR], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(WARMUP_S)
        for proc in (collector, floor):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"a benchmark process exited at start: {err.strip()}")
        c_proc, f_proc = psutil.Process(collector.pid), psutil.Process(floor.pid)
        published_0 = _published(url)
        c_cpu0, f_cpu0 = _cpu_s(c_proc), _cpu_s(f_proc)
        rss_start = _rss_mb(c_proc)
        rss_max = rss_start
        started = time.monotonic()
        while (left := seconds - (time.monotonic() - started)) > 0:
            time.sleep(min(5.0, left))
            rss_max = max(rss_max, _rss_mb(c_proc))
        elapsed = time.monotonic() - started
        c_cpu = _cpu_s(c_proc) - c_cpu0
        f_cpu = _cpu_s(f_proc) - f_cpu0
        rss_end = _rss_mb(c_proc)
        published = _published(url) - published_0
    finally:
        for proc in (collector, floor):
            proc.terminate()
        for proc in (collector, floor):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
    collector_pct = 100.0 * c_cpu / elapsed
    floor_pct = 100.0 * f_cpu / elapsed
    return {
        "seconds": elapsed,
        "collector_cpu_pct": collector_pct,
        "floor_cpu_pct": floor_pct,
        "collector_over_floor_ratio": collector_pct / floor_pct if floor_pct else 0.0,
        "cpu_per_sample_us": 1e6 * c_cpu / published if published else 0.0,
        "samples_per_s": published / elapsed,
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "rss_max_mb": rss_max,
        "rss_growth_mb": rss_end - rss_start,
        "goal_cpu_pct": GOAL_CPU_PCT,
        "goal_rss_mb": GOAL_RSS_MB,
    }


def main(quick: bool = False, redis_url: str | None = None) -> dict[str, float]:
    """Measure for 60 s (10 s with ``quick``) and print the report."""
    seconds = 10.0 if quick else float(os.environ.get("BENCH_COLLECTOR_SECONDS", "60"))
    print(f"collector vs floor at the default 1 s interval, {seconds:g} s after a "
          f"{WARMUP_S:g} s warm-up ...", flush=True)
    if redis_url is not None:
        _clear(redis_url)
        try:
            figures = measure(redis_url, seconds)
        finally:
            _clear(redis_url)
    else:
        sys.path.insert(0, str(ROOT))
        from tests.redis_server import RedisServer

        with RedisServer() as server:
            figures = measure(server.url, seconds)
    cpu_ok = figures["collector_cpu_pct"] <= GOAL_CPU_PCT
    rss_ok = figures["rss_max_mb"] < GOAL_RSS_MB and figures["rss_growth_mb"] < 1.0
    print(f"  collector CPU  {figures['collector_cpu_pct']:.3f}% of one core "
          f"(goal <= {GOAL_CPU_PCT}%: {'met' if cpu_ok else 'NOT met'})")
    print(f"  floor CPU      {figures['floor_cpu_pct']:.3f}% (same psutil calls, nothing else)")
    print(f"  per sample     {figures['cpu_per_sample_us']:.0f} µs of collector CPU, "
          f"{figures['samples_per_s']:.2f} samples/s published")
    print(f"  collector RSS  {figures['rss_start_mb']:.1f} MB at start, "
          f"{figures['rss_end_mb']:.1f} MB at end, max {figures['rss_max_mb']:.1f} MB "
          f"(goal < {GOAL_RSS_MB:g} MB, no growth: {'met' if rss_ok else 'NOT met'})")
    return figures


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
