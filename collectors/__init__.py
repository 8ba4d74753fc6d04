"""The metrics-hub collector: one daemon per node that samples the host, runs custom sources,
ingests StatsD and Prometheus metrics, and publishes them to Redis (docs/collector.md).

The public API for custom sources is re-exported here: ``source`` (decorator), ``Reading``.
"""

from __future__ import annotations

from collectors.sources import ENTRY_POINT_GROUP, Reading, SourceResult, source

__all__ = ["ENTRY_POINT_GROUP", "Reading", "SourceResult", "source"]
