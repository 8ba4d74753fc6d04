"""Topic patterns and the subscription index, checked against a brute-force reference."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import ErrorCode, ProtocolError
from gateway.topics import (
    PatternSet,
    SubscriptionIndex,
    TopicPattern,
    parse_pattern,
    parse_topic,
)


def reference_match(pattern: str, node: str, kind: str) -> bool:
    """PROTOCOL.md's rule by another road: fnmatch per segment ('*' alone is '*/*')."""
    if pattern == "*":
        pattern = "*/*"
    node_pat, kind_pat = pattern.split("/")
    return fnmatchcase(node, node_pat) and fnmatchcase(kind, kind_pat)


# -- parsing ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("web-1/system", "web-1/system"),
        ("*", "*/*"),
        ("*/*", "*/*"),
        ("*/system", "*/system"),
        ("web-1/*", "web-1/*"),
        ("web-*/app.*", "web-*/app.*"),
        ("A.b_C-9/x.y_z-0", "A.b_C-9/x.y_z-0"),
        ("n" * 128 + "/" + "k" * 64, "n" * 128 + "/" + "k" * 64),
        ("n" * 128 + "*/k*", "n" * 128 + "*/k*"),
    ],
)
def test_valid_patterns_parse_to_their_canonical_form(text: str, canonical: str) -> None:
    """Every form PROTOCOL.md allows parses, and '*' alone becomes '*/*'."""
    assert parse_pattern(text).text == canonical


@pytest.mark.parametrize(
    "text",
    [
        "", "web-1", "a/b/c", "/system", "web-1/", "/", "we*b/system", "**/system",
        "*a/system", "web-1/System", "web-1/App*", "web 1/system", "web-1/sys tem",
        "n" * 129 + "/system", "web-1/" + "k" * 65, "n" * 129 + "*/system", "*/*/*",
        "web-1/é", "nöde/system", "web-1/system\n", "*/", "/*",
    ],
)
def test_invalid_patterns_raise_invalid_topic(text: str) -> None:
    """Anything outside the grammar is a ProtocolError with code invalid_topic."""
    with pytest.raises(ProtocolError) as info:
        parse_pattern(text)
    assert info.value.code is ErrorCode.INVALID_TOPIC


@pytest.mark.parametrize("value", [None, 1, ["a/b"], b"a/b", {"a": "b"}])
def test_non_string_patterns_raise_invalid_topic(value: object) -> None:
    """A topic that is not a string is invalid_topic, not a crash."""
    with pytest.raises(ProtocolError) as info:
        parse_pattern(value)
    assert info.value.code is ErrorCode.INVALID_TOPIC


def test_equal_patterns_are_equal_and_hash_alike() -> None:
    """'*' and '*/*' are one pattern: same equality, same hash, usable as one dict key."""
    assert parse_pattern("*") == parse_pattern("*/*")
    assert hash(parse_pattern("*")) == hash(TopicPattern("*", "*"))
    assert parse_pattern("a/b") != parse_pattern("a/*")
    assert parse_pattern("a/b") != "a/b"
    assert str(parse_pattern("*")) == "*/*"
    assert "web-*/x" in repr(parse_pattern("web-*/x"))


def test_suffix_star_matches_the_empty_suffix_and_nothing_shorter() -> None:
    """'web-*' matches 'web-' and 'web-12' but not 'web' (the '*' is zero or more chars)."""
    pattern = parse_pattern("web-*/system")
    assert pattern.matches("web-", "system")
    assert pattern.matches("web-12", "system")
    assert not pattern.matches("web", "system")
    assert not pattern.matches("xweb-1", "system")
    assert not pattern.matches("web-1", "systemd")


def test_is_exact() -> None:
    """Only a pattern without any wildcard is exact."""
    assert parse_pattern("a/b").is_exact
    assert not parse_pattern("a/*").is_exact
    assert not parse_pattern("a*/b").is_exact


def test_parse_topic_accepts_concrete_topics_only() -> None:
    """History takes a concrete topic: wildcards and bad names are invalid_topic."""
    assert parse_topic("web-1/system") == ("web-1", "system")
    for bad in ("web-*/system", "*", "web-1/*", "web-1"):
        with pytest.raises(ProtocolError) as info:
            parse_topic(bad)
        assert info.value.code is ErrorCode.INVALID_TOPIC


