"""The simulated nodes: real metric names, plausible and varied values, one batch per tick."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from collectors.metric_table import METRICS, documented
from hub.errors import ConfigError
from hub.keys import KeyLayout
from hub.latest import latest
from hub.publisher import Publisher
from hub.redis_url import connect
from hub.simulate import ROLES, SimulatedNode, Simulator, main, node_names
from tests.live import simulator, wait_until
from tests.redis_server import RedisServer, free_port

T0 = 1_800_000_000.0


def run(node: SimulatedNode, seconds: int, start: float = T0) -> list[dict[str, float | int]]:
    return [node.step(start + t) for t in range(seconds)]


def test_every_name_is_the_real_collectors() -> None:
    """Each simulated value has a name from collectors/metric_table.py, and together they
    cover every system metric but the platform-specific few a host may lack anyway."""
    names: set[str] = set()
    for name, role in node_names(len(ROLES)):
        for values in run(SimulatedNode(name, role), 3):
            names.update(values)
    assert [n for n in names if not documented("system", n)] == []
    bases = {n.partition(".")[0] for n in names}
    table = {m.name for m in METRICS if m.kind == "system"}
    assert table - bases == set()


def test_values_are_plausible() -> None:
    """Ratios stay in [0, 1], memory adds up, counters never go back, loads are positive."""
    for name, role in node_names(len(ROLES)):
        node = SimulatedNode(name, role, seed=3)
        previous: dict[str, float | int] = {}
        for values in run(node, 900):
            for key, value in values.items():
                if "_ratio" in key:
                    assert 0.0 <= value <= 1.0, (name, key, value)
                if key.partition(".")[0].endswith("_total") and key in previous:
                    assert value >= previous[key], (name, key)
                if key.partition(".")[0].endswith("_per_second") or key.startswith("load"):
                    assert value >= 0, (name, key)
            assert values["memory_used_bytes"] + values["memory_available_bytes"] == \
                values["memory_total_bytes"]
            assert values["cpu_count"] == len([k for k in values
                                               if k.startswith("cpu_utilization_ratio.")])
            previous = values


def test_roles_differ() -> None:
    """A db node reads disk far more than a web node; a batch node alternates bursts and idle;
    a worker leaks memory and then drops back."""
    def series(role: str, key_start: str, seconds: int = 1200) -> list[float]:
        node = SimulatedNode(f"sim-{role}-1", role)
        return [next(v for k, v in values.items() if k.startswith(key_start))
                for values in run(node, seconds)]

    db_disk = series("db", "disk_read_bytes_per_second")
    web_disk = series("web", "disk_read_bytes_per_second")
    assert sum(db_disk) > 5 * sum(web_disk)
    batch_cpu = series("batch", "cpu_utilization_ratio")
    assert max(batch_cpu) > 0.75
    assert min(batch_cpu) < 0.2
    memory = series("worker", "memory_used_ratio", 1800)
    drops = [b - a for a, b in zip(memory, memory[1:], strict=False) if b - a < -0.1]
    assert memory[600] > memory[0], "a slow leak"
    assert drops, "then a restart"


def test_same_seed_same_nodes() -> None:
    """A seed makes the simulation repeatable; another seed changes it."""
    a = run(SimulatedNode("sim-web-1", "web", seed=1), 30)
    b = run(SimulatedNode("sim-web-1", "web", seed=1), 30)
    c = run(SimulatedNode("sim-web-1", "web", seed=2), 30)
    assert a == b
    assert a != c


def test_names_cycle_through_the_roles() -> None:
    """Names are sim-<role>-<n>, every role before any repeats."""
    assert node_names(7) == [("sim-web-1", "web"), ("sim-db-1", "db"),
                             ("sim-cache-1", "cache"), ("sim-batch-1", "batch"),
                             ("sim-worker-1", "worker"), ("sim-web-2", "web"),
                             ("sim-db-2", "db")]
    with pytest.raises(ConfigError, match="unknown role"):
        SimulatedNode("sim-x", "mainframe")


async def test_a_tick_publishes_every_node_in_one_batch(redis_server: RedisServer) -> None:
    """One tick publishes one system sample per node, seq counting ticks; the cache has them."""
    client = connect(redis_server.url)
    try:
        layout = KeyLayout()
        publisher = Publisher(client, layout)
        nodes = [SimulatedNode(n, r) for n, r in node_names(4)]
        clock = iter([T0, T0 + 1.0])
        sim = Simulator(publisher, nodes, clock=lambda: next(clock), epoch=42)
        await sim.tick()
        await sim.tick()
        assert publisher.batches_total == 2
        assert publisher.published_total == 8
        cached = await latest(client, layout, [f"{n.name}/system" for n in nodes])
        assert [(s.node, s.seq, s.epoch, s.ts) for s in cached] == \
            [(n.name, 2, 42, T0 + 1.0) for n in nodes]
    finally:
        await client.aclose()


async def test_a_tick_without_redis_is_skipped_not_raised(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """With Redis away a tick is counted and logged once, and the next ticks go on."""
    client = connect(f"redis://127.0.0.1:{free_port()}/0", retries=0,
                     socket_connect_timeout=0.5)
    try:
        sim = Simulator(Publisher(client), [SimulatedNode("sim-web-1", "web")])
        await sim.tick()
        await sim.tick()
        assert sim.ticks_failed == 2
        assert len([r for r in caplog.records if "cannot publish" in r.message]) == 1
    finally:
        await client.aclose()


def test_the_command_publishes_until_sigterm(redis_server: RedisServer) -> None:
    """`python -m hub.simulate` publishes its nodes and exits 0 on SIGTERM."""
    proc = simulator(redis_server.url, "--nodes", "3", "--interval", "0.2")
    try:
        layout = KeyLayout()
        keys = [layout.latest_key(n, "system") for n, _ in node_names(3)]
        wait_until(lambda: redis_server.cli("EXISTS", *keys).strip() == "3", 20,
                   "three simulated nodes in the cache")
        assert proc.stop(signum=signal.SIGTERM) == 0, proc.log()
    finally:
        proc.close()


def test_the_command_refuses_bad_settings(capsys: Any) -> None:
    """A bad option is one line on stderr and exit 2."""
    assert main(["--nodes", "0"]) == 2
    assert "--nodes 0" in capsys.readouterr().err
