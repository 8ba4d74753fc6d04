"""The connection factory: URL forms, options, redaction, and errors that never leak a password."""

from __future__ import annotations

import asyncio
import string
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import redis.exceptions as rexc
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelConnectionPool

from hub.errors import BackendUnavailable, ConfigError, LayoutMismatch
from hub.redis_url import (
    check_connection,
    connect,
    honour_lost_cancel,
    parse_url,
    redact,
    scrub,
    translate_error,
)
from tests.redis_server import RedisServer, free_port, require_redis_server

SECRET = "s3cr3t-P4ss"


def test_single_server_url() -> None:
    """redis:// gives host, port, db, ACL user and password (percent-decoded)."""
    parsed = parse_url("redis://alice:p%40ss@cache.internal:6380/3")
    assert (parsed.mode, parsed.tls, parsed.hosts) == ("single", False, [("cache.internal", 6380)])
    assert (parsed.username, parsed.password, parsed.options["db"]) == ("alice", "p@ss", 3)
    assert "p@ss" not in repr(parsed)
    assert "p@ss" not in str(parsed)


def test_defaults_and_password_only() -> None:
    """Port 6379 and db 0 by default; ':password@' sets a password with no user."""
    parsed = parse_url("redis://:pw@localhost")
    assert parsed.hosts == [("localhost", 6379)]
    assert parsed.username is None
    assert parsed.password == "pw"
    assert "db" not in parsed.options


def test_ipv6_host() -> None:
    """A bracketed IPv6 address with a port is understood."""
    assert parse_url("redis://[::1]:7000").hosts == [("::1", 7000)]


def test_connect_single_server_options() -> None:
    """connect() builds a non-decoding Redis client with the hub's defaults and URL options."""
    client = connect("redis://bob:pw@127.0.0.1:6390/2?socket_timeout=3&client_name=gw&retries=0")
    assert isinstance(client, Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["decode_responses"] is False
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 6390, 2)
    assert (kwargs["username"], kwargs["password"]) == ("bob", "pw")
    assert kwargs["socket_timeout"] == 3.0
    assert kwargs["client_name"] == "gw"
    assert kwargs["socket_keepalive"] is True
    assert kwargs["health_check_interval"] == 15
    assert kwargs["retry"].get_retries() == 0


def test_keyword_options_win_over_the_query() -> None:
    """Keyword options override the URL's query parameters."""
    client = connect("redis://h/0?socket_timeout=3", socket_timeout=7.5)
    assert isinstance(client, Redis)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 7.5


def test_tls_url() -> None:
    """rediss:// selects TLS and takes ssl_* options from the query."""
    client = connect("rediss://u:pw@redis.example:6380/0?ssl_cert_reqs=none"
                     "&ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false")
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert pool.connection_class is SSLConnection
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert pool.connection_kwargs["ssl_check_hostname"] is False


def test_unix_socket_url() -> None:
    """unix:///path?db=N connects through a Unix socket."""
    client = connect("unix:///run/redis/redis.sock?db=4")
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert pool.connection_class is UnixDomainSocketConnection
    assert pool.connection_kwargs["path"] == "/run/redis/redis.sock"
    assert pool.connection_kwargs["db"] == 4


def test_sentinel_url() -> None:
    """redis+sentinel:// lists sentinels, names the master service and the db."""
    parsed = parse_url("redis+sentinel://u:pw@s1:26379,s2,[::1]:26380/mymaster/2")
    assert parsed.mode == "sentinel"
    assert parsed.hosts == [("s1", 26379), ("s2", 26379), ("::1", 26380)]
    assert parsed.service_name == "mymaster"
    assert parsed.options["db"] == 2
    client = connect("redis+sentinel://u:pw@s1:26379,s2/mymaster/2?sentinel_password=sp")
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["db"] == 2
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["password"] for s in sentinels] == ["sp", "sp"]


@pytest.mark.parametrize("url", [
    "redis+cluster://u:pw@n1:7000,n2:7001",
    "redis://u:pw@n1:7000?cluster=true",
])
def test_cluster_url(url: str) -> None:
    """redis+cluster:// or ?cluster=true gives a RedisCluster over the listed nodes."""
    client = connect(url)
    assert isinstance(client, RedisCluster)
    assert set(client.nodes_manager.startup_nodes) >= {"n1:7000"}


