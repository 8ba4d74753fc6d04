"""The name rules: node and kind as PROTOCOL.md writes them, metric and label names as ours."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.errors import HubError, ValidationError
from hub.names import (
    MAX_LABEL_VALUE_LEN,
    split_topic,
    topic,
    validate_kind,
    validate_label,
    validate_metric_name,
    validate_node,
)

PROPERTY = settings(deadline=None, max_examples=300)

# PROTOCOL.md's rules, written out again without regular expressions, as the oracle.
NODE_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
KIND_CHARS = frozenset(string.ascii_lowercase + string.digits + "_.-")


def protocol_node(value: str) -> bool:
    return 1 <= len(value) <= 128 and set(value) <= NODE_CHARS


def protocol_kind(value: str) -> bool:
    return 1 <= len(value) <= 64 and set(value) <= KIND_CHARS


def accepts(validate: object, value: object) -> bool:
    assert callable(validate)
    try:
        validate(value)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    "node", ["web-1", "a", "A_b.c-d", "10.0.0.1", "x" * 128, ".", "-", "node_01.eu-west-1"]
)
def test_valid_nodes(node: str) -> None:
    """Node names within PROTOCOL.md's [A-Za-z0-9_.-]{1,128} are accepted as they are."""
    assert validate_node(node) == node


@pytest.mark.parametrize(
    "node",
    ["", "x" * 129, "web 1", "web/1", "web*", "wéb", "web-1\n", "\nweb", "web\x00", "١٢٣",
     "web:1", None, 1, b"web"],
)
def test_invalid_nodes(node: object) -> None:
    """Anything else is a ValidationError (a HubError), including a trailing newline."""
    with pytest.raises(ValidationError) as info:
        validate_node(node)
    assert isinstance(info.value, HubError)


@pytest.mark.parametrize("kind", ["system", "gateway", "alert", "app.v2", "a-b_c", "k" * 64])
def test_valid_kinds(kind: str) -> None:
    """Kinds within [a-z0-9_.-]{1,64} are accepted."""
    assert validate_kind(kind) == kind


@pytest.mark.parametrize("kind", ["", "System", "k" * 65, "a b", "a/b", "*", "kind\n", None])
def test_invalid_kinds(kind: object) -> None:
    """Upper case, separators, wildcards and over-long kinds are rejected."""
    with pytest.raises(ValidationError):
        validate_kind(kind)


@PROPERTY
@given(st.text(alphabet=st.sampled_from(sorted(NODE_CHARS) + ["/", " ", "é", "\n", "*"]),
               max_size=140) | st.text(max_size=140))
def test_node_rule_matches_protocol(value: str) -> None:
    """validate_node accepts exactly the strings PROTOCOL.md's node rule allows."""
    assert accepts(validate_node, value) == protocol_node(value)


@PROPERTY
@given(st.text(alphabet=st.sampled_from(sorted(KIND_CHARS) + ["A", "Z", "/", " ", "\n"]),
               max_size=70) | st.text(max_size=70))
def test_kind_rule_matches_protocol(value: str) -> None:
    """validate_kind accepts exactly the strings PROTOCOL.md's kind rule allows."""
    assert accepts(validate_kind, value) == protocol_kind(value)


@pytest.mark.parametrize(
    "name",
    ["cpu_user_ratio", "load1", "_x", "a:b", "net_rx_bytes_total.eth0", "fs_used_bytes./",
     "fs_used_bytes./var/lib", "disk_busy_ratio.nvme0n1p1", "m.a@b+c=d-e", "x" * 128,
     "x." + "y" * 127],
)
def test_valid_metric_names(name: str) -> None:
    """A base name with an optional .instance (device, interface, mount) is accepted."""
    assert validate_metric_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "cpu user", "cpu-user", "x" * 129, "x." + "y" * 128, "x.", ".x", "x.a b",
     "cpü", "cpu\n", None, 3],
)
def test_invalid_metric_names(name: object) -> None:
    """Spaces (the wire separator), leading digits and over-long names are rejected."""
    with pytest.raises(ValidationError):
        validate_metric_name(name)


def test_label_rules() -> None:
    """Label names are identifiers up to 64 chars; values are UTF-8 strings up to 256 chars."""
    validate_label("region", "eu-west-1")
    validate_label("k" * 64, "v" * MAX_LABEL_VALUE_LEN)
    validate_label("_x", "")
    validate_label("path", "/var/lib/é ✓")
    for key, value in [("k" * 65, "v"), ("1k", "v"), ("a-b", "v"), ("", "v"), (1, "v"),
                       ("k", "v" * (MAX_LABEL_VALUE_LEN + 1)), ("k", 1), ("k", None),
                       ("k", b"v"), ("k", "lone \ud800 surrogate")]:
        with pytest.raises(ValidationError):
            validate_label(key, value)


def test_topics() -> None:
    """A topic is node/kind; split_topic validates both halves and nothing else passes."""
    assert topic("web-1", "system") == "web-1/system"
    assert split_topic("web-1/system") == ("web-1", "system")
    for bad in ["web-1", "web-1/system/x", "/system", "web-1/", "web 1/system", "web-1/System",
                "*/system", None]:
        with pytest.raises(ValidationError):
            split_topic(bad)
