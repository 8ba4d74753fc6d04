"""The Prometheus scrape source: fetch a target's ``/metrics`` text and publish it as a kind.

The text format is parsed by prometheus_client's parser. Each sample becomes one value named
after the Prometheus sample, with its labels as the instance suffix (``http_requests_total.
code=200+method=get``, the same encoding as StatsD tags). The fetch is blocking urllib, run
on the source's own thread under its timeout; the body is capped so a runaway target cannot
grow memory.
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from urllib.parse import urlsplit

from collectors.sources import Source, kind_from_name
from collectors.statsd import tag_instance
from hub.errors import ConfigError
from hub.names import KIND_RE

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
_ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"
_CHARSET = re.compile(r"charset=([\w-]+)", re.IGNORECASE)


class ScrapeError(Exception):
    """A scrape that returned no usable metrics (the runner logs it once per burst)."""


def parse_target(text: str) -> tuple[str, str]:
    """``[kind=]URL`` -> (kind, url); the kind defaults to ``scrape.<host>-<port>``."""
    kind: str | None = None
    head, eq, rest = text.partition("=")
    if eq and "://" not in head and KIND_RE.fullmatch(head):
        kind, url = head, rest
    else:
        url = text
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--scrape {text!r}: expected [kind=]http://host:port/metrics")
    if kind is None:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        kind = kind_from_name(f"scrape.{parts.hostname}-{port}")
    return kind, url


def convert(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {name[.labels]: value}; non-finite values are left out."""
    # Imported here: a collector that scrapes nothing should not carry the parser (RSS).
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = float(sample.value)
            if not math.isfinite(value):
                continue  # NaN quantiles of an empty summary, +Inf: nothing to plot
            name = sample.name
            if sample.labels:
                name = f"{name}.{tag_instance(sorted(sample.labels.items()))}"
            values[name] = value
    return values


class ScrapeTarget:
    """One target; ``collect`` fetches and converts (blocking: runs on its own thread)."""

    def __init__(self, url: str, *, timeout: float, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.url = url
        self.timeout = timeout
        self.max_bytes = max_bytes

    def collect(self) -> dict[str, float]:
        request = urllib.request.Request(self.url, headers={
            "Accept": _ACCEPT, "Accept-Encoding": "gzip", "User-Agent": "metrics-hub-collector",
        })
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read(self.max_bytes + 1)
                encoding = response.headers.get("Content-Encoding", "")
                content_type = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response and its socket
            raise ScrapeError(f"{self.url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ScrapeError(f"{self.url}: {reason}") from None
        if len(body) > self.max_bytes:
            raise ScrapeError(f"{self.url}: response larger than {self.max_bytes} bytes")
        if encoding.lower() == "gzip":
            body = self._gunzip(body)
        match = _CHARSET.search(content_type)
        text = body.decode(match.group(1) if match else "utf-8", errors="replace")
        try:
            return convert(text)
        except ValueError as exc:
            raise ScrapeError(f"{self.url}: not Prometheus text format ({exc})") from None

    def _gunzip(self, body: bytes) -> bytes:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(body, self.max_bytes + 1)
        except zlib.error as exc:
            raise ScrapeError(f"{self.url}: bad gzip body ({exc})") from None
        if len(data) > self.max_bytes or inflater.unconsumed_tail:
            raise ScrapeError(f"{self.url}: response larger than {self.max_bytes} bytes")
        return data


def scrape_sources(
    targets: Iterable[str], *, interval: float, timeout: float, max_bytes: int
) -> list[Source]:
    """One Source per ``--scrape`` target."""
    sources = []
    for text in targets:
        kind, url = parse_target(text)
        target = ScrapeTarget(url, timeout=timeout, max_bytes=max_bytes)
        sources.append(Source(
            name=kind, kind=kind, interval=interval, timeout=timeout + 1.0,
            collect=target.collect, blocking=True, origin=f"--scrape {text}",
        ))
    return sources
