"""The Grafana dashboard and the chart's PrometheusRule use only the metrics of
`docs/observability.md`, by the names Prometheus gives them; the documented Prometheus names
follow from the OTel names by the exporter's rules."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_helm_chart import ALERTING, MINIMAL, of_kind, render

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "tidemark-dashboard.json"
DOC = ROOT / "docs" / "observability.md"
ROW = re.compile(r"^\| `(tidemark_\w+)` \| ([\w.]+) \| (gauge|counter|histogram) \| ([^|]+) \|")
USED = re.compile(r"\btidemark_\w+")
SERIES = ("_bucket", "_sum", "_count")


def documented() -> dict[str, tuple[str, str, str]]:
    """Prometheus name → (OTel name, type, unit) from the doc's table."""
    rows = (ROW.match(line) for line in DOC.read_text().splitlines())
    return {m[1]: (m[2], m[3], m[4].split()[0]) for m in rows if m}


def prometheus_name(otel: str, kind: str, unit: str) -> str:
    """The collector's translation: dots to underscores, unit suffix, `_total` on counters;
    curly-brace units add nothing."""
    name = otel.replace(".", "_")
    suffix = {"s": "seconds", "By": "bytes"}.get(unit)
    if suffix and not name.endswith(f"_{suffix}"):
        name += f"_{suffix}"
    return f"{name}_total" if kind == "counter" else name


def referenced(expressions: list[str]) -> set[str]:
    names = set()
    for expression in expressions:
        for name in USED.findall(expression):
            for series in SERIES:
                name = name.removesuffix(series)
            names.add(name)
    return names


def test_the_documented_names_follow_the_exporters_rules() -> None:
    metrics = documented()
    assert len(metrics) >= 16
    for name, (otel, kind, unit) in metrics.items():
        assert prometheus_name(otel, kind, unit) == name


def expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        query = node.get("query")
        if isinstance(query, dict) and isinstance(query.get("query"), str):
            found.append(query["query"])
        return found + [e for value in node.values() for e in expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in expressions(value)]
    return []


def test_the_dashboard_uses_only_documented_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "tidemark-overview"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    used = referenced(expressions(dashboard))
    assert used <= set(documented()), used - set(documented())
    # The restorable window comes first: the top row shows window start, end and RPO.
    first = [p for p in panels if p["type"] != "row" and p["gridPos"]["y"] < 9]
    assert referenced(expressions(first)) >= {
        "tidemark_window_start_timestamp_seconds",
        "tidemark_window_end_timestamp_seconds",
        "tidemark_rpo_seconds",
    }
    for wanted in (
        "tidemark_archive_lag_seconds",
        "tidemark_archive_backlog_logs",
        "tidemark_job_duration_seconds",
        "tidemark_job_failures_total",
        "tidemark_dead_letters_total",
        "tidemark_last_backup_timestamp_seconds",
        "tidemark_last_verification_timestamp_seconds",
    ):
        assert wanted in used


def test_the_rule_is_off_by_default() -> None:
    assert not of_kind(render(MINIMAL), "PrometheusRule")


@pytest.fixture(scope="module")
def rule() -> dict[str, Any]:
    [rule] = of_kind(render(ALERTING), "PrometheusRule")
    return rule


def test_the_rule_renders_the_alerts_on_documented_metrics(rule: dict[str, Any]) -> None:
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "TidemarkRpoOverTarget",
        "TidemarkArchivingStalled",
        "TidemarkBackupOverdue",
        "TidemarkVerificationOverdue",
        "TidemarkDeadLettersIncreasing",
    }
    for alert in alerts.values():
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}
        assert alert["labels"]["severity"] in ("critical", "warning")
        assert alert["annotations"]["summary"]
        assert "{{ $labels" in alert["annotations"]["summary"]  # left for Prometheus to fill
    used = referenced([a["expr"] for a in alerts.values()])
    assert used <= set(documented()), used - set(documented())
    assert "> 900" in alerts["TidemarkRpoOverTarget"]["expr"]
    assert "> 93600" in alerts["TidemarkBackupOverdue"]["expr"]
    assert "> 691200" in alerts["TidemarkVerificationOverdue"]["expr"]
    assert alerts["TidemarkRpoOverTarget"]["for"] == "10m"


def test_the_targets_are_values() -> None:
    values = {"prometheusRule": {"enabled": True, "rpoTargetSeconds": 60, "for": "1m"}}
    [rule] = of_kind(render({**MINIMAL, **values}), "PrometheusRule")
    [rpo] = [r for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"].endswith("Target")]
    assert rpo["expr"].endswith("> 60")
    assert rpo["for"] == "1m"
