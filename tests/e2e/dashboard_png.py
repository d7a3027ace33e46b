"""Plot the dashboard's queries over a time range from a real Prometheus into one PNG,
one subplot per panel, as Grafana would lay the series out (legendFormat applied).

Callers: tests/e2e/test_prometheus_live.py (always, into its tmp dir; `make
dashboard-png` sets FARM_DASHBOARD_PNG=docs/dashboard.png to refresh the docs' copy).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from tests.e2e.prometheus import Prometheus
from tests.k8s.packaging.dashboard import Query


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or "value"


def render(prom: Prometheus, queries: list[Query], start: float, end: float, out: Path) -> dict:
    """Write the PNG; returns the number of finite points plotted per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(q.panel for q in queries))
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 2.8 * rows), squeeze=False)
    points: dict[str, int] = {}
    for ax, panel in zip(axes.flat, panels, strict=False):
        points[panel] = 0
        for q in (q for q in queries if q.panel == panel):
            for series in prom.query_range(q.expr, start, end, step="1s"):
                xs, ys = [], []
                for t, v in series["values"]:
                    if math.isfinite(float(v)):
                        xs.append(float(t) - start)
                        ys.append(float(v))
                points[panel] += len(ys)
                ax.plot(xs, ys, marker="o", markersize=2, label=legend(q.legend, series["metric"]))
        ax.set_title(panel, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("seconds into the run", fontsize=7)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("farm dashboard queries: a live farm serve during gVisor builds", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    plt.close(fig)
    return points
