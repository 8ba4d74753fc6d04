"""The key layout: names, sharding, hash tags, validation and the meta-hash check."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import fakeredis
import pytest
from redis.crc import key_slot

from hub.errors import ConfigError, LayoutMismatch, ValidationError
from hub.keys import KeyLayout, check_layout

DOCS = Path(__file__).resolve().parents[2] / "docs" / "redis-layout.md"


def test_key_names_follow_the_documented_patterns() -> None:
    """Every key is built exactly as the API promises, under the prefix."""
    layout = KeyLayout(prefix="hub1", shards=16)
    shard = layout.shard_for("web-1")
    assert layout.stream_key(3) == "hub1:{s3}:stream"
    assert layout.latest_key("web-1", "system") == f"hub1:{{s{shard}}}:latest:web-1/system"
    assert layout.latest_key_for("web-1/system") == layout.latest_key("web-1", "system")
    assert layout.topics_key(15) == "hub1:{s15}:topics"
    assert layout.meta_key() == "hub1:meta"
    assert layout.control_channel() == "hub1:control"
    assert layout.stream_keys() == [f"hub1:{{s{k}}}:stream" for k in range(16)]
    assert layout.topics_keys() == [f"hub1:{{s{k}}}:topics" for k in range(16)]


def test_default_layout() -> None:
    """The defaults are prefix mh and 16 shards."""
    assert KeyLayout() == KeyLayout("mh", 16)
    assert KeyLayout().stream_key(0) == "mh:{s0}:stream"


@pytest.mark.parametrize(
    ("node", "shards", "expected"),
    [("web-1", 16, 8), ("db.example.com", 16, 3), ("node-0", 16, 9), ("a", 1024, 579)],
)
def test_shard_for_is_crc32_of_the_name(node: str, shards: int, expected: int) -> None:
    """shard_for is crc32 mod shards: fixed numbers any process or Python version agrees on."""
    assert KeyLayout(shards=shards).shard_for(node) == expected


def test_shards_spread_nodes() -> None:
    """A thousand node names land on every one of 16 shards."""
    layout = KeyLayout()
    assert {layout.shard_for(f"node-{i}") for i in range(1000)} == set(range(16))


def test_a_node_writes_to_one_cluster_slot() -> None:
    """Stream, latest key and node index of a node share one hash slot."""
    layout = KeyLayout()
    for node in ("web-1", "db-7", "x"):
        shard = layout.shard_for(node)
        slots = {
            key_slot(layout.stream_key(shard).encode()),
            key_slot(layout.topics_key(shard).encode()),
            key_slot(layout.latest_key(node, "system").encode()),
            key_slot(layout.latest_key(node, "app.custom").encode()),
        }
        assert len(slots) == 1


def test_shard_streams_spread_over_slots() -> None:
    """The 16 default shard streams hash to 16 different Cluster slots."""
    keys = KeyLayout().stream_keys()
    assert len({key_slot(key.encode()) for key in keys}) == 16


@pytest.mark.parametrize("prefix", ["", "a b", "x" * 65, "pre{fix}", "é", None])
def test_bad_prefix_is_a_config_error(prefix: object) -> None:
    """A prefix outside [A-Za-z0-9_.:-]{1,64} is refused with a message naming the rule."""
    with pytest.raises(ConfigError, match="prefix"):
        KeyLayout(prefix=prefix)  # type: ignore[arg-type]


@pytest.mark.parametrize("shards", [0, -1, 1025, 2.0, True, "16"])
def test_bad_shard_count_is_a_config_error(shards: object) -> None:
    """A shard count outside 1..1024 (or not an int) is refused."""
    with pytest.raises(ConfigError, match="shard count"):
        KeyLayout(shards=shards)  # type: ignore[arg-type]


def test_extreme_valid_layouts() -> None:
    """One shard and 1024 shards are both allowed; every key name stays well formed."""
    assert KeyLayout(shards=1).stream_keys() == ["mh:{s0}:stream"]
    assert len(KeyLayout("a.b:c-d_e", 1024).stream_keys()) == 1024


def test_shard_out_of_range_is_refused() -> None:
    """A shard number outside the layout is a ValidationError, not a silent wrong key."""
    layout = KeyLayout(shards=4)
    for shard in (-1, 4, 1.0):
        with pytest.raises(ValidationError):
            layout.stream_key(shard)  # type: ignore[arg-type]


def test_latest_key_for_refuses_a_bad_topic() -> None:
    """latest_key_for validates the topic."""
    with pytest.raises(ValidationError):
        KeyLayout().latest_key_for("no-slash")


def test_layout_is_frozen() -> None:
    """A layout cannot change after it is built (it is shared between components)."""
    layout = KeyLayout()
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.shards = 8  # type: ignore[misc]


def test_check_meta_refuses_another_shard_count() -> None:
    """A stored meta hash with another shard count raises LayoutMismatch naming both."""
    with pytest.raises(LayoutMismatch, match="shards=8.*shards=16"):
        KeyLayout().check_meta({b"shards": b"8", b"layout_version": b"1"})
    KeyLayout().check_meta({b"shards": b"16"})
    KeyLayout().check_meta({})


async def test_check_layout_records_then_enforces(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    """The first process records its layout; a second with other shards gets LayoutMismatch."""
    await check_layout(fake_redis, KeyLayout(shards=16))
    assert await fake_redis.hgetall("mh:meta") == {b"shards": b"16", b"layout_version": b"1"}
    await check_layout(fake_redis, KeyLayout(shards=16))
    with pytest.raises(LayoutMismatch):
        await check_layout(fake_redis, KeyLayout(shards=32))
    await check_layout(fake_redis, KeyLayout(prefix="other", shards=32))


def test_docs_describe_every_key() -> None:
    """docs/redis-layout.md documents each key pattern the layout builds."""
    text = DOCS.read_text()
    for pattern in ("<prefix>:{s<k>}:stream", "<prefix>:{s<k>}:latest:<node>/<kind>",
                    "<prefix>:{s<k>}:topics", "<prefix>:meta", "<prefix>:control"):
        assert re.search(re.escape(f"`{pattern}`"), text), pattern
