"""helm/farm: lint, render with default, non-default and minimal values, and validate
every rendered object against the official schemas of Kubernetes 1.35 (kubernetes-validate
--strict) or, for monitoring.coreos.com objects, prometheus-operator's API schemas."""

from __future__ import annotations

import copy
import json
import subprocess

import kubernetes_validate
import pytest
import yaml

from farm import chart
from farm.devtools import tool
from farm.errors import InfrastructureError
from tests.k8s.conftest import VALUES, Obj, find, validate_all, validate_builtin

pytestmark = pytest.mark.k8s


@pytest.mark.parametrize("name", sorted(VALUES))
def test_helm_lint_strict(name: str) -> None:
    argv = [str(tool("helm")), "lint", "--strict", str(chart.CHART)]
    for path in VALUES[name]:
        argv += ["--values", str(path)]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_every_rendered_object_passes_its_schema(rendered: tuple[str, list[Obj]]) -> None:
    name, objects = rendered
    assert objects, f"{name}: nothing rendered"
    assert validate_all(objects) == {}


def test_strict_validation_rejects_an_unknown_field(default_objects: list[Obj]) -> None:
    """The validators are live: a misspelt field in a Deployment or a bad duration in a
    ServiceMonitor is reported, so the green tests above mean something."""
    deployment = copy.deepcopy(find(default_objects, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        validate_builtin(deployment)
    monitor = copy.deepcopy(find(default_objects, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    assert "interval" in validate_all([monitor])["ServiceMonitor/farm"]


def test_values_schema_rejects_bad_values() -> None:
    with pytest.raises(InfrastructureError, match="additional properties 'replica' not allowed"):
        chart.render(sets=["controller.replica=2"])
    with pytest.raises(InfrastructureError, match="/controller/image/digest"):
        chart.render(sets=["controller.image.digest=latest"])
    with pytest.raises(InfrastructureError, match="/prometheusRule/failureRate/threshold"):
        chart.render(sets=["prometheusRule.failureRate.threshold=2"])


def test_default_install_has_every_component(default_objects: list[Obj]) -> None:
    kinds = {o["kind"] for o in default_objects}
    assert kinds >= {
        "CustomResourceDefinition",
        "Deployment",
        "DaemonSet",
        "RuntimeClass",
        "NetworkPolicy",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "Role",
        "RoleBinding",
    }
    runtime = find(default_objects, "RuntimeClass")[0]
    assert (runtime["metadata"]["name"], runtime["handler"]) == ("gvisor", "runsc")
    crd = find(default_objects, "CustomResourceDefinition")[0]
    assert crd["metadata"]["name"] == "builds.farm.dev"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_controller_runs_non_root_read_only_with_limits_and_probes(
    rendered: tuple[str, list[Obj]],
) -> None:
    _, objects = rendered
    (deployment,) = find(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    # A read-only root needs every writable path mounted.
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/var/lib/farm", "/tmp"}


def test_build_namespaces_get_default_deny_and_a_tokenless_account(
    nondefault_objects: list[Obj],
) -> None:
    policies = find(nondefault_objects, "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["builds-a", "builds-b"]
    for policy in policies:
        spec = policy["spec"]
        assert spec["podSelector"] == {
            "matchExpressions": [{"key": "farm.dev/build", "operator": "Exists"}]
        }
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert "ingress" not in spec and "egress" not in spec  # nothing allowed
    accounts = [a for a in find(nondefault_objects, "ServiceAccount", "farm-build")]
    assert sorted(a["metadata"]["namespace"] for a in accounts) == ["builds-a", "builds-b"]
    assert all(a["automountServiceAccountToken"] is False for a in accounts)


def test_rbac_is_least_privilege(rendered: tuple[str, list[Obj]]) -> None:
    _, objects = rendered
    for role in find(objects, "ClusterRole") + find(objects, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
    # Cluster-wide the controller may only read its own CRD.
    for role in find(objects, "ClusterRole"):
        assert role["rules"] == [
            {
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "resourceNames": ["builds.farm.dev"],
                "verbs": ["get"],
            }
        ]
    # The build account is never bound to anything.
    for binding in find(objects, "RoleBinding") + find(objects, "ClusterRoleBinding"):
        assert all(s["name"] != "farm-build" for s in binding["subjects"])
    # The node monitor reads pods and patches Build status, nothing more.
    for role in find(objects, "Role"):
        if role["metadata"]["name"].endswith("-node-monitor"):
            verbs = {(r["resources"][0], v) for r in role["rules"] for v in r["verbs"]}
            assert verbs == {
                ("pods", "get"),
                ("pods", "list"),
                ("pods", "watch"),
                ("builds", "get"),
                ("builds", "list"),
                ("builds/status", "patch"),
            }


def test_non_default_values_take_effect(nondefault_objects: list[Obj]) -> None:
    objects = nondefault_objects
    assert not find(objects, "CustomResourceDefinition")
    assert not find(objects, "PersistentVolumeClaim")
    (deployment,) = find(objects, "Deployment", "acme-farm-controller")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith("@sha256:" + "1" * 64)
    assert "--leader-election" not in container["args"]
    (monitor,) = find(objects, "DaemonSet", "acme-farm-node-monitor")
    pod = monitor["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example.com/farm/node-monitor:0.1.0-rc1"
    assert pod["volumes"][0]["hostPath"]["path"] == "/var/run/farm-observer"
    (runtime,) = find(objects, "RuntimeClass")
    assert runtime["handler"] == "runsc-ptrace"
    assert runtime["scheduling"]["nodeSelector"] == {"farm.dev/gvisor": "true"}
    (dashboard,) = find(objects, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert all(o["metadata"]["labels"]["example.com/team"] == "platform" for o in objects)
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in find(objects, "Role")}
    for ns in ("builds-a", "builds-b"):
        assert {(ns, "acme-farm-controller"), (ns, "acme-farm-node-monitor")} <= roles


def test_minimal_values_render_only_the_core() -> None:
    objects = chart.render(VALUES["minimal"])
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"RuntimeClass", "NetworkPolicy", "DaemonSet", "ServiceMonitor"}
    assert not kinds & {"PrometheusRule", "ConfigMap"}
    assert {"CustomResourceDefinition", "Deployment", "Service"} <= kinds


def test_dashboard_configmap_carries_the_sidecar_label(default_objects: list[Obj]) -> None:
    (configmap,) = find(default_objects, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((chart.CHART / "dashboards" / "farm.json").read_text())
    assert json.loads(configmap["data"]["farm.json"]) == shipped


def test_service_monitor_selects_the_metrics_services(default_objects: list[Obj]) -> None:
    (monitor,) = find(default_objects, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = find(default_objects, "Service")
    assert len(services) == 2
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for service in services:
        assert selector.items() <= service["metadata"]["labels"].items()
        assert ports <= {p["name"] for p in service["spec"]["ports"]}


def test_chart_readme_documents_every_value() -> None:
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    readme = (chart.CHART / "README.md").read_text()

    def keys(d: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            documented = f"| `{prefix}{k}` |" in readme
            if isinstance(v, dict) and v and not documented:
                out += keys(v, f"{prefix}{k}.")
            else:
                out.append(f"{prefix}{k}")
        return out

    missing = [k for k in keys(values) if f"| `{k}` |" not in readme]
    assert missing == []
