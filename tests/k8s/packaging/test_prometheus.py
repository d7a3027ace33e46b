"""Prometheus: the alert rules and every dashboard query parse (`promtool check rules`),
the alerts behave as specified (`promtool test rules`), and both use only the metric
names farm/metrics.py exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from farm import chart
from farm.devtools import tool
from farm.metrics import Metrics
from tests.k8s.packaging import dashboard
from tests.k8s.packaging.chartlib import HERE, VALUES, find

pytestmark = pytest.mark.k8s

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
#: Panels the issue asks for, by title.
REQUIRED_PANELS = {
    "Builds per minute by result",
    "Success rate",
    "Build duration p50 / p95",
    "Queue wait p50 / p95 and queued builds",
    "Blocked actions by kind",
    "Blocked actions by tenant",
    "Reproducibility rate",
    "Cache hit ratio",
    "Active sandboxes",
    "Teardown latency p50 / p95",
    "Leaked sandboxes",
}


def exported() -> dict[str, str]:
    """Series name -> family name, as prometheus-client exposes farm's metrics."""
    names = {}
    for family in Metrics(CollectorRegistry()).registry.collect():
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = family.name
    return names


def rule_file(values: list[Path], tmp_path: Path) -> Path:
    (rule,) = find(chart.render(values), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("promtool")), *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.parametrize("name", ["default", "nondefault"])
def test_alert_rules_pass_promtool_check(name: str, tmp_path: Path) -> None:
    done = promtool("check", "rules", rule_file(VALUES[name], tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


def test_alert_unit_tests(tmp_path: Path) -> None:
    rule_file(VALUES["default"], tmp_path)
    shutil.copy(HERE / "promtool" / "alerts_test.yaml", tmp_path)
    done = promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_dashboard_query_passes_promtool_check(tmp_path: Path) -> None:
    qs = dashboard.queries()
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(dashboard.recording_rules(qs)))
    done = promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(qs)} rules found" in done.stdout


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    """Negative control: the checks above would catch a typo in a query."""
    broken = [dashboard.Query("p", "A", "sum(rate(farm_builds_total[5m])")]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(dashboard.recording_rules(broken)))
    done = promtool("check", "rules", path)
    assert done.returncode != 0
    assert "unclosed left parenthesis" in done.stdout + done.stderr


def test_rules_and_dashboard_use_only_exported_metric_names(default_objects: list[Any]) -> None:
    names = exported()
    (rule,) = find(default_objects, "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    exprs += [q.expr for q in dashboard.queries()]
    exprs += [dashboard.load()["templating"]["list"][1]["definition"]]
    used = set().union(*map(dashboard.metric_names, exprs))
    assert used, "no metric found in the queries"
    assert used - names.keys() == set()


def test_every_exported_metric_has_a_panel() -> None:
    shown = {exported()[n] for q in dashboard.queries() for n in dashboard.metric_names(q.expr)}
    families = set(exported().values())
    assert families - shown == set()


def test_dashboard_panels_and_variables() -> None:
    dash = dashboard.load()
    titles = {p["title"] for p in dash["panels"]}
    assert titles >= REQUIRED_PANELS
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["tenant"]["includeAll"] and variables["tenant"]["multi"]
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    # Every query of a metric that has a tenant label honours the tenant variable.
    registry = Metrics(CollectorRegistry())
    tenanted = {
        f"{m._name}" for m in vars(registry).values() if "tenant" in getattr(m, "_labelnames", ())
    }
    assert "farm_builds" in tenanted and "farm_blocked_actions" in tenanted
    for q in dashboard.queries(dash):
        for name in dashboard.metric_names(q.expr):
            if exported()[name] in tenanted:
                assert f'{name}{{tenant=~".*"' in q.expr, (q.panel, name)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
