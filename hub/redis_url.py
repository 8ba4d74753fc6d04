"""The Redis connection factory: one URL selects a single server, TLS, a Unix socket, Sentinel
or Cluster, and carries the ACL user and password; passwords never reach a log or an error.

URL forms (docs/redis-layout.md lists every option)::

    redis://[[user]:password@]host[:port][/db][?option=value&...]
    rediss://...                                    (TLS)
    unix://[[user]:password@]/path/to/redis.sock[?db=N&...]
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db][?...]
    redis+cluster://[[user]:password@]host[:port][,host[:port]...][?...]   (or ?cluster=true)

``rediss+sentinel://`` and ``rediss+cluster://`` are the TLS variants.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote

import redis.exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff

from hub.errors import BackendUnavailable, ConfigError, HubError, LayoutMismatch

RedisClient: TypeAlias = Redis | RedisCluster

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
# Defaults chosen for a hub: fail within seconds rather than the minute redis-py's own
# defaults (10 retries) can take, keep idle connections checked, and notice a dead peer.
DEFAULTS: dict[str, Any] = {
    "socket_timeout": 10.0,          # must exceed the reader's XREAD BLOCK time
    "socket_connect_timeout": 5.0,
    "socket_keepalive": True,
    "health_check_interval": 15,     # PING a pooled connection idle longer than this
    "retries": 2,                    # per command, on connection errors and timeouts
    "retry_backoff_base": 0.05,
    "retry_backoff_cap": 0.5,
}

_SCHEMES = {
    "redis": ("single", False), "rediss": ("single", True), "unix": ("unix", False),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
}


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_cert_reqs(value: str) -> str:
    if value.lower() not in ("none", "optional", "required"):
        raise ValueError("expected none, optional or required")
    return value.lower()


def _parse_protocol(value: str) -> int:
    if value not in ("2", "3"):
        raise ValueError("expected 2 or 3")
    return int(value)


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("expected a non-negative integer")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("expected a positive number of seconds")
    return number


# Query options: name -> parser. Anything else in a URL is a ConfigError (typos surface).
_OPTIONS: dict[str, Callable[[str], Any]] = {
    "db": _non_negative_int,
    "socket_timeout": _positive_float,
    "socket_connect_timeout": _positive_float,
    "socket_keepalive": _parse_bool,
    "health_check_interval": _non_negative_int,
    "retries": _non_negative_int,
    "max_connections": _non_negative_int,
    "client_name": str,
    "protocol": _parse_protocol,
    "cluster": _parse_bool,
    "ssl_cert_reqs": _parse_cert_reqs,
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_check_hostname": _parse_bool,
    "sentinel_username": str,
    "sentinel_password": str,
}
_SSL_OPTIONS = frozenset(k for k in _OPTIONS if k.startswith("ssl_"))


@dataclass
class RedisURL:
    """A parsed Redis URL; ``repr`` and ``str`` never show the password."""

    mode: str                              # single, unix, sentinel or cluster
    tls: bool
    hosts: list[tuple[str, int]]
    path: str | None = None                # unix socket path
    service_name: str | None = None        # sentinel
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    redacted: str = ""

    def __str__(self) -> str:
        return self.redacted


# -- redaction ------------------------------------------------------------------------------
def _split_userinfo(rest: str) -> tuple[str | None, str, bool]:
    """Split ``rest`` (the URL after ``scheme://``) into user info, the remainder, and
    whether the split is certain.

    The same split serves parsing and redaction, so whatever could be a password is masked.
    A password must percent-encode ``/ ? # @``. The last ``@`` of the URL ends the user
    info; when it is not in the authority part (before the first ``/ ? #``), or another
    ``@`` precedes it there, the URL is ambiguous (a raw password, or ``@`` in the query):
    the split is uncertain, and masking up to the last ``@`` hides too much, never too
    little.
    """
    end = len(rest)
    for sep in "/?#":
        pos = rest.find(sep)
        if pos >= 0:
            end = min(end, pos)
    last = rest.rfind("@")
    if last < 0:
        return None, rest, True
    return rest[:last], rest[last + 1:], rest.rfind("@", 0, end) == last


_SECRET_PARAM_RE = re.compile(r"([?&][^=&#]*password[^=&#]*=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with its password (and any ``*password*`` query value) replaced by ``***``.

    Never raises: it is meant for log lines and error messages, whatever the input.
    """
    if not isinstance(url, str):
        return "<not a URL>"
    scheme, sep, rest = url.partition("://")
    if not sep:
        # Not a URL at all; it may still be a secret pasted in the wrong place.
        return "<unparseable Redis URL>" if ("@" in url or ":" in url) else url
    userinfo, remainder, _ = _split_userinfo(rest)
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:***" if colon else "***"
        rest = f"{userinfo}@{remainder}"
    return f"{scheme}://" + _SECRET_PARAM_RE.sub(r"\1***", rest)


# -- parsing --------------------------------------------------------------------------------
def _bad(url: str, what: str) -> ConfigError:
    return ConfigError(f"invalid Redis URL {redact(url)}: {what}")


def _parse_hosts(url: str, netloc: str, default_port: int) -> list[tuple[str, int]]:
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        if item.startswith("["):  # [IPv6]:port
            host, bracket, port_text = item[1:].partition("]")
            if not bracket or (port_text and not port_text.startswith(":")):
                raise _bad(url, f"cannot read host {item!r}: write [IPv6 address]:port")
            port_text = port_text[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise _bad(url, "a host name is missing (expected host[:port])")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise _bad(url, f"invalid port {port_text!r} for host {host!r}: 1-65535")
            port = int(port_text)
        else:
            port = default_port
        hosts.append((unquote(host), port))
    return hosts


def parse_url(url: str, **options: Any) -> RedisURL:
    """Parse and check ``url`` (plus keyword ``options``, which win over the query).

    Raises ConfigError with a one-line message saying what to fix, never with the password.
    """
    if not isinstance(url, str) or not url:
        raise ConfigError("the Redis URL is empty: set it, e.g. redis://localhost:6379/0")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise _bad(url, f"unknown scheme {scheme if sep else '(none)'!r}: use one of {known}")
    mode, tls = _SCHEMES[scheme]
    userinfo, rest, certain = _split_userinfo(rest)
    if not certain:
        raise _bad(url, "percent-encode / ? # @ in the password (/ is %2F, ? %3F, # %23, "
                        "@ %40), and @ anywhere else in the URL")
    username = password = None
    if userinfo is not None:
        user, colon, secret = userinfo.partition(":")
        if not colon:
            raise _bad(url, "put the password after a colon: "
                            "scheme://:password@host or scheme://user:password@host")
        username = unquote(user) or None
        password = unquote(secret) or None
    rest, _, _fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")

    parsed: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        parser = _OPTIONS.get(name)
        if parser is None:
            raise _bad(url, f"unknown option {name!r}; known options: {', '.join(_OPTIONS)}")
        try:
            parsed[name] = parser(value)
        except ValueError as exc:
            shown = "***" if "password" in name else repr(value)
            raise _bad(url, f"option {name}={shown}: {exc}") from None
    for name, value in options.items():
        parsed[name] = value

    result = RedisURL(mode=mode, tls=tls, hosts=[], username=username, password=password,
                      redacted=redact(url))
    if parsed.pop("cluster", False):
        if mode != "single":
            raise _bad(url, "cluster=true only goes with redis:// or rediss://")
        result.mode = mode = "cluster"

    if mode == "unix":
        if netloc:
            raise _bad(url, "a unix:// URL has no host: write unix:///path/to/redis.sock")
        if not path:
            raise _bad(url, "the socket path is missing: write unix:///path/to/redis.sock")
        result.path = "/" + unquote(path)
    elif mode == "sentinel":
        result.hosts = _parse_hosts(url, netloc, DEFAULT_SENTINEL_PORT)
        parts = [p for p in path.split("/") if p] if slash else []
        if not parts or len(parts) > 2:
            raise _bad(url, "name the master: redis+sentinel://host:26379/service_name[/db]")
        result.service_name = unquote(parts[0])
        if len(parts) == 2:
            if not parts[1].isdigit():
                raise _bad(url, f"invalid database number {parts[1]!r}: a non-negative integer")
            parsed.setdefault("db", int(parts[1]))
    else:
        result.hosts = _parse_hosts(url, netloc, DEFAULT_PORT)
        if mode == "single" and len(result.hosts) != 1:
            raise _bad(url, "several hosts need redis+sentinel:// or redis+cluster://")
        if path:
            if not path.isdigit():
                raise _bad(url, f"invalid database number {path!r}: a non-negative integer")
            parsed.setdefault("db", int(path))
        if mode == "cluster" and parsed.get("db", 0) != 0:
            raise _bad(url, "Redis Cluster has only database 0")

    if not tls and mode != "unix":
        extra = sorted(_SSL_OPTIONS & parsed.keys())
        if extra:
            raise _bad(url, f"{', '.join(extra)} need TLS: use rediss://")
    if mode != "sentinel":
        extra = sorted({"sentinel_username", "sentinel_password"} & parsed.keys())
        if extra:
            raise _bad(url, f"{', '.join(extra)} only apply to redis+sentinel://")
    if parsed.get("decode_responses"):
        raise _bad(url, "decode_responses is not supported: the hub reads bytes")
    result.options = parsed
    return result


# -- connecting -----------------------------------------------------------------------------
def _client_kwargs(parsed: RedisURL) -> dict[str, Any]:
    options = {**DEFAULTS, **parsed.options}
    retries = options.pop("retries")
    base = options.pop("retry_backoff_base")
    cap = options.pop("retry_backoff_cap")
    options.pop("sentinel_username", None)
    options.pop("sentinel_password", None)
    options["retry"] = Retry(ExponentialWithJitterBackoff(cap=cap, base=base), retries)
    options["decode_responses"] = False
    options["username"] = parsed.username
    options["password"] = parsed.password
    if parsed.tls:
        options["ssl"] = True
    if parsed.mode == "unix":
        for name in ("socket_keepalive", "socket_connect_timeout"):
            options.pop(name, None)
    return options


def connect(url: str, **options: Any) -> RedisClient:
    """A client for ``url``: ``redis.asyncio.Redis`` or ``RedisCluster``, never decoding.

    ``options`` are redis-py keyword arguments (or our ``retries``, ``retry_backoff_base``,
    ``retry_backoff_cap``, ``sentinel_username``, ``sentinel_password``) and win over the URL's
    query. Nothing connects yet: the first command does (see ``check_connection``).
    Raises ConfigError for a URL or option that cannot work.
    """
    parsed = parse_url(url, **options)
    kwargs = _client_kwargs(parsed)
    try:
        if parsed.mode == "single":
            (host, port), = parsed.hosts
            return Redis(host=host, port=port, **kwargs)
        if parsed.mode == "unix":
            return Redis(unix_socket_path=parsed.path, **kwargs)
        if parsed.mode == "cluster":
            kwargs.pop("db", None)
            nodes = [ClusterNode(host, port) for host, port in parsed.hosts]
            return RedisCluster(startup_nodes=nodes, **kwargs)
        sentinel_kwargs = {k: v for k, v in kwargs.items()
                           if k.startswith(("socket_", "ssl")) or k == "retry"}
        sentinel_kwargs["username"] = parsed.options.get("sentinel_username")
        sentinel_kwargs["password"] = parsed.options.get("sentinel_password")
        # redis-py's Sentinel is not annotated
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            parsed.hosts, sentinel_kwargs=sentinel_kwargs, **kwargs)
        client: Redis = sentinel.master_for(parsed.service_name or "", redis_class=Redis)
        return client
    except (TypeError, ValueError, rexc.RedisError, rexc.RedisClusterException) as exc:
        # redis-py rejects an option it does not know with TypeError naming it.
        message = scrub(str(exc), [parsed.password, parsed.options.get("sentinel_password")])
        raise ConfigError(f"cannot build a Redis client for {parsed}: {message}") from None


# -- errors ---------------------------------------------------------------------------------
def client_secrets(client: object) -> list[str]:
    """The passwords a client holds, so messages can be scrubbed of them."""
    secrets: list[str] = []
    pools: list[Any] = []
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pools.append(pool)
    nodes_manager = getattr(client, "nodes_manager", None)
    if nodes_manager is not None:
        pools.append(nodes_manager)
    for holder in pools:
        kwargs = getattr(holder, "connection_kwargs", None)
        if isinstance(kwargs, Mapping):
            password = kwargs.get("password")
            if isinstance(password, str) and password:
                secrets.append(password)
    return secrets


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every non-empty secret in it replaced by ``***``, and URLs redacted."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"\b[a-z+]+://\S+", lambda m: redact(m.group(0)), text)


def translate_error(exc: BaseException, action: str, client: object = None) -> HubError:
    """The HubError for a redis-py (or socket) error met while doing ``action``.

    Connection-level errors, failover states (READONLY, MASTERDOWN, CLUSTERDOWN, TRYAGAIN)
    and server refusals such as OOM give BackendUnavailable; NOPERM (an ACL that forbids a
    command or key) gives ConfigError; WRONGTYPE gives LayoutMismatch (something else wrote
    our key). The message names the action and is scrubbed of the client's password.
    """
    detail = scrub(f"{type(exc).__name__}: {exc}", client_secrets(client))
    if isinstance(exc, rexc.NoPermissionError):
        return ConfigError(f"{action}: Redis refused by ACL ({detail}); grant the hub's user "
                           "the commands and keys listed in docs/redis-layout.md")
    if isinstance(exc, rexc.ResponseError) and str(exc).startswith("WRONGTYPE"):
        return LayoutMismatch(f"{action}: a key of another type is in the way ({detail}); "
                              "another program uses this prefix")
    if isinstance(exc, rexc.AuthenticationError):
        return BackendUnavailable(f"{action}: authentication failed ({detail}); check the user "
                                  "and password in the Redis URL")
    return BackendUnavailable(f"{action}: {detail}")


# What callers catch at the edge and pass to translate_error (DataError, a client-side
# argument error, is a bug and is left to propagate).
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    rexc.ConnectionError, rexc.TimeoutError, rexc.ResponseError, rexc.ClusterError,
    rexc.RedisClusterException, OSError, TimeoutError,
)


def describe(client: object) -> str:
    """Where ``client`` connects, for log lines (no password)."""
    if isinstance(client, RedisCluster):
        nodes = getattr(client.nodes_manager, "startup_nodes", {})
        return "cluster " + ",".join(sorted(nodes)) if nodes else "cluster"
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {}) if pool is not None else {}
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    service = getattr(pool, "service_name", None)
    if service:
        return f"sentinel service {service}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def honour_lost_cancel() -> None:
    """Raise CancelledError if the current task was cancelled but the cancel was lost.

    On Python 3.11 redis-py writes each command under ``asyncio.wait_for`` (when a
    socket_timeout is set), and 3.11's ``wait_for`` swallows a cancel that lands while the
    write completes; the task's ``cancelling()`` count still shows it. Loops that call Redis
    check this after each command, so a lost cancel ends them one command later.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def check_connection(client: RedisClient) -> None:
    """PING the server; raise BackendUnavailable (redacted, with the cause) if it fails.

    Cancelling is safe.
    """
    try:
        await client.ping()
    except REDIS_ERRORS as exc:
        raise translate_error(exc, f"Redis at {describe(client)} is unavailable",
                              client) from exc
