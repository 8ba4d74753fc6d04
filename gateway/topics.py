"""Topic patterns (``node/kind`` with ``*`` wildcards) and the index from topics to subscribers.

A pattern segment is exact (``web-1``), a whole-segment wildcard (``*``) or a prefix followed by
``*`` (``web-*``: the ``*`` matches zero or more characters); ``*`` alone means ``*/*``.
``SubscriptionIndex.match(node, kind)`` answers from a per-topic cache, so the fan-out never
scans every subscriber per message.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Hashable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Generic, TypeVar, cast

from gateway import ErrorCode, ProtocolError

# A segment may end with "*" (a prefix match) but hold no other "*"; its characters are those
# of the names it can match, so a pattern that could never match anything is rejected.
_NODE_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}|[A-Za-z0-9_.-]{0,128}\*")
_KIND_SEGMENT_RE = re.compile(r"[a-z0-9_.-]{1,64}|[a-z0-9_.-]{0,64}\*")
MAX_PATTERN_LEN = 129 + 1 + 65
_PARSE_CACHE_SIZE = 4096
_MATCH_CACHE_CAP = 65_536

S = TypeVar("S", bound=Hashable)


class TopicPattern:
    """A parsed, validated topic pattern; equal patterns compare and hash equal.

    ``text`` is the canonical form (``*`` becomes ``*/*``). A segment is exact when its
    ``*_exact`` attribute is set, else it matches names starting with its ``*_prefix``.
    """

    __slots__ = ("text", "node_exact", "node_prefix", "kind_exact", "kind_prefix")

    def __init__(self, node: str, kind: str) -> None:
        self.text = f"{node}/{kind}"
        self.node_exact: str | None = None if node.endswith("*") else node
        self.node_prefix = node[:-1] if self.node_exact is None else node
        self.kind_exact: str | None = None if kind.endswith("*") else kind
        self.kind_prefix = kind[:-1] if self.kind_exact is None else kind

    @property
    def is_exact(self) -> bool:
        """True for a concrete topic (no wildcard)."""
        return self.node_exact is not None and self.kind_exact is not None

    def matches(self, node: str, kind: str) -> bool:
        """Whether the concrete topic ``node/kind`` matches this pattern."""
        if self.node_exact is not None:
            if node != self.node_exact:
                return False
        elif not node.startswith(self.node_prefix):
            return False
        if self.kind_exact is not None:
            return kind == self.kind_exact
        return kind.startswith(self.kind_prefix)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TopicPattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"TopicPattern({self.text!r})"

    def __str__(self) -> str:
        return self.text


@functools.lru_cache(maxsize=_PARSE_CACHE_SIZE)
def _parse(text: str) -> TopicPattern:
    # Cached: thousands of clients subscribe the same few patterns, and sharing one object
    # per pattern keeps the index small. lru_cache does not cache the exceptions.
    if text == "*":
        return TopicPattern("*", "*")
    if len(text) > MAX_PATTERN_LEN or text.count("/") != 1:
        raise ProtocolError(
            ErrorCode.INVALID_TOPIC, f"invalid topic {text[:80]!r}: expected 'node/kind'"
        )
    node, kind = text.split("/")
    if _NODE_SEGMENT_RE.fullmatch(node) is None:
        raise ProtocolError(
            ErrorCode.INVALID_TOPIC,
            f"invalid topic {text!r}: node must be 1-128 of [A-Za-z0-9_.-], "
            "'*', or a prefix followed by '*'",
        )
    if _KIND_SEGMENT_RE.fullmatch(kind) is None:
        raise ProtocolError(
            ErrorCode.INVALID_TOPIC,
            f"invalid topic {text!r}: kind must be 1-64 of [a-z0-9_.-], "
            "'*', or a prefix followed by '*'",
        )
    return TopicPattern(node, kind)


def parse_pattern(text: object) -> TopicPattern:
    """Parse a topic pattern; raises ProtocolError(invalid_topic) for anything else."""
    if not isinstance(text, str):
        raise ProtocolError(
            ErrorCode.INVALID_TOPIC, f"a topic must be a string, not {type(text).__name__}"
        )
    return _parse(text)


def parse_topic(text: object) -> tuple[str, str]:
    """Parse a concrete topic ``node/kind`` (no wildcard); raises ProtocolError(invalid_topic)."""
    pattern = parse_pattern(text)
    if pattern.node_exact is None or pattern.kind_exact is None:
        raise ProtocolError(
            ErrorCode.INVALID_TOPIC, f"invalid topic {pattern.text!r}: wildcards are not allowed"
        )
    return pattern.node_exact, pattern.kind_exact


class PatternSet:
    """A few patterns matched together (a connection's subscriptions, a resume's filter)."""

    __slots__ = ("patterns", "_exact", "_wild")

    def __init__(self, patterns: Iterable[TopicPattern]) -> None:
        self.patterns = frozenset(patterns)
        self._exact = frozenset(
            (p.node_exact, p.kind_exact) for p in self.patterns if p.is_exact
        )
        self._wild = tuple(p for p in self.patterns if not p.is_exact)

    def matches(self, node: str, kind: str) -> bool:
        """Whether any pattern of the set matches ``node/kind``."""
        if (node, kind) in self._exact:
            return True
        return any(p.matches(node, kind) for p in self._wild)

    def __len__(self) -> int:
        return len(self.patterns)


_Group = dict[S, int]  # subscriber -> throttle_ms of one pattern
_NO_MATCH: Mapping[object, int] = MappingProxyType({})


def _merge(groups: list[_Group[S]]) -> Mapping[S, int]:
    """One mapping from several groups, each subscriber with its smallest throttle."""
    if len(groups) == 1:
        return dict(groups[0])
    merged: dict[S, int] = {}
    for group in groups:
        for subscriber, throttle in group.items():
            current = merged.get(subscriber)
            if current is None or throttle < current:
                merged[subscriber] = throttle
    return merged


class SubscriptionIndex(Generic[S]):
    """Which subscribers want a topic, and at which throttle, without scanning subscribers.

    A subscription is one (subscriber, pattern) pair with a ``throttle_ms``; subscribing the
    same pattern again replaces its throttle. Patterns are grouped by what they fix: exact
    topics in a dict, wildcard patterns by their exact node, by their exact kind, or (both
    segments wild) in a short list of distinct patterns, each holding its subscribers.
    ``match`` merges the groups a topic hits into one mapping, subscriber -> the smallest
    throttle of its matching patterns, and caches it per topic; topics hit by the same groups
    share one mapping.

    Any change drops the cached answers it may affect (one topic for an exact pattern, all of
    them otherwise). Rebuilding a topic's answer costs about as much as delivering one message
    to its subscribers, and happens at most once per message after a change, so churn at most
    doubles the fan-out's work. Cached mappings are never mutated: a caller may hold one.
    """

    def __init__(self, *, cache_cap: int = _MATCH_CACHE_CAP) -> None:
        self._subscriptions: dict[S, dict[TopicPattern, int]] = {}
        self._exact: dict[tuple[str, str], _Group[S]] = {}
        self._by_node: dict[str, dict[TopicPattern, _Group[S]]] = {}
        self._by_kind: dict[str, dict[TopicPattern, _Group[S]]] = {}
        self._wild: dict[TopicPattern, _Group[S]] = {}
        self._cache: dict[tuple[str, str], Mapping[S, int]] = {}
        # Answers by the identity of the groups merged; cleared on every change, so an id is
        # never that of a group since dropped.
        self._merged: dict[tuple[int, ...], Mapping[S, int]] = {}
        self._cache_cap = cache_cap
        self._size = 0

    # -- changes ----------------------------------------------------------------------------
    def add(self, subscriber: S, pattern: TopicPattern, throttle_ms: int = 0) -> bool:
        """Subscribe ``subscriber`` to ``pattern``; True if new, False if it replaced a throttle."""
        if throttle_ms < 0:
            raise ValueError(f"throttle_ms must be >= 0, got {throttle_ms}")
        own = self._subscriptions.setdefault(subscriber, {})
        previous = own.get(pattern)
        if previous == throttle_ms:
            return False
        own[pattern] = throttle_ms
        self._group_create(pattern)[subscriber] = throttle_ms
        self._invalidate(pattern)
        if previous is None:
            self._size += 1
            return True
        return False

    def remove(self, subscriber: S, pattern: TopicPattern) -> bool:
        """Unsubscribe ``subscriber`` from ``pattern``; False if it was not subscribed."""
        own = self._subscriptions.get(subscriber)
        if own is None or own.pop(pattern, None) is None:
            return False
        if not own:
            del self._subscriptions[subscriber]
        self._drop_from_group(subscriber, pattern)
        self._invalidate(pattern)
        self._size -= 1
        return True

    def remove_subscriber(self, subscriber: S) -> int:
        """Remove every subscription of ``subscriber`` (on disconnect); returns how many."""
        own = self._subscriptions.pop(subscriber, None)
        if not own:
            return 0
        for pattern in own:
            self._drop_from_group(subscriber, pattern)
            self._invalidate(pattern)
        self._size -= len(own)
        return len(own)

    def clear(self) -> None:
        """Remove every subscription."""
        for mapping in (self._subscriptions, self._exact, self._by_node, self._by_kind,
                        self._wild, self._cache, self._merged):
            mapping.clear()
        self._size = 0

    # -- queries ----------------------------------------------------------------------------
    def match(self, node: str, kind: str) -> Mapping[S, int]:
        """The subscribers of the concrete topic ``node/kind``, each with its throttle_ms.

        The returned mapping must not be modified; it stays valid (a snapshot) after changes.
        """
        key = (node, kind)
        found = self._cache.get(key)
        if found is not None:
            return found
        groups: list[_Group[S]] = []
        exact = self._exact.get(key)
        if exact is not None:
            groups.append(exact)
        by_node = self._by_node.get(node)
        if by_node is not None:
            groups.extend(g for p, g in by_node.items() if p.matches(node, kind))
        by_kind = self._by_kind.get(kind)
        if by_kind is not None:
            groups.extend(g for p, g in by_kind.items() if p.matches(node, kind))
        if self._wild:
            groups.extend(g for p, g in self._wild.items() if p.matches(node, kind))
        result: Mapping[S, int]
        if not groups:
            result = cast("Mapping[S, int]", _NO_MATCH)
        else:
            # Topics hit by the same groups share one answer: with a thousand clients on
            # "*", a thousand topics hold one mapping, not a thousand copies of it.
            group_ids = tuple(map(id, groups))
            shared = self._merged.get(group_ids)
            if shared is None:
                shared = self._merged[group_ids] = _merge(groups)
            result = shared
        if len(self._cache) >= self._cache_cap:
            self._cache.clear()
            self._merged.clear()
        self._cache[key] = result
        return result

    def patterns_of(self, subscriber: S) -> Mapping[TopicPattern, int]:
        """The patterns ``subscriber`` holds, each with its throttle_ms (read-only view)."""
        own = self._subscriptions.get(subscriber)
        if own is None:
            return cast("Mapping[TopicPattern, int]", _NO_MATCH)
        return MappingProxyType(own)

    def subscribers(self) -> Iterator[S]:
        """Every subscriber holding at least one subscription."""
        return iter(self._subscriptions)

    def __len__(self) -> int:
        """How many (subscriber, pattern) subscriptions the index holds."""
        return self._size

    def __contains__(self, subscriber: object) -> bool:
        return subscriber in self._subscriptions

    def sizes(self) -> dict[str, int]:
        """Internal sizes, for leak tests and metrics: every one is 0 once all are removed."""
        return {
            "subscriptions": self._size,
            "subscribers": len(self._subscriptions),
            "exact_topics": len(self._exact),
            "node_groups": sum(len(g) for g in self._by_node.values()),
            "kind_groups": sum(len(g) for g in self._by_kind.values()),
            "wild_patterns": len(self._wild),
            "cached_topics": len(self._cache),
            "cached_answers": len(self._merged),
        }

    # -- internals --------------------------------------------------------------------------
    def _table_for(
        self, pattern: TopicPattern, *, create: bool
    ) -> dict[TopicPattern, _Group[S]] | None:
        """The table of a wildcard pattern's groups (by node, by kind, or the wild list)."""
        if pattern.node_exact is not None:
            node = pattern.node_exact
            return self._by_node.setdefault(node, {}) if create else self._by_node.get(node)
        if pattern.kind_exact is not None:
            kind = pattern.kind_exact
            return self._by_kind.setdefault(kind, {}) if create else self._by_kind.get(kind)
        return self._wild

    def _group_create(self, pattern: TopicPattern) -> _Group[S]:
        if pattern.node_exact is not None and pattern.kind_exact is not None:
            return self._exact.setdefault((pattern.node_exact, pattern.kind_exact), {})
        table = self._table_for(pattern, create=True)
        assert table is not None
        return table.setdefault(pattern, {})

    def _group_get(self, pattern: TopicPattern) -> _Group[S] | None:
        if pattern.node_exact is not None and pattern.kind_exact is not None:
            return self._exact.get((pattern.node_exact, pattern.kind_exact))
        table = self._table_for(pattern, create=False)
        return None if table is None else table.get(pattern)

    def _drop_from_group(self, subscriber: S, pattern: TopicPattern) -> None:
        group = self._group_get(pattern)
        if group is None:  # pragma: no cover - the tables always agree with _subscriptions
            return
        group.pop(subscriber, None)
        if group:
            return
        # The last subscriber of a pattern is gone: drop the empty containers too (no leak).
        node, kind = pattern.node_exact, pattern.kind_exact
        if node is not None and kind is not None:
            del self._exact[(node, kind)]
        elif node is not None:
            by_node = self._by_node[node]
            del by_node[pattern]
            if not by_node:
                del self._by_node[node]
        elif kind is not None:
            by_kind = self._by_kind[kind]
            del by_kind[pattern]
            if not by_kind:
                del self._by_kind[kind]
        else:
            del self._wild[pattern]

    def _invalidate(self, pattern: TopicPattern) -> None:
        self._merged.clear()
        if pattern.node_exact is not None and pattern.kind_exact is not None:
            self._cache.pop((pattern.node_exact, pattern.kind_exact), None)
        else:
            self._cache.clear()
