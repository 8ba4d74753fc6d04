"""docs/metrics.md and the code's metric table (collectors/metric_table.py) stay in step."""

from __future__ import annotations

import re
from pathlib import Path

from collectors.metric_table import METRICS, MetricType, documented
from hub.names import KIND_RE, METRIC_RE

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def _doc_rows() -> list[tuple[str, ...]]:
    text = DOC.read_text()
    match = re.search(r"<!-- metric-table:start -->\n(.*?)\n<!-- metric-table:end -->", text,
                      re.DOTALL)
    assert match, "docs/metrics.md lost its metric-table markers"
    lines = match.group(1).strip().splitlines()
    assert lines[0].replace(" ", "") == "|kind|name|instance|type|unit|description|"
    rows = []
    for line in lines[2:]:
        cells = tuple(cell.strip() for cell in line.strip().strip("|").split("|"))
        assert len(cells) == 6, line
        rows.append(cells)
    return rows


def test_the_doc_table_matches_the_code_table_row_for_row() -> None:
    """Every metric in the code is in the doc, with the same kind, type, unit and meaning."""
    doc_rows = _doc_rows()
    code_rows = [(m.kind, f"`{m.name}`", m.instance or "", m.type.value, m.unit, m.description)
                 for m in METRICS]
    missing = set(code_rows) - set(doc_rows)
    extra = set(doc_rows) - set(code_rows)
    assert not missing, f"in the code, not in docs/metrics.md: {sorted(missing)}"
    assert not extra, f"in docs/metrics.md, not in the code: {sorted(extra)}"
    assert doc_rows == code_rows


def test_the_table_itself_follows_the_naming_rules() -> None:
    """Names are valid, unique per kind and instance, and typed as their suffix says."""
    seen = set()
    for metric in METRICS:
        assert KIND_RE.fullmatch(metric.kind)
        assert METRIC_RE.fullmatch(metric.name)
        assert "." not in metric.name
        key = (metric.kind, metric.name, metric.instance is None)
        assert key not in seen, f"{metric.name} listed twice"
        seen.add(key)
        if metric.type is MetricType.COUNTER:
            assert metric.name.endswith("_total"), metric.name
        if metric.type is MetricType.RATE:
            assert metric.name.endswith("_per_second"), metric.name
        if metric.name.endswith("_ratio"):
            assert metric.unit == "ratio"
        if metric.name.endswith("_bytes"):
            assert metric.unit == "bytes"


def test_documented_knows_instances() -> None:
    """documented() accepts a listed name with its instance kind and refuses others."""
    assert documented("system", "net_rx_bytes_total.eth0")
    assert documented("system", "cpu_utilization_ratio")
    assert documented("system", "cpu_utilization_ratio.cpu1")
    assert not documented("system", "memory_total_bytes.x")
    assert not documented("collector", "net_rx_bytes_total.eth0")
    assert not documented("system", "made_up_metric")


def test_the_collector_docs_list_every_option_as_the_code_declares_it() -> None:
    """docs/collector.md's options table is exactly what collectors/settings.py declares."""
    from collectors.settings import SPEC

    text = (DOC.parent / "collector.md").read_text()
    match = re.search(r"<!-- options:start -->\n(.*?)\n<!-- options:end -->", text, re.DOTALL)
    assert match, "docs/collector.md lost its options markers"
    assert match.group(1).strip() == SPEC.markdown_table(), \
        "regenerate the table with: python -m collectors.settings"
    for option in SPEC.options:
        assert f"`{option.flag}`" in text
        assert f"`{option.env}`" in text
