"""The Grafana dashboard parses and queries only metrics that mailish exports."""

from __future__ import annotations

import json
import re

from prometheus_client.metrics_core import Metric

import mailish.operator.metrics  # registers the operator's metrics on REGISTRY
from mailish.observability.metrics import REGISTRY
from tests.deploy.conftest import CHART

DASHBOARD = CHART / "files" / "dashboards" / "mailish.json"
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "max", "min", "avg", "count",
    "le", "without", "label_values", "on", "ignoring", "and", "or", "unless", "absent",
}  # fmt: skip


def exported_names() -> set[str]:
    assert mailish.operator.metrics.unowned_buckets is not None
    names: set[str] = set()
    family: Metric
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "count", "sum"))
    return names


def queried_metrics(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # drop label matchers
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)  # and ranges
    expr = re.sub(r"\bby\s*\([^)]*\)", "", expr)  # and grouping labels
    expr = re.sub(r",\s*[a-zA-Z_]\w*\s*\)", ")", expr)  # and label_values(metric, label)
    found = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {name for name in found if name not in PROMQL_WORDS and not name[0].isdigit()}


def test_dashboard_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names()
    assert {"send_errors_total", "api_request_seconds_bucket", "operator_unowned_buckets"} <= (
        exported
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    queried = set().union(*(queried_metrics(e) for e in exprs))
    assert queried, "no metric found in the dashboard"
    assert queried <= exported, f"not exported: {sorted(queried - exported)}"
    # The metrics the alerts watch all have a panel, and api latency is split by track.
    for name in (
        "send_errors_total",
        "store_errors_total",
        "missing_users",
        "shards_in_sync",
        "operator_unowned_buckets",
        "user_operations_total",
        "api_request_seconds_bucket",
    ):
        assert name in queried, name
    latency = next(e for e in exprs if "api_request_seconds_bucket" in e)
    assert "track" in latency


def test_alerts_query_exported_metrics(rendered: dict[str, list[dict]]) -> None:
    rules = next(d for d in rendered["canary"] if d["kind"] == "PrometheusRule")
    exported = exported_names() | {"up"}
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    queried = set().union(*(queried_metrics(e) for e in exprs))
    assert queried <= exported, f"not exported: {sorted(queried - exported)}"
    assert {
        "send_errors_total",
        "store_errors_total",
        "missing_users",
        "operator_unowned_buckets",
        "shards_in_sync",
        "user_operations_total",
    } <= queried


def test_dashboard_is_shipped_in_a_configmap(rendered: dict[str, list[dict]]) -> None:
    maps = [
        d for d in rendered["canary"] if d["kind"] == "ConfigMap" and "mailish.json" in d["data"]
    ]
    assert len(maps) == 1
    assert json.loads(maps[0]["data"]["mailish.json"])["uid"] == "mailish"