@pytest.mark.parametrize(("url", "fix"), [
    ("", "empty"),
    ("localhost:6379", "unknown scheme"),
    ("http://:SECRET@h", "unknown scheme"),
    ("redis://:SECRET@h:notaport", "invalid port"),
    ("redis://:SECRET@h:70000", "invalid port"),
    ("redis://SECRET@h", "password after a colon"),
    ("redis://:SECRET@h/x", "database number"),
    ("redis://:SECRET@h?timeout=3", "unknown option 'timeout'"),
    ("redis://:SECRET@h?socket_timeout=-1", "positive number"),
    ("redis://:SECRET@h?ssl_cert_reqs=none", "need TLS"),
    ("redis://:SECRET@h1,h2", "several hosts"),
    ("redis+sentinel://:SECRET@h1,h2", "name the master"),
    ("redis+cluster://:SECRET@h1/2", "only database 0"),
    ("unix://:SECRET@host/x.sock", "no host"),
    ("unix://:SECRET@", "socket path"),
    ("redis://:SECRET@h?sentinel_password=x", "only apply to redis+sentinel"),
    ("redis://:SE/CR?ET@h:6379", "percent-encode"),
    ("redis://h:6379/0?client_name=a@b", "percent-encode"),
])
def test_bad_urls_say_what_to_fix_without_the_password(url: str, fix: str) -> None:
    """Each bad URL is one ConfigError line naming the fix and never the password."""
    url = url.replace("SECRET", SECRET)
    with pytest.raises(ConfigError) as info:
        connect(url)
    message = str(info.value)
    assert fix in message
    assert "\n" not in message
    for fragment in (SECRET, "SE/CR?ET", "CR?ET"):
        assert fragment not in message


def test_unknown_redis_py_option_is_a_config_error() -> None:
    """A keyword redis-py does not know is a ConfigError, not a TypeError."""
    with pytest.raises(ConfigError, match="cannot build"):
        connect(f"redis://:{SECRET}@h", no_such_option=1)


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://alice:pw@h:6379/0", "redis://alice:***@h:6379/0"),
    ("redis://:pw@h", "redis://:***@h"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("rediss://u:p%2Fw@h/0?ssl_cert_reqs=none", "rediss://u:***@h/0?ssl_cert_reqs=none"),
    ("redis+sentinel://u:pw@a,b/m?sentinel_password=zz", "redis+sentinel://u:***@a,b/m"
     "?sentinel_password=***"),
    ("redis://pw@h", "redis://***@h"),
    ("redis://u:p/w?x@h:1/0", "redis://u:***@h:1/0"),
    ("unix://:pw@/tmp/r.sock", "unix://:***@/tmp/r.sock"),
    ("not a url", "not a url"),
    ("secret:stuff", "<unparseable Redis URL>"),
])
def test_redact(url: str, expected: str) -> None:
    """redact() masks passwords (also raw ones holding / ? #) and keeps the rest readable."""
    assert redact(url) == expected


@settings(max_examples=300, deadline=None)
@given(
    password=st.text(alphabet=string.ascii_letters + string.digits + "/?#@:!$&'()*+,;=%-._~",
                     min_size=3, max_size=30),
    host=st.sampled_from(["h", "127.0.0.1", "h:notaport", "h:6379/x", "a,b", ""]),
    query=st.sampled_from(["", "?db=1", "?bogus=1", "?socket_timeout=x"]),
    scheme=st.sampled_from(["redis", "rediss", "redis+cluster", "redis+sentinel", "unix"]),
)
def test_password_never_in_redaction_or_errors(password: str, host: str, query: str,
                                               scheme: str) -> None:
    """Whatever the URL's shape, neither redact() nor a ConfigError shows the password."""
    password = f"Xq9{password}"  # no fixed message text can contain it by chance
    url = f"{scheme}://user:{password}@{host}{query}"
    assert password not in redact(url)
    message = ""
    parsed = None
    try:
        parsed = parse_url(url)
    except ConfigError as exc:
        message = str(exc)
    assert password not in message
    assert password not in repr(parsed)
    assert password not in str(parsed)


