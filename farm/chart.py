"""Render the helm/farm chart, and generate the kustomize manifests/ from it.

Callers: ``make manifests`` (``python -m farm.chart``) copies the Build CRD into the
chart (``helm/farm/files/build-crd.yaml``, the same text as manifests/crd, generated from
the pydantic BuildSpec by ``farm.k8s``) and rewrites manifests/base and
manifests/monitoring from the chart's defaults; tests/k8s/packaging render the chart
with :func:`render` and fail when any of these has drifted (:func:`manifest_files`).
Nothing runs at import time; helm comes from ``farm.devtools``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from farm.devtools import ROOT, tool
from farm.errors import InfrastructureError

CHART = ROOT / "helm" / "farm"
MANIFESTS = ROOT / "manifests"
RELEASE = "farm"
NAMESPACE = "farm-system"
#: Objects that need prometheus-operator's CRDs (or are only useful with Grafana) go in
#: their own kustomization, so the base applies on a cluster without them.
CHART_CRD = CHART / "files" / "build-crd.yaml"
MONITORING_TEMPLATES = ("servicemonitor.yaml", "prometheusrule.yaml", "dashboard.yaml")
HEADER = "# Generated from helm/farm by `make manifests` (farm/chart.py). Do not edit.\n"


def helm(*args: str) -> str:
    """Run helm; raises InfrastructureError with its stderr (e.g. a schema violation)."""
    done = subprocess.run([str(tool("helm")), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise InfrastructureError(f"helm {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


#: The API groups farm's generated manifests assume beyond the built-in ones: the
#: chart renders ServiceMonitor and PrometheusRule only where this one is served.
MONITORING_API = "monitoring.coreos.com/v1"


def render(
    values: Sequence[Path] = (),
    sets: Sequence[str] = (),
    namespace: str = NAMESPACE,
    api_versions: Sequence[str] = (MONITORING_API,),
) -> list[dict[str, Any]]:
    """`helm template` the chart as for a cluster serving ``api_versions``; its objects."""
    argv = ["template", RELEASE, str(CHART), "--namespace", namespace]
    for api in api_versions:
        argv += ["--api-versions", api]
    for path in values:
        argv += ["--values", str(path)]
    for item in sets:
        argv += ["--set", item]
    return [doc for doc in yaml.safe_load_all(helm(*argv)) if doc]


def _for_kustomize(text: str) -> str:
    """Helm's release bookkeeping labels do not describe a kustomize install."""
    text = re.sub(r"^\s*helm\.sh/chart: .*\n", "", text, flags=re.M)
    return text.replace(
        "app.kubernetes.io/managed-by: Helm", "app.kubernetes.io/managed-by: kustomize"
    )


def crd_text() -> str:
    """The Build CRD as ``farm controller --print-crd`` prints it."""
    from farm.k8s.main import crd_yaml

    return crd_yaml()


def manifest_files() -> dict[Path, str]:
    """Every generated file (manifests/ and the chart's CRD copy), keyed by path.

    manifests/ is rendered from the chart as it is on disk: run :func:`write_manifests`,
    which writes the CRD copy first.
    """
    files: dict[Path, str] = {CHART_CRD: crd_text()}
    with tempfile.TemporaryDirectory(prefix="farm-chart-") as out:
        helm(
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--api-versions",
            MONITORING_API,
            "--output-dir",
            out,
        )
        rendered = sorted((Path(out) / "farm" / "templates").glob("*.yaml"))
        groups: dict[str, list[str]] = {"base": [], "monitoring": []}
        for path in rendered:
            group = "monitoring" if path.name in MONITORING_TEMPLATES else "base"
            groups[group].append(path.name)
            body = _for_kustomize(path.read_text()).replace(
                "---\n# Source: farm/templates/", "---\n# Source: helm/farm/templates/"
            )
            files[MANIFESTS / group / path.name] = HEADER + body
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    files[MANIFESTS / "base" / "namespace.yaml"] = HEADER + yaml.safe_dump(namespace)
    groups["base"].insert(0, "namespace.yaml")
    for group, names in groups.items():
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": names,
        }
        files[MANIFESTS / group / "kustomization.yaml"] = HEADER + yaml.safe_dump(
            kustomization, sort_keys=False
        )
    return files


def write_manifests() -> list[Path]:
    """Rewrite the chart's CRD copy, manifests/base and manifests/monitoring; returns the
    files written."""
    CHART_CRD.write_text(crd_text())
    files = manifest_files()
    for group in ("base", "monitoring"):
        for stale in (MANIFESTS / group).glob("*.yaml"):
            if stale not in files:
                stale.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return sorted(files)


if __name__ == "__main__":
    try:
        for written in write_manifests():
            print(written.relative_to(ROOT))
    except InfrastructureError as exc:
        sys.exit(f"farm: {exc}")
