"""A real Prometheus on 127.0.0.1 scrapes a running `farm serve` while it runs real
gVisor builds (failures, a quarantine, cache misses and hits, a reproducibility check),
and then EVERY Grafana dashboard query returns finite data, and the plot of the run
has points in every panel. The one exception is a series only the Kubernetes controller
can move (KUBERNETES_ONLY): serve exports it, never increments it, and the test says so."""

from __future__ import annotations

import json
import math
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.e2e.conftest import wait_for
from tests.e2e.dashboard_png import render
from tests.e2e.prometheus import prometheus
from tests.e2e.test_serve import TINY, project, serve  # noqa: F401 (fixtures)
from tests.k8s.packaging import dashboard

#: Series on the dashboard that `farm serve` cannot move, with why. Serve exports the
#: family (farm/metrics.py declares it on every registry) at 0, so the queries reading it
#: return a 0 that proves nothing; the test requires exactly that 0 and says so.
KUBERNETES_ONLY = {
    "farm_pods_torn_down_total": "only the Kubernetes controller deletes build pods; "
    "farm serve runs Docker sandboxes (their teardown is farm_teardown_seconds)",
    # Labelled families with no child export no series at all: their panels read
    # `… or vector(0)`, so they show 0, not "No data", wherever nothing moved them.
    "farm_builds_expired_total": "only the Kubernetes controller expires Builds "
    "(farm serve keeps records until farm gc)",
    "farm_kube_list_overflow_total": "only the Kubernetes controller lists an API server",
}
#: Tries two blocked actions the sandbox denies: a write to the read-only sources and a
#: read of a secret (the observer reports fs_write_denied and sensitive_read), so enforce
#: mode quarantines it.
NOSY = ["sh", "-c", "echo x > /src/input.txt; cat /root/.ssh/id_rsa; echo x > /out/x"]
#: Built twice per check run (check=2); deterministic, so the verdict is reproducible.
SAME = ["sh", "-c", "echo x > /out/x"]


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

        def run(specs: list[tuple[list[str], str, dict[str, Any]]], expect: int) -> None:
            # One worker, FIFO within a tenant: the second TINY starts after the first
            # is done and cached, so it is a cache hit even in the first round.
            ids = [served.submit(project, argv, tenant=t, **opts) for argv, t, opts in specs]
            for build in ids:
                served.wait_done(build)
            wait_for(
                lambda: total(prom, "sum(farm_builds_total)") == expect,
                timeout=60,
                what=f"Prometheus to scrape {expect} finished builds",
            )

        # A first round creates the labelled series; the second makes them rise while
        # Prometheus watches, so rates and quantiles have real values, not just series.
        # The check bypasses the cache (no_cache) so it runs, and counts, in both rounds;
        # it goes first so its rate has a value for most of the second round.
        first = [
            (SAME, "team-a", {"check": 2, "no_cache": True}),  # a bypass, reproducible
            (TINY, "team-a", {}),  # round 1: a miss, then cached; round 2: a hit
            (TINY, "team-a", {}),  # a hit in both rounds
            (["sh", "-c", "exit 3"], "team-a", {}),  # a miss (failures are not cached)
            (NOSY, "team-b", {}),  # a miss (quarantined builds are not cached)
        ]
        run(first, 5)
        run(first, 10)

        _, samples = served.scrape()
        exported = {name for name, _ in samples}
        results = {
            q: prom.query(q.expr) for q in dashboard.queries(rate_interval="2m", range_="15m")
        }
        for q, result in results.items():
            names = dashboard.metric_names(q.expr)
            assert names - KUBERNETES_ONLY.keys() <= exported, (q.panel, q.expr, exported)
            assert result, f"dead panel {q.panel!r}: {q.expr}"
            values = [float(s["value"][1]) for s in result]
            assert all(math.isfinite(v) for v in values), (q.panel, q.expr, result)
            if dashboard.metric_names(q.expr) & KUBERNETES_ONLY.keys():
                assert values == [0.0], (q.panel, q.expr, KUBERNETES_ONLY)

        cache = {
            s["metric"]["result"]: float(s["value"][1])
            for s in prom.query("farm_cache_requests_total")
        }
        assert cache == {"hit": 3.0, "miss": 5.0, "bypass": 2.0}
        assert total(prom, 'sum(farm_reproducibility_checks_total{result="reproducible"})') == 2
        assert total(prom, "max(farm_sandboxes_leaked)") == 0
        by_result = {
            s["metric"]["result"]: float(s["value"][1])
            for s in prom.query("sum by (result) (farm_builds_total)")
        }
        # Enforce mode (the default) quarantines the nosy builds.
        assert by_result == {"succeeded": 6.0, "failed": 2.0, "quarantined": 2.0}
        kinds = {s["metric"]["kind"] for s in prom.query("farm_blocked_actions_total")}
        assert {"fs_write_denied", "sensitive_read"} <= kinds
        blocked_by_tenant = prom.query(
            "sum by (tenant) (increase(farm_blocked_actions_total[15m]))"
        )
        assert {s["metric"]["tenant"] for s in blocked_by_tenant} == {"team-b"}

        # The same queries over the run, as a picture (docs/dashboard.png).
        png = Path(os.environ.get("FARM_DASHBOARD_PNG") or tmp_path / "dashboard.png")
        points = render(prom, list(results), start, time.time(), png)
        assert all(points.values()), points
        assert png.stat().st_size > 10_000

        # The dashboard's tenant variable: label_values(farm_builds_total, tenant).
        query = urllib.parse.urlencode({"match[]": "farm_builds_total"})
        with urllib.request.urlopen(f"{prom.url}/api/v1/label/tenant/values?{query}") as r:
            assert json.load(r)["data"] == ["team-a", "team-b"]