@settings(max_examples=100, deadline=None)
@given(password=st.text(min_size=1, max_size=30), user=st.text(string.ascii_letters, max_size=8))
def test_percent_encoded_credentials_round_trip(password: str, user: str) -> None:
    """Any password, percent-encoded, is read back exactly, and redaction hides it."""
    url = f"redis://{quote(user, safe='')}:{quote(password, safe='')}@h:1/0"
    parsed = parse_url(url)
    assert (parsed.username, parsed.password) == (user or None, password)
    assert redact(url) == f"redis://{quote(user, safe='')}:***@h:1/0"


def test_scrub_removes_secrets_and_redacts_urls() -> None:
    """scrub() hides known secrets and any URL's password inside free text."""
    text = f"failed with {SECRET} while using redis://u:{SECRET}x@h:1/0 now"
    cleaned = scrub(text, [SECRET])
    assert SECRET not in cleaned
    assert "redis://u:***@h:1/0" in cleaned


def test_translate_error_classes() -> None:
    """Redis errors map to BackendUnavailable, ConfigError (NOPERM) or LayoutMismatch."""
    assert isinstance(translate_error(rexc.ConnectionError("x"), "a"), BackendUnavailable)
    assert isinstance(translate_error(rexc.TimeoutError("x"), "a"), BackendUnavailable)
    assert isinstance(translate_error(rexc.ReadOnlyError("x"), "a"), BackendUnavailable)
    assert isinstance(translate_error(OSError("x"), "a"), BackendUnavailable)
    assert isinstance(translate_error(rexc.NoPermissionError("no perm"), "a"), ConfigError)
    assert isinstance(translate_error(rexc.ResponseError("WRONGTYPE Operation"), "a"),
                      LayoutMismatch)
    error = translate_error(rexc.AuthenticationError("invalid password"), "connecting")
    assert "check the user and password" in str(error)


async def test_closed_port_gives_backend_unavailable_without_password() -> None:
    """Against a closed port, check_connection fails fast with a redacted BackendUnavailable."""
    client = connect(f"redis://admin:{SECRET}@127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable) as info:
            await check_connection(client)
    finally:
        await client.aclose()
    assert time.monotonic() - started < 5
    assert SECRET not in str(info.value)
    assert "127.0.0.1" in str(info.value)
    assert info.value.__cause__ is not None


async def test_acl_user_from_url(own_redis_server: RedisServer) -> None:
    """An ACL user and password in the URL authenticate; a wrong password is a clean error."""
    own_redis_server.cli("ACL", "SETUSER", "hub", "on", f">{SECRET}", "~*", "&*", "+@all")
    port = own_redis_server.port
    client = connect(f"redis://hub:{SECRET}@127.0.0.1:{port}/0")
    try:
        await check_connection(client)
        assert await client.acl_whoami() == "hub"
    finally:
        await client.aclose()
    wrong = "Wr0ng-" + SECRET
    client = connect(f"redis://hub:{wrong}@127.0.0.1:{port}/0")
    try:
        with pytest.raises(BackendUnavailable, match="authentication failed") as info:
            await check_connection(client)
    finally:
        await client.aclose()
    assert wrong not in str(info.value)
    assert SECRET not in str(info.value)


async def test_unix_socket_connects() -> None:
    """unix:// reaches a redis-server listening on a Unix socket."""
    require_redis_server()
    with tempfile.TemporaryDirectory(prefix="mh-sock-") as tmp:
        path = Path(tmp) / "redis.sock"
        with RedisServer(None, "--unixsocket", str(path), "--unixsocketperm", "700"):
            client = connect(f"unix://{path}?db=1")
            try:
                await check_connection(client)
                await client.set("k", b"v")
                assert await client.get("k") == b"v"
            finally:
                await client.aclose()


async def test_honour_lost_cancel_raises_after_a_swallowed_cancel() -> None:
    """A cancel that something swallowed (as 3.11's wait_for can) is raised again."""
    async def victim() -> str:
        honour_lost_cancel()  # nothing pending: no effect
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass  # what asyncio.wait_for does on Python 3.11 in a race
        honour_lost_cancel()
        return "carried on"

    task = asyncio.get_running_loop().create_task(victim())
    with pytest.raises(asyncio.CancelledError):
        await task
