"""Validation of the names a sample carries: node, kind, topic, metric name, label.

The rules for node, kind and topic are PROTOCOL.md's; metric and label names are ours
(docs/model.md). Topic patterns are the gateway's (gateway/topics.py).
"""

from __future__ import annotations

import re

from hub.errors import ValidationError

NODE_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
KIND_RE = re.compile(r"[a-z0-9_.-]{1,64}")
# A metric name: a Prometheus-style base name, optionally followed by ".<instance>" where the
# instance names a device, interface or mount ("net_rx_bytes_total.eth0", "fs_used_bytes./var").
METRIC_RE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]{0,127}(?:\.[A-Za-z0-9_:./@+=-]{1,127})?")
LABEL_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_LABEL_VALUE_LEN = 256

BUILTIN_KINDS = frozenset({"system", "gateway", "alert"})


def validate_node(node: object) -> str:
    """Return ``node`` if it is a valid node name, else raise ValidationError."""
    if not isinstance(node, str) or NODE_RE.fullmatch(node) is None:
        raise ValidationError(f"invalid node name {node!r}: use 1-128 of [A-Za-z0-9_.-]")
    return node


def validate_kind(kind: object) -> str:
    """Return ``kind`` if it is a valid kind, else raise ValidationError."""
    if not isinstance(kind, str) or KIND_RE.fullmatch(kind) is None:
        raise ValidationError(f"invalid kind {kind!r}: use 1-64 of [a-z0-9_.-]")
    return kind


def validate_metric_name(name: object) -> str:
    """Return ``name`` if it is a valid metric name, else raise ValidationError."""
    if not isinstance(name, str) or METRIC_RE.fullmatch(name) is None:
        raise ValidationError(
            f"invalid metric name {name!r}: use [A-Za-z_:][A-Za-z0-9_:]* with an optional "
            "'.instance' suffix"
        )
    return name


def validate_label(key: object, value: object) -> None:
    """Raise ValidationError unless ``key``/``value`` form a valid label."""
    if not isinstance(key, str) or LABEL_KEY_RE.fullmatch(key) is None:
        raise ValidationError(f"invalid label name {key!r}: use [A-Za-z_][A-Za-z0-9_]{{0,63}}")
    if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE_LEN or not _is_utf8(value):
        raise ValidationError(
            f"invalid value for label {key!r}: a string of at most {MAX_LABEL_VALUE_LEN} "
            "characters, encodable as UTF-8"
        )


def _is_utf8(value: str) -> bool:
    """False for strings with lone surrogates, which UTF-8 (msgpack, JSON frames) cannot carry."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def topic(node: str, kind: str) -> str:
    """The topic of a node's kind: ``node/kind``."""
    return f"{node}/{kind}"


def split_topic(value: object) -> tuple[str, str]:
    """Split and validate a concrete topic ``node/kind``."""
    if not isinstance(value, str) or value.count("/") != 1:
        raise ValidationError(f"invalid topic {value!r}: expected 'node/kind'")
    node, kind = value.split("/")
    return validate_node(node), validate_kind(kind)
