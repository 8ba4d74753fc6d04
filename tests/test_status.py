"""`metrics-hub status` and `metrics-hub tail`: what they read from a real Redis, how they
print it, and how they fail."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.keys import KeyLayout
from hub.publisher import Publisher
from hub.reader import StreamEntry
from hub.redis_url import connect
from hub.sample import Sample
from hub.status import (
    TAIL_SPEC,
    GatewayRow,
    HubStatus,
    NodeRow,
    StreamRow,
    TailPrinter,
    TailSettings,
    gather,
    lifetime_rate,
    render,
    sample_rate,
    split_positionals,
)
from tests.live import wait_until
from tests.redis_server import RedisServer, free_port

EPOCH_MS = 1_800_000_000_000


def sample(node: str, seq: int, ts: float, kind: str = "system", epoch: int = EPOCH_MS,
           values: dict[str, float] | None = None) -> Sample:
    return Sample.build(node, kind, values or {"cpu_utilization_ratio": 0.5, "load1": 1.0},
                        seq=seq, epoch=epoch, ts=ts)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Any]:
    redis = connect(redis_server.url)
    yield redis
    await redis.aclose()


# -- pure parts -------------------------------------------------------------------------------
def test_rates_from_two_readings_and_from_the_epoch() -> None:
    """Two readings give seq per second; without a new sample, an epoch in ms gives the rate
    since the run started; a new epoch or a small one gives nothing."""
    assert sample_rate(sample("a", 10, 100.0), sample("a", 14, 102.0)) == 2.0
    assert sample_rate(sample("a", 10, 100.0), sample("a", 10, 100.0)) is None
    assert sample_rate(sample("a", 10, 100.0), sample("a", 11, 101.0, epoch=9)) is None
    started = EPOCH_MS / 1000
    assert lifetime_rate(sample("a", 600, started + 300)) == 2.0
    assert lifetime_rate(sample("a", 600, started + 300, epoch=7)) is None


def test_render_shows_every_section() -> None:
    """The text has the server, each node with state and rate, gateways with connections and
    lag, streams with their totals, and explains an estimated rate."""
    status = HubStatus(
        "redis://h:6379/0", "mh", 2, {"redis_version": "7.0.15", "used_memory_human": "2M"},
        [NodeRow("web-1", ["system"], 1.2, True, 1.0),
         NodeRow("old-1", ["collector", "system"], 700.0, False, 0.1, rate_estimated=True)],
        [GatewayRow("gw-1", 3.0, 12.0, 0.25)],
        [StreamRow(0, "mh:{s0}:stream", 40, 3600.0, 0.5), StreamRow(1, "mh:{s1}:stream", 2,
                                                                   30.0, 1.0)],
        [], 2, 2.0)
    text = render(status)
    assert "redis 7.0.15, 2M used" in text
    assert "Nodes: 2" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert lines["web-1"][1:5] == ["up", "1s", "ago", "1/s"]
    assert lines["old-1"][1:5] == ["stale", "12m", "ago", "~0.1/s"]
    assert lines["gw-1"][3:5] == ["12", "0.250s"]
    assert "Streams: 42 entries in 2 shards" in text
    assert "~ rate since" in text


def test_positionals_are_told_from_option_values() -> None:
    """The pattern is found wherever it is, and an option's value is never taken for it."""
    parser = TAIL_SPEC.parser()
    assert split_positionals(parser, ["web-*/system", "--json"]) == (["web-*/system"],
                                                                     ["--json"])
    assert split_positionals(parser, ["--redis-url", "redis://x", "*/app", "--count", "2"]) == \
        (["*/app"], ["--redis-url", "redis://x", "--count", "2"])
    assert split_positionals(parser, ["--key-prefix=mh", "--", "--odd"]) == \
        (["--odd"], ["--key-prefix=mh"])


def test_tail_reports_lost_samples() -> None:
    """A seq jump within an epoch is reported: a note in text mode, "missed" in JSON."""
    out, err = io.StringIO(), io.StringIO()
    text = TailPrinter(TailSettings(max_values=1), out, err)
    for seq in (1, 2, 5):
        text.write(StreamEntry(0, f"1-{seq}", sample("web-1", seq, 1000.0 + seq)))
    assert "web-1/system: 2 sample(s) missed before seq 5" in err.getvalue()
    assert out.getvalue().splitlines()[0].endswith("web-1/system #1 cpu_utilization_ratio=0.5 (+1)")
    as_json = TailPrinter(TailSettings(json=True), io.StringIO(), io.StringIO())
    lines = [as_json.line(StreamEntry(0, f"1-{seq}", sample("web-1", seq, 1000.0)))
             for seq in (1, 4)]
    assert [json.loads(line).get("missed") for line in lines] == [None, 2]


