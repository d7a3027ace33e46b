"""The Grafana dashboard's PromQL, made concrete: template variables replaced the way
Grafana would, so promtool and a real Prometheus can evaluate every panel query.

Callers: tests/k8s/packaging/test_prometheus.py and tests/e2e/test_prometheus_live.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from farm import chart

DASHBOARD = chart.CHART / "dashboards" / "farm.json"


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str
    legend: str = ""


def metric_names(expr: str) -> set[str]:
    """The farm series a PromQL expression reads."""
    return set(re.findall(r"\bfarm_[a-z_]+\b", expr))


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries(
    dashboard: dict[str, Any] | None = None, rate_interval: str = "5m", range_: str = "1h"
) -> list[Query]:
    """Every panel target, with $tenant as "All" (.*) and Grafana's interval variables."""
    out = []
    for panel in (dashboard or load())["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$__rate_interval", rate_interval)
                .replace("$__range", range_)
                .replace('"$tenant"', '".*"')
            )
            out.append(Query(panel["title"], target["refId"], expr, target.get("legendFormat", "")))
    return out


def recording_rules(qs: list[Query]) -> dict[str, Any]:
    """A rule file with one recording rule per query, for `promtool check rules`."""
    rules = [
        {
            "record": f"dashboard:{re.sub(r'[^a-z0-9]+', '_', q.panel.lower()).strip('_')}:{q.ref}",
            "expr": q.expr,
        }
        for q in qs
    ]
    return {"groups": [{"name": "farm-dashboard", "rules": rules}]}
