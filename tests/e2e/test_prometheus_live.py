"""A real Prometheus on 127.0.0.1 scrapes a running `farm serve` while it runs real
gVisor builds, and every Grafana dashboard query then returns data: no dead panel for
the metrics farm serve exports. A panel may stay empty only if a series it reads is
missing from serve's own /metrics and is one of NOT_FROM_SERVE (reproducibility checks
and the build cache, counted by farm.buildflow, which serve does not call yet); once
serve exports them, their panels must return data too."""

from __future__ import annotations

import json
import math
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.e2e.conftest import wait_for
from tests.e2e.dashboard_png import render
from tests.e2e.prometheus import prometheus
from tests.e2e.test_serve import TINY, project, serve  # noqa: F401 (fixtures)
from tests.k8s.packaging import dashboard

#: Series `farm serve` does not export yet (farm.buildflow counts them; serve does not
#: call it yet): farm build --check's verdicts and the build cache's lookups.
NOT_FROM_SERVE = {"farm_reproducibility_checks_total", "farm_cache_requests_total"}
#: Tries two blocked actions the sandbox denies: a write to the read-only sources and a
#: read of a secret (the observer reports fs_write_denied and sensitive_read), so enforce
#: mode quarantines it.
NOSY = ["sh", "-c", "echo x > /src/input.txt; cat /root/.ssh/id_rsa; echo x > /out/x"]


def total(prom, expr: str) -> float:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else 0.0


def test_every_dashboard_query_returns_data_from_a_live_farm_serve(
    serve,  # noqa: F811
    project: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    served = serve("--concurrency", "1", "--source-root", str(project.parent))
    (tmp_path / "prom").mkdir()
    with prometheus(tmp_path / "prom", [served.url.removeprefix("http://")]) as prom:
        wait_for(lambda: total(prom, 'up{job="farm"}') == 1, timeout=60, what="first scrape")
        start = time.time()

        def run(specs: list[tuple[list[str], str]], expect: int) -> None:
            ids = [served.submit(project, argv, tenant=tenant) for argv, tenant in specs]
            for build in ids:
                served.wait_done(build)
            wait_for(
                lambda: total(prom, "sum(farm_builds_total)") == expect,
                timeout=60,
                what=f"Prometheus to scrape {expect} finished builds",
            )

        # A first round creates the labelled series; the second makes them rise while
        # Prometheus watches, so rates and quantiles have real values, not just series.
        first = [(TINY, "team-a"), (["sh", "-c", "exit 3"], "team-a"), (NOSY, "team-b")]
        run(first, 3)
        run(first, 6)

        _, samples = served.scrape()
        exported = {name for name, _ in samples}
        results = {
            q: prom.query(q.expr) for q in dashboard.queries(rate_interval="2m", range_="15m")
        }
        unfed: set[str] = set()
        for q, result in results.items():
            missing = dashboard.metric_names(q.expr) - exported
            if missing:  # a panel serve cannot feed: only for the known two series
                assert missing <= NOT_FROM_SERVE, (q.panel, missing)
                unfed.add(q.panel)
                continue
            assert result, f"dead panel {q.panel!r}: {q.expr}"
            values = [float(s["value"][1]) for s in result]
            assert all(math.isfinite(v) for v in values), (q.panel, q.expr, result)

        by_result = {
            s["metric"]["result"]: float(s["value"][1])
            for s in prom.query("sum by (result) (farm_builds_total)")
        }
        # Enforce mode (the default) quarantines the nosy builds.
        assert by_result == {"succeeded": 2.0, "failed": 2.0, "quarantined": 2.0}
        kinds = {s["metric"]["kind"] for s in prom.query("farm_blocked_actions_total")}
        assert {"fs_write_denied", "sensitive_read"} <= kinds
        blocked_by_tenant = prom.query(
            "sum by (tenant) (increase(farm_blocked_actions_total[15m]))"
        )
        assert {s["metric"]["tenant"] for s in blocked_by_tenant} == {"team-b"}

        # The same queries over the run, as a picture (docs/dashboard.png).
        png = Path(os.environ.get("FARM_DASHBOARD_PNG") or tmp_path / "dashboard.png")
        points = render(prom, list(results), start, time.time(), png)
        assert {p for p, n in points.items() if n == 0} <= unfed, points
        assert png.stat().st_size > 10_000

        # The dashboard's tenant variable: label_values(farm_builds_total, tenant).
        query = urllib.parse.urlencode({"match[]": "farm_builds_total"})
        with urllib.request.urlopen(f"{prom.url}/api/v1/label/tenant/values?{query}") as r:
            assert json.load(r)["data"] == ["team-a", "team-b"]