def test_pattern_set_matches_any_member() -> None:
    """A PatternSet matches a topic when any of its exact or wildcard patterns does."""
    patterns = PatternSet(parse_pattern(t) for t in ("a/system", "web-*/app", "*/alert"))
    assert len(patterns) == 3
    assert patterns.matches("a", "system")
    assert patterns.matches("web-3", "app")
    assert patterns.matches("zz", "alert")
    assert not patterns.matches("b", "system")
    assert not PatternSet([]).matches("a", "b")


NAME = st.text(alphabet="ab.-", min_size=1, max_size=4)
KIND = st.text(alphabet="ab.", min_size=1, max_size=3)


def _segment(names: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        names, st.just("*"), names.map(lambda n: n + "*"), names.map(lambda n: n[:1] + "*")
    )


PATTERN_TEXT = st.one_of(
    st.just("*"), st.tuples(_segment(NAME), _segment(KIND)).map(lambda p: f"{p[0]}/{p[1]}")
)


@settings(max_examples=400, deadline=None)
@given(pattern=PATTERN_TEXT, node=NAME, kind=KIND)
def test_matching_agrees_with_the_reference(pattern: str, node: str, kind: str) -> None:
    """TopicPattern.matches agrees with fnmatch on every generated pattern and topic."""
    assert parse_pattern(pattern).matches(node, kind) == reference_match(pattern, node, kind)


# -- the index --------------------------------------------------------------------------------
def test_index_matches_exact_and_wildcard_subscriptions() -> None:
    """match() returns every subscriber whose pattern covers the topic, and no other."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("exact", parse_pattern("web-1/system"))
    index.add("node", parse_pattern("web-1/*"))
    index.add("kind", parse_pattern("*/system"))
    index.add("prefix", parse_pattern("web-*/sys*"))
    index.add("all", parse_pattern("*"))
    index.add("other", parse_pattern("db-1/system"))
    assert set(index.match("web-1", "system")) == {"exact", "node", "kind", "prefix", "all"}
    assert set(index.match("web-2", "system")) == {"kind", "prefix", "all"}
    assert set(index.match("db-1", "alert")) == {"all"}
    assert len(index) == 6


def test_index_gives_each_subscriber_its_smallest_throttle() -> None:
    """A subscriber matched by several patterns appears once, with the smallest throttle."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("c", parse_pattern("*"), 1000)
    index.add("c", parse_pattern("web-1/*"), 250)
    index.add("c", parse_pattern("*/alert"), 0)
    index.add("d", parse_pattern("*"), 500)
    assert dict(index.match("web-1", "system")) == {"c": 250, "d": 500}
    assert dict(index.match("web-2", "system")) == {"c": 1000, "d": 500}
    assert dict(index.match("web-1", "alert")) == {"c": 0, "d": 500}


def test_resubscribing_replaces_the_throttle() -> None:
    """Subscribing a held pattern again changes its throttle and is not a new subscription."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    assert index.add("c", parse_pattern("*"), 1000) is True
    assert dict(index.match("a", "b")) == {"c": 1000}
    assert index.add("c", parse_pattern("*/*"), 100) is False
    assert index.add("c", parse_pattern("*/*"), 100) is False
    assert dict(index.match("a", "b")) == {"c": 100}
    assert len(index) == 1
    assert dict(index.patterns_of("c")) == {parse_pattern("*"): 100}


def test_changes_invalidate_cached_matches() -> None:
    """After a cached match, adding or removing a subscription shows in the next match."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    assert dict(index.match("a", "b")) == {}
    index.add("x", parse_pattern("a/b"))
    assert set(index.match("a", "b")) == {"x"}
    index.add("y", parse_pattern("a/*"))
    assert set(index.match("a", "b")) == {"x", "y"}
    index.add("z", parse_pattern("*/b"))
    assert set(index.match("a", "b")) == {"x", "y", "z"}
    index.remove("x", parse_pattern("a/b"))
    assert set(index.match("a", "b")) == {"y", "z"}
    index.remove_subscriber("y")
    assert set(index.match("a", "b")) == {"z"}


