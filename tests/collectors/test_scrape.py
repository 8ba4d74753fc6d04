"""Tests of the Prometheus scrape source (collectors/scrape.py) against a local HTTP server."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from collectors.scrape import ScrapeError, ScrapeTarget, convert, parse_target, scrape_sources
from hub.errors import ConfigError
from hub.names import METRIC_RE

EXPOSITION = """\
# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method="get",code="200"} 1027
http_requests_total{method="post",code="500"} 3
# TYPE temperature gauge
temperature 21.5
# TYPE rpc_seconds summary
rpc_seconds{quantile="0.5"} NaN
rpc_seconds_sum 0
rpc_seconds_count 0
# TYPE size_bytes histogram
size_bytes_bucket{le="100"} 2
size_bytes_bucket{le="+Inf"} 5
size_bytes_sum 900
size_bytes_count 5
"""


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        body = EXPOSITION.encode()
        headers = {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        if self.path == "/gzip":
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        elif self.path == "/big":
            body = b"# filler\n" * 50_000
        elif self.path == "/garbage":
            body = b"this is {not prometheus\n"
        elif self.path == "/error":
            self.send_response(503)
            self.end_headers()
            return
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    """A local HTTP server serving the exposition above, on a free port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_exposition_converts_to_valid_names_with_labels_as_instance() -> None:
    """Every sample becomes a valid metric name; labels become the sorted instance."""
    values = convert(EXPOSITION)
    assert values["http_requests_total.code=200+method=get"] == 1027.0
    assert values["temperature"] == 21.5
    assert values["size_bytes_bucket.le=_Inf"] == 5.0
    assert "rpc_seconds.quantile=0.5" not in values  # NaN left out
    assert all(METRIC_RE.fullmatch(name) for name in values)


def test_targets_parse_with_or_without_a_kind() -> None:
    """[kind=]URL gives the kind (or one made from host and port) and the URL."""
    assert parse_target("app=http://h:9100/metrics") == ("app", "http://h:9100/metrics")
    assert parse_target("http://Node-1:9100/metrics") == ("scrape.node-1-9100",
                                                         "http://Node-1:9100/metrics")
    assert parse_target("https://h/m?x=1")[0] == "scrape.h-443"
    for bad in ("ftp://h/x", "not a url", "app=/metrics"):
        with pytest.raises(ConfigError, match="--scrape"):
            parse_target(bad)
    (source,) = scrape_sources(["http://h:1/m"], interval=2.0, timeout=1.0, max_bytes=1024)
    assert source.blocking
    assert source.interval == 2.0
    assert source.kind == "scrape.h-1"


def test_a_scrape_fetches_and_converts(server: str) -> None:
    """A real fetch returns the converted values, plain or gzip."""
    values = ScrapeTarget(f"{server}/metrics", timeout=5).collect()
    assert values["temperature"] == 21.5
    assert ScrapeTarget(f"{server}/gzip", timeout=5).collect() == values


@pytest.mark.parametrize(("path", "message"), [
    ("/error", "HTTP 503"),
    ("/big", "larger than"),
    ("/garbage", "not Prometheus text format"),
])
def test_failed_scrapes_raise_one_clear_error(server: str, path: str, message: str) -> None:
    """HTTP errors, oversized and unparsable bodies raise ScrapeError naming the URL."""
    with pytest.raises(ScrapeError, match=message) as info:
        ScrapeTarget(f"{server}{path}", timeout=5, max_bytes=100_000).collect()
    assert server in str(info.value)


def test_an_unreachable_target_is_a_scrape_error() -> None:
    """A refused connection is a ScrapeError, not a crash."""
    from tests.redis_server import free_port

    with pytest.raises(ScrapeError, match="refused"):
        ScrapeTarget(f"http://127.0.0.1:{free_port()}/metrics", timeout=2).collect()