# -- against Redis ------------------------------------------------------------------------------
async def test_gather_reads_nodes_rates_gateways_streams_and_groups(client: Any) -> None:
    """status sees every node with its measured rate, a node whose cache expired as stale, a
    gateway's connections and worst shard lag, stream lengths, and a consumer group's lag."""
    layout = KeyLayout()
    publisher = Publisher(client, layout)
    now = time.time()
    db_started = int((now - 11) * 1000)  # db-1's run started 10 s before its 5th sample
    await publisher.publish_batch([sample("web-1", 1, now - 1),
                                   sample("db-1", 5, now - 1, epoch=db_started),
                                   sample("gw-1", 1, now, kind="gateway", values={
                                       "connections.connected": 7,
                                       "reader_lag_seconds.s0": 0.1,
                                       "reader_lag_seconds.s3": 0.4})])
    await publisher.publish(sample("gone-1", 1, now - 1))
    await client.delete(layout.latest_key("gone-1", "system"))  # as if its TTL had run out
    shard = layout.shard_for("web-1")
    await client.xgroup_create(layout.stream_key(shard), "rollups", id="0")

    async def two_more(_: float) -> None:  # the rate window: web-1 publishes twice in 1 s
        await publisher.publish_batch([sample("web-1", 2, now - 0.5), sample("web-1", 3, now)])

    status = await gather(client, layout, rate_window_s=1.0, sleep=two_more)
    nodes = {n.node: n for n in status.nodes}
    assert sorted(nodes) == ["db-1", "gone-1", "web-1"]  # gw-1 is listed as a gateway
    assert nodes["web-1"].rate_per_s == pytest.approx(2.0)
    assert not nodes["web-1"].rate_estimated
    assert nodes["db-1"].rate_estimated  # no new sample: estimated from seq and epoch
    assert nodes["db-1"].rate_per_s == pytest.approx(0.5, rel=1e-3)
    assert nodes["gone-1"].live is False
    assert nodes["web-1"].live is True
    (gateway,) = status.gateways
    assert (gateway.gateway, gateway.connections, gateway.reader_lag_s) == ("gw-1", 7.0, 0.4)
    assert sum(s.length for s in status.streams) == 4  # read before the rate window
    assert status.streams[shard].newest_age_s is not None
    (group,) = status.groups
    assert (group.shard, group.group, group.lag) == (shard, "rollups",
                                                     status.streams[shard].length)
    assert status.server["redis_version"]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


async def test_status_command_prints_json(client: Any, redis_server: RedisServer) -> None:
    """`metrics-hub status --json` prints one object a script can read."""
    await Publisher(client).publish(sample("web-1", 1, time.time()))
    done = run_cli("status", "--redis-url", redis_server.url, "--rate-window", "0", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert [n["node"] for n in status["nodes"]] == ["web-1"]
    assert len(status["streams"]) == 16


def test_status_without_redis_fails_in_one_line() -> None:
    """With nothing listening, status exits 1 with one line naming the problem."""
    done = run_cli("status", "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
                   "--rate-window", "0")
    assert done.returncode == 1
    assert done.stderr.startswith("metrics-hub status: ")
    assert "Traceback" not in done.stderr


def test_tail_prints_only_what_the_pattern_covers(redis_server: RedisServer) -> None:
    """tail with a pattern prints the matching topics only, replays --since, and stops after
    --count; its JSON lines carry node, kind, seq and values."""
    async def publish(samples: list[Sample]) -> None:
        redis = connect(redis_server.url)
        try:
            await Publisher(redis).publish_batch(samples)
        finally:
            await redis.aclose()

    import asyncio

    now = time.time()
    asyncio.run(publish([sample("web-1", 1, now), sample("db-1", 1, now),
                         sample("web-2", 1, now, kind="app", values={"requests": 3})]))
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "tail", "web-*/system",
                             "--redis-url", redis_server.url, "--json", "--since", "60",
                             "--count", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        seq = 1
        deadline = time.monotonic() + 30
        while proc.poll() is None:  # the second update comes live
            assert time.monotonic() < deadline, "tail did not stop after --count 2"
            seq += 1
            asyncio.run(publish([sample("db-1", seq, time.time()),
                                 sample("web-1", seq, time.time())]))
            time.sleep(0.1)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["node"], x["kind"]) for x in lines] == [("web-1", "system")] * 2
    assert lines[0]["seq"] == 1
    assert lines[1]["seq"] > 1
    assert lines[0]["values"] == {"cpu_utilization_ratio": 0.5, "load1": 1.0}


def test_tail_refuses_a_bad_pattern() -> None:
    """A pattern that is not node/kind is exit 2 and one line, before any connection."""
    done = run_cli("tail", "a/b/c", "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 2
    assert "invalid topic" in done.stderr


def test_tail_stops_quietly_when_its_reader_goes(redis_server: RedisServer,
                                                tmp_path: Path) -> None:
    """`tail | head -1`: when the pipe closes, tail exits 0 without a traceback."""
    import asyncio

    async def publish(seq: int) -> None:
        redis = connect(redis_server.url)
        try:
            await Publisher(redis).publish(sample("web-1", seq, time.time()))
        finally:
            await redis.aclose()

    for seq in range(1, 4):
        asyncio.run(publish(seq))
    errors = tmp_path / "stderr"
    with errors.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "tail", "--redis-url",
                                 redis_server.url, "--since", "60"], stdout=subprocess.PIPE,
                                stderr=stderr)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        proc.stdout.close()  # the reader goes away; the next writes fail
        seq = 4
        deadline = time.monotonic() + 30

        def stopped() -> bool:
            nonlocal seq
            seq += 1
            asyncio.run(publish(seq))
            return proc.poll() is not None

        wait_until(stopped, deadline - time.monotonic(), "tail to exit on a closed pipe", 0.1)
    finally:
        proc.kill()
        proc.wait()
    err = errors.read_text()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
