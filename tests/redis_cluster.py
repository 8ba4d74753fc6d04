"""A private Redis Cluster of redis-server processes on free loopback ports, for tests."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator

from tests.redis_server import RedisServer, free_port, require_redis_server


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is valid and free too."""
    for _ in range(200):
        port = free_port()
        if port <= 55535:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no port pair for a cluster node")


class LocalCluster:
    """``masters`` redis-server processes in cluster mode (no replicas), slots split evenly
    by ``redis-cli --cluster create``."""

    def __init__(self, masters: int = 3, node_timeout_ms: int = 2000) -> None:
        self.nodes = [
            RedisServer(cluster_port(), "--cluster-enabled", "yes", "--cluster-config-file",
                        "nodes.conf", "--cluster-node-timeout", str(node_timeout_ms))
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{node.port}" for node in self.nodes],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       capture_output=True, check=True, timeout=60)
        deadline = time.monotonic() + timeout
        while not all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not come up")
            time.sleep(0.05)

    def node_for_key(self, key: str) -> RedisServer:
        """The master that holds ``key``'s slot."""
        slot = int(self.nodes[0].cli("CLUSTER", "KEYSLOT", key).strip())
        for line in self.nodes[0].cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no node serves slot {slot} of {key!r}")

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def redis_cluster_fixture(masters: int = 3) -> Iterator[LocalCluster]:
    """The body of a pytest fixture: skip (fail under CI=true) without redis-server, start a
    cluster, yield it, always stop it."""
    require_redis_server()
    with LocalCluster(masters) as cluster:
        yield cluster
