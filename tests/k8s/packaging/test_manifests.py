"""manifests/: the kustomize install is generated from the chart (no drift), renders
offline with kubectl's built-in kustomize, equals the chart's default install, and
every object of the base and of the example overlay passes its schema."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from farm import chart
from farm.devtools import tool
from tests.k8s.packaging.chartlib import Obj, find, validate_all

pytestmark = pytest.mark.k8s


def kustomize(path: str) -> list[Obj]:
    done = subprocess.run(
        [str(tool("kubectl")), "kustomize", str(chart.MANIFESTS / path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def key(obj: Obj) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def without_helm_labels(obj: Any) -> Any:
    """The chart's objects with the labels farm/chart.py rewrites for kustomize."""
    if isinstance(obj, dict):
        out = {k: without_helm_labels(v) for k, v in obj.items() if k != "helm.sh/chart"}
        if out.get("app.kubernetes.io/managed-by") == "Helm":
            out["app.kubernetes.io/managed-by"] = "kustomize"
        return out
    if isinstance(obj, list):
        return [without_helm_labels(v) for v in obj]
    return obj


def test_manifests_are_generated_from_the_chart() -> None:
    """Fails when the chart changed without `make manifests` (or manifests/ was hand-edited)."""
    want = chart.manifest_files()
    on_disk = {
        p: p.read_text()
        for group in ("base", "monitoring")
        for p in (chart.MANIFESTS / group).glob("*.yaml")
    }
    on_disk[chart.CHART_CRD] = chart.CHART_CRD.read_text()
    assert sorted(on_disk) == sorted(want), "run `make manifests`"
    drifted = [str(p.relative_to(chart.ROOT)) for p in want if on_disk[p] != want[p]]
    assert drifted == [], f"run `make manifests`; drifted: {drifted}"


def test_chart_crd_is_the_generated_one() -> None:
    """The chart ships exactly the CRD the k8s branch generates from the pydantic spec."""
    assert (
        chart.CHART_CRD.read_text()
        == (chart.MANIFESTS / "crd" / "builds.farm.dev.yaml").read_text()
    )


def test_kustomize_renders_the_same_install_as_helm(default_objects: list[Obj]) -> None:
    rendered = kustomize(".")
    by_key = {key(o): o for o in rendered}
    namespace = by_key.pop(("Namespace", "", chart.NAMESPACE))
    assert namespace["apiVersion"] == "v1"
    helm_objects = {key(o): without_helm_labels(o) for o in default_objects}
    assert sorted(by_key) == sorted(helm_objects)
    for k, obj in helm_objects.items():
        assert by_key[k] == obj, k


def test_kustomize_base_and_example_overlay_pass_their_schemas() -> None:
    for path in (".", "base", "overlays/example"):
        assert validate_all(kustomize(path)) == {}, path


def test_example_overlay_pins_images_by_digest_and_targets_gvisor_nodes() -> None:
    objects = kustomize("overlays/example")
    images = [
        c["image"]
        for kind in ("Deployment", "DaemonSet")
        for o in find(objects, kind)
        for c in o["spec"]["template"]["spec"]["containers"]
    ]
    assert len(images) == 2
    assert all(i.startswith("registry.example.com/farm/") and "@sha256:" in i for i in images)
    (monitor,) = find(objects, "DaemonSet")
    assert monitor["spec"]["template"]["spec"]["nodeSelector"] == {"farm.dev/gvisor": "true"}
    (controller,) = find(objects, "Deployment")
    resources = controller["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["memory"] == "2Gi"