def test_a_returned_match_is_a_stable_snapshot() -> None:
    """A mapping match() returned is not changed by later subscriptions (safe to iterate)."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("x", parse_pattern("*"))
    before = index.match("a", "b")
    index.add("y", parse_pattern("*"))
    index.remove("x", parse_pattern("*"))
    assert set(before) == {"x"}
    assert set(index.match("a", "b")) == {"y"}


def test_remove_is_exact_and_reports_what_it_did() -> None:
    """remove() of a pattern not held is False and changes nothing."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("x", parse_pattern("a/*"))
    assert index.remove("x", parse_pattern("a/b")) is False
    assert index.remove("nobody", parse_pattern("a/*")) is False
    assert index.remove_subscriber("nobody") == 0
    assert index.remove("x", parse_pattern("a/*")) is True
    assert index.remove("x", parse_pattern("a/*")) is False
    assert "x" not in index


def test_removing_everything_leaves_nothing_behind() -> None:
    """After all subscriptions are removed every internal table is empty (no leak)."""
    index: SubscriptionIndex[int] = SubscriptionIndex()
    patterns = [parse_pattern(t) for t in ("a/b", "a/*", "*/b", "a*/b*", "*", "c-*/b")]
    for conn in range(200):
        for pattern in patterns[conn % 3:]:
            index.add(conn, pattern, conn % 5)
        index.match(f"a{conn % 7}", "b")
    for conn in range(0, 200, 2):
        index.remove_subscriber(conn)
    for conn in range(1, 200, 2):
        for pattern in patterns:
            index.remove(conn, pattern)
    index.match("a", "b")  # a cached empty answer is not a leak, but it must not matter
    sizes = {k: v for k, v in index.sizes().items() if not k.startswith("cached")}
    assert len(index) == 0
    assert sizes == dict.fromkeys(sizes, 0)
    assert list(index.subscribers()) == []


def test_clear_empties_the_index() -> None:
    """clear() drops every subscription and cached answer."""
    index: SubscriptionIndex[int] = SubscriptionIndex()
    index.add(1, parse_pattern("*"))
    index.match("a", "b")
    index.clear()
    assert len(index) == 0
    assert set(index.sizes().values()) == {0}
    assert dict(index.match("a", "b")) == {}


def test_negative_throttle_is_refused() -> None:
    """A negative throttle is a programming error, not a subscription."""
    index: SubscriptionIndex[int] = SubscriptionIndex()
    with pytest.raises(ValueError, match="throttle_ms"):
        index.add(1, parse_pattern("*"), -1)


def test_topics_hit_by_the_same_patterns_share_one_answer() -> None:
    """Many topics matched by the same subscriptions hold one mapping, not a copy each."""
    index: SubscriptionIndex[int] = SubscriptionIndex()
    for conn in range(100):
        index.add(conn, parse_pattern("*"))
    index.add(999, parse_pattern("n7/*"))
    answers = [index.match(f"n{n}", "k") for n in range(50)]
    assert all(answer is answers[0] for n, answer in enumerate(answers) if n != 7)
    assert set(answers[7]) == set(range(100)) | {999}
    assert index.sizes()["cached_answers"] == 2


def test_match_cache_is_bounded() -> None:
    """The per-topic cache never holds more than its cap."""
    index: SubscriptionIndex[int] = SubscriptionIndex(cache_cap=8)
    index.add(1, parse_pattern("*"))
    for n in range(50):
        assert set(index.match(f"n{n}", "k")) == {1}
        assert index.sizes()["cached_topics"] <= 8


OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "drop", "match"]),
        st.integers(0, 4),
        PATTERN_TEXT,
        st.integers(0, 3),
        NAME,
        KIND,
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=OPS)
def test_index_agrees_with_a_brute_force_model(
    ops: list[tuple[str, int, str, int, str, str]],
) -> None:
    """Any sequence of changes and matches gives the same answers as scanning every subscription."""
    index: SubscriptionIndex[int] = SubscriptionIndex()
    model: dict[tuple[int, TopicPattern], int] = {}
    for op, subscriber, text, throttle, node, kind in ops:
        pattern = parse_pattern(text)
        if op == "add":
            index.add(subscriber, pattern, throttle)
            model[(subscriber, pattern)] = throttle
        elif op == "remove":
            assert index.remove(subscriber, pattern) == ((subscriber, pattern) in model)
            model.pop((subscriber, pattern), None)
        elif op == "drop":
            held = [key for key in model if key[0] == subscriber]
            assert index.remove_subscriber(subscriber) == len(held)
            for key in held:
                del model[key]
        expected: dict[int, int] = {}
        for (sub, pat), thr in model.items():
            if reference_match(pat.text, node, kind):
                expected[sub] = min(thr, expected.get(sub, thr))
        assert dict(index.match(node, kind)) == expected
        assert len(index) == len(model)
    for subscriber in range(5):
        index.remove_subscriber(subscriber)
    assert all(v == 0 for k, v in index.sizes().items() if not k.startswith("cached"))
