"""The client's requests on one connection: the reader task parses each frame and answers it
(subscribe with snapshots or a resume, unsubscribe, history, auth, ping), applying the rate
limit and the frame size limit; what it sends goes out through the Session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from websockets.exceptions import ConnectionClosed

from gateway import CursorError, ErrorCode, FrameTooLarge, ProtocolError
from gateway.cursor import EntryId, decode_cursor
from gateway.fanout import TopicKey
from gateway.protocol import (
    Auth,
    CloseCode,
    History,
    Request,
    ResetReason,
    Subscribe,
    Unsubscribe,
    check_subscription_count,
    error_message,
    history_message,
    parse_request,
    pong_message,
)
from gateway.ratelimit import Verdict
from gateway.replay import Fetched, ReplayStatus
from gateway.session import Session
from gateway.topics import PatternSet, TopicPattern
from hub.errors import BackendUnavailable, ValidationError
from hub.keys import KeyLayout
from hub.reader import history

log = logging.getLogger(__name__)

FETCH_CAP_FACTOR = 4  # a resume reads at most this many times the replay limit per shard
_MAX_PLAN_ROUNDS = 8
_FETCH_RETRY_S = 0.25


# -- the reader task -------------------------------------------------------------------------
async def read_loop(session: Session) -> None:
    """Answer the client's requests until the connection closes. Cancelling is safe."""
    ws = session.ws
    ctx = session.ctx
    stats = ctx.stats
    limits = ctx.protocol_limits
    try:
        async for frame in ws:
            verdict = session.limiter.check()
            if verdict is not Verdict.ALLOW:
                if verdict is Verdict.REJECT:
                    stats.rate_limited += 1
                    session.send_error(ProtocolError(
                        ErrorCode.RATE_LIMITED, "too many requests: slow down"))
                    continue
                stats.policy_closes += 1
                session.stop_sending(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
                await session.close_now(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
                return
            try:
                request = parse_request(frame, session.encoding, limits)
            except FrameTooLarge as exc:
                stats.frame_too_large_closes += 1
                session.stop_sending(CloseCode.FRAME_TOO_LARGE, "frame too large")
                await session.close_now(CloseCode.FRAME_TOO_LARGE, exc.message[:120])
                return
            except ProtocolError as exc:
                stats.count_request("invalid")
                session.send_error(exc)
                continue
            stats.count_request(type(request).__name__.lower())
            try:
                await handle(session, request)
            except ProtocolError as exc:
                session.send_error(exc)
            except asyncio.CancelledError:
                raise
            except ConnectionClosed:
                raise
            except Exception:
                log.exception("%s: request %r failed", session.conn_id, request)
                stats.count_error(ErrorCode.INTERNAL.value)
                session.send_control(error_message(
                    request.id, ErrorCode.INTERNAL, "internal error; see the gateway's log"))
    except ConnectionClosed:
        pass


async def handle(session: Session, request: Request) -> None:
    """Answer one parsed request."""
    if isinstance(request, Subscribe):
        await _subscribe(session, request)
    elif isinstance(request, Unsubscribe):
        _unsubscribe(session, request)
    elif isinstance(request, History):
        await _history(session, request)
    elif isinstance(request, Auth):
        # Tokens are accepted and not checked until authentication exists; only the
        # fact that one came is kept (never the token).
        session.token_source = "auth"
        session.send_control({"type": "ack", "id": request.id})
    else:
        session.send_control(pong_message(request.id, session.ctx.wall_clock()))


# -- subscribe ------------------------------------------------------------------------------
async def _subscribe(session: Session, request: Subscribe) -> None:
    fanout = session.ctx.fanout
    check_subscription_count(fanout.index.patterns_of(session), request,
                             session.ctx.protocol_limits)
    if request.resume is not None:
        await _resume(session, request)
        return
    if request.snapshot:
        await fanout.fill_cache(_exact_topics(request.patterns))
    session.activate(request, snapshots=request.snapshot)


async def _reset(session: Session, request: Subscribe, reason: ResetReason) -> None:
    await session.ctx.fanout.fill_cache(_exact_topics(request.patterns))
    session.activate(request, snapshots=True, reset=reason)


async def _resume(session: Session, request: Subscribe) -> None:
    """Replay what the client missed after its cursor (ReplayWindow.plan), then go live;
    or reset and snapshots when that cannot be done."""
    ctx = session.ctx
    fanout = ctx.fanout
    assert request.resume is not None
    try:
        positions = decode_cursor(request.resume, shards=ctx.layout.shards)
    except CursorError:
        await _reset(session, request, ResetReason.CURSOR_INVALID)
        return
    deadline = ctx.clock() + ctx.resume_wait
    if not await fanout.wait_started(deadline) or fanout.window is None:
        await _reset(session, request, ResetReason.CURSOR_UNKNOWN)
        return
    window = fanout.window
    matches = PatternSet(request.patterns).matches
    shards = _shards_of(request.patterns, ctx.layout)
    fetched: dict[int, Fetched] = {}
    source = "memory"
    for _ in range(_MAX_PLAN_ROUNDS):
        plan = window.plan(positions, matches, limit=ctx.replay_limit,
                           fetched=fetched or None)
        if plan.status is ReplayStatus.READY:
            ctx.stats.resumes[source] = ctx.stats.resumes.get(source, 0) + 1
            session.activate(request, snapshots=False, items=plan.items)
            return
        if plan.status is ReplayStatus.TOO_MANY:
            await _reset(session, request, ResetReason.REPLAY_LIMIT)
            return
        if plan.status is ReplayStatus.WAIT:
            if not await fanout.wait_caught_up(positions, deadline):
                await _reset(session, request, ResetReason.CURSOR_UNKNOWN)
                return
            continue
        source = "redis"
        # Shards that cannot hold a matching topic need no read: an empty range says so.
        wanted = {s: r for s, r in plan.fetch.items() if shards is None or s in shards}
        for shard, (_, upto) in plan.fetch.items():
            if shard not in wanted:
                fetched[shard] = Fetched(upto, ())
        if not wanted:
            continue
        result = await _fetch(session, wanted, deadline)
        if result is None:
            await _reset(session, request, ResetReason.CURSOR_UNKNOWN)
            return
        if isinstance(result, str):
            await _reset(session, request, ResetReason(result))
            return
        fetched.update(result)
    await _reset(session, request, ResetReason.CURSOR_UNKNOWN)


async def _fetch(
    session: Session, ranges: dict[int, tuple[EntryId, EntryId]], deadline: float
) -> dict[int, Fetched] | str | None:
    """``Fanout.fetch``, retried while Redis is away until ``deadline`` (then None)."""
    ctx = session.ctx
    fanout = ctx.fanout
    while True:
        if fanout.redis_up:
            try:
                return await fanout.fetch(ranges, ctx.replay_limit * FETCH_CAP_FACTOR)
            except BackendUnavailable as exc:
                log.info("%s: resume needs Redis: %s", session.conn_id, exc)
        # Redis is away: wait for the reader to get it back rather than for timeouts.
        if ctx.clock() + _FETCH_RETRY_S >= deadline:
            return None
        await asyncio.sleep(_FETCH_RETRY_S)


# -- unsubscribe, history -------------------------------------------------------------------
def _unsubscribe(session: Session, request: Unsubscribe) -> None:
    index = session.ctx.fanout.index
    for pattern in request.patterns:
        index.remove(session, pattern)
    session.forget_unsubscribed(index.patterns_of(session))
    session.send_control({"type": "ack", "id": request.id, "topics": list(request.topics)})


async def _history(session: Session, request: History) -> None:
    ctx = session.ctx
    if not ctx.fanout.redis_up:
        raise ProtocolError(ErrorCode.HISTORY_UNAVAILABLE,
                            "history is unavailable right now (Redis cannot be reached)",
                            request.id)
    ctx.stats.history_redis_commands += 1
    try:
        samples = await history(ctx.redis, ctx.layout, request.node, request.kind,
                                request.since, request.until, request.max_points)
    except BackendUnavailable as exc:
        log.info("%s: history unavailable: %s", session.conn_id, exc)
        raise ProtocolError(ErrorCode.HISTORY_UNAVAILABLE,
                            "history is unavailable right now (Redis cannot be reached)",
                            request.id) from exc
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc), request.id) from exc
    session.send_control(history_message(
        request.id, request.node, request.kind, ((s.ts, s.values) for s in samples)))


def _exact_topics(patterns: Sequence[TopicPattern]) -> list[TopicKey]:
    return [(p.node_exact, p.kind_exact) for p in patterns
            if p.node_exact is not None and p.kind_exact is not None]


def _shards_of(patterns: Sequence[TopicPattern], layout: KeyLayout) -> set[int] | None:
    """The shards that can hold a topic the patterns match; None when any shard can."""
    shards: set[int] = set()
    for pattern in patterns:
        if pattern.node_exact is None:
            return None
        shards.add(layout.shard_for(pattern.node_exact))
    return shards
