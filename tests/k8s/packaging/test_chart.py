"""helm/farm: lint, render with default, non-default and minimal values, and validate
every rendered object against the official schemas of Kubernetes 1.37 (kubernetes-validate
--strict) or, for monitoring.coreos.com objects, prometheus-operator's API schemas."""

from __future__ import annotations

import copy
import json
import subprocess

import kubernetes_validate
import pytest
import yaml

from farm import chart, cli
from farm.devtools import tool
from farm.errors import InfrastructureError
from farm.k8s import permissions
from farm.k8s.config import ControllerConfig
from tests.k8s.packaging.chartlib import (
    VALUES,
    Obj,
    find,
    validate_all,
    validate_builtin,
    validate_monitoring,
)

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


def test_unknown_fields_in_monitoring_objects_are_rejected(default_objects: list[Obj]) -> None:
    """A misspelt field in a ServiceMonitor or PrometheusRule would be pruned silently
    by the API server; the TypeScript check names it (the JSON schemas let it through)."""
    monitor = copy.deepcopy(find(default_objects, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["scrapeIntervall"] = "30s"
    rule = copy.deepcopy(find(default_objects, "PrometheusRule")[0])
    rule["spec"]["groups"][0]["rules"][0]["fore"] = "5m"
    assert validate_monitoring([monitor, rule]) == {
        "ServiceMonitor/farm": [],
        f"PrometheusRule/{rule['metadata']['name']}": [],
    }
    failures = validate_all([monitor, rule])
    assert "'\"scrapeIntervall\"' does not exist" in failures["ServiceMonitor/farm"]
    assert "'\"fore\"' does not exist" in failures[f"PrometheusRule/{rule['metadata']['name']}"]


def test_values_schema_rejects_bad_values() -> None:
    with pytest.raises(InfrastructureError, match="additional properties 'replica' not allowed"):
        chart.render(sets=["controller.replica=2"])
    with pytest.raises(InfrastructureError, match="/image/digest"):
        chart.render(sets=["image.digest=latest"])
    with pytest.raises(InfrastructureError, match="/controller/config/fetch_image"):
        chart.render(sets=["controller.config.fetch_image=elsewhere"])
    with pytest.raises(InfrastructureError, match="/prometheusRule/failureRate/threshold"):
        chart.render(sets=["prometheusRule.failureRate.threshold=2"])
    # The chart owns where builds upload to; a user value cannot silently override it.
    with pytest.raises(InfrastructureError, match="/controller/config/namespace"):
        chart.render(sets=["controller.config.namespace=elsewhere"])
    with pytest.raises(InfrastructureError, match="/controller/config/run_namespace"):
        chart.render(sets=["controller.config.run_namespace=team-a"])
    with pytest.raises(InfrastructureError, match="must differ from the release namespace"):
        chart.render(sets=[f"runNamespace.name={chart.NAMESPACE}"])


def test_default_install_has_every_component(default_objects: list[Obj]) -> None:
    kinds = {o["kind"] for o in default_objects}
    assert kinds >= {
        "CustomResourceDefinition",
        "Deployment",
        "DaemonSet",
        "NetworkPolicy",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "PersistentVolumeClaim",
    }
    # Off by default: a managed gVisor cluster has its own, and creating it would clash.
    assert find(default_objects, "RuntimeClass") == []
    (runtime,) = find(chart.render(sets=["runtimeClass.create=true"]), "RuntimeClass")
    # A gVisor pod's fixed cost is accounted by default (values.yaml measures it).
    assert runtime["overhead"]["podFixed"] == {"cpu": "100m", "memory": "128Mi"}
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
    # Ready only while leading (the Service sends uploads to the leader); alive while
    # the metrics server answers.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "artifacts"}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "metrics"}
    # A read-only root needs every writable path mounted.
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    assert mounts == {"/var/lib/farm": False, "/etc/farm": True, "/tmp": False}


def controller_config(objects: list[Obj], name: str = "farm-controller") -> dict:
    (configmap,) = find(objects, "ConfigMap", name)
    return yaml.safe_load(configmap["data"]["config.yaml"])


def test_controller_config_points_builds_at_this_install(
    rendered: tuple[str, list[Obj]],
) -> None:
    """The collect phase's NetworkPolicy lets build pods reach only pods with
    controller_labels in `namespace`: those must be exactly this Deployment's pods."""
    _, objects = rendered
    (deployment,) = find(objects, "Deployment")
    (service,) = [s for s in find(objects, "Service") if "clusterIP" not in s["spec"]]
    name = deployment["metadata"]["name"]
    config = controller_config(objects, name)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert config["controller_labels"].items() <= pod_labels.items()
    assert config["controller_labels"] == deployment["spec"]["selector"]["matchLabels"]
    assert config["namespace"] == deployment["metadata"]["namespace"]
    port = {p["name"]: p for p in service["spec"]["ports"]}["artifacts"]
    # The collector gets this Service's ClusterIP and its `artifacts` port (no DNS); the
    # collect policy opens the pods' port, the one the Service's targetPort names.
    assert config["artifact_service"] == service["metadata"]["name"]
    assert config["namespace"] == service["metadata"]["namespace"]
    assert service["spec"].get("type", "ClusterIP") != "ExternalName"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    target = {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]]
    assert config["artifact_port"] == target
    # The controller may read exactly that Service, in its own namespace.
    (role,) = [
        r for r in find(objects, "Role") if r["metadata"]["name"].endswith("-artifact-service")
    ]
    assert role["metadata"]["namespace"] == config["namespace"]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["services"],
            "resourceNames": [config["artifact_service"]],
            "verbs": ["get"],
        }
    ]
    runtime = find(objects, "RuntimeClass")
    if runtime:
        assert config["runtime_class"] == runtime[0]["metadata"]["name"]


def test_default_images_are_farm_images_from_one_source(default_objects: list[Obj]) -> None:
    """By default the controller, node monitor and collector run the one farm image, and
    the chart's image names agree with ControllerConfig's (farm.images' recipe tags)."""
    (deployment,) = find(default_objects, "Deployment")
    (monitor,) = find(default_objects, "DaemonSet")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert monitor["spec"]["template"]["spec"]["containers"][0]["image"] == image
    config = controller_config(default_objects, deployment["metadata"]["name"])
    defaults = ControllerConfig()
    assert config["collector_image"] == image == defaults.collector_image
    assert config["fetch_image"] == defaults.fetch_image


def test_the_run_namespace_gets_default_deny(nondefault_objects: list[Obj]) -> None:
    policies = find(nondefault_objects, "NetworkPolicy")
    deny = [p for p in policies if p["metadata"]["name"].endswith("-build-default-deny")]
    assert [p["metadata"]["namespace"] for p in deny] == ["acme-builds"]
    for policy in deny:
        spec = policy["spec"]
        assert spec["podSelector"] == {
            "matchExpressions": [{"key": "farm.dev/build", "operator": "Exists"}]
        }
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert "ingress" not in spec and "egress" not in spec  # nothing allowed
    (controller,) = [p for p in policies if p["metadata"]["name"] == "acme-farm-controller"]
    artifacts, metrics = controller["spec"]["ingress"]
    assert artifacts["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "acme-builds"}},
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/managed-by": "farm-controller",
                    "farm.dev/phase": "build",
                }
            },
        }
    ]
    assert controller_config(nondefault_objects, "acme-farm-controller")["run_namespace"] == (
        "acme-builds"
    )
    assert artifacts["ports"] == [{"protocol": "TCP", "port": 9443}]
    assert metrics["ports"] == [{"protocol": "TCP", "port": 9100}]
    assert metrics["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }


def test_rbac_is_least_privilege(rendered: tuple[str, list[Obj]]) -> None:
    _, objects = rendered
    for role in find(objects, "ClusterRole") + find(objects, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
            # Only Build status is ever updated (everything else is created, patched or
            # deleted by name).
            if "update" in rule["verbs"]:
                assert set(rule["resources"]) <= {"builds/status", "leases"}
    grants = {
        role["metadata"]["name"]: {
            (res, verb) for r in role["rules"] for res in r["resources"] for verb in r["verbs"]
        }
        for role in find(objects, "ClusterRole")
    }
    monitor = [g for name, g in grants.items() if name.endswith("-node-monitor")]
    for g in monitor:
        assert g == {("builds/status", "patch")}
    # Nothing cluster-wide on what runs a build: those grants are Roles in the run
    # namespace (tests/k8s/packaging/test_tenancy.py checks where).
    run_kinds = {"secrets", "pods", "pods/log", "jobs", "persistentvolumeclaims"}
    run_kinds |= {"networkpolicies", "serviceaccounts"}
    for name, g in grants.items():
        assert not {res for res, _ in g} & run_kinds, name
    # Leases: create, plus get/update of the controller's one Lease only.
    (leader,) = [r for r in find(objects, "Role") if r["metadata"]["name"].endswith("-election")]
    assert leader["rules"][1]["resourceNames"] == ["farm-controller"]


def test_non_default_values_take_effect(nondefault_objects: list[Obj]) -> None:
    objects = nondefault_objects
    assert not find(objects, "CustomResourceDefinition")
    assert not find(objects, "PersistentVolumeClaim")
    (deployment,) = find(objects, "Deployment", "acme-farm-controller")
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "farm-ctl"
    (container,) = pod["containers"]
    farm_image = "registry.example.com/farm/farm@sha256:" + "1" * 64
    assert container["image"] == farm_image and container["imagePullPolicy"] == "Always"
    assert "--metrics-port=9100" in container["args"]
    config = controller_config(objects, "acme-farm-controller")
    assert config["mirrors"] == [{"cidr": "10.20.0.0/24", "ports": [443]}]
    assert config["storage_class"] == "fast"
    assert config["collector_image"] == "registry.example.com/farm/collector:0.1.0"
    assert config["fetch_image"] == "registry.example.com/farm/fetch@sha256:" + "3" * 64
    assert config["artifact_service"] == "acme-farm-controller"
    assert config["artifact_port"] == 9443
    (monitor,) = find(objects, "DaemonSet", "acme-farm-node-monitor")
    pod = monitor["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == farm_image  # one image for every component
    assert "--metrics-port=9200" in pod["containers"][0]["args"]
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {"run": "/var/run/farm-observer", "spool": "/var/lib/farm-spool"}
    (runtime,) = find(objects, "RuntimeClass")
    assert runtime["handler"] == "runsc-ptrace"
    assert runtime["scheduling"]["nodeSelector"] == {"farm.dev/gvisor": "true"}
    (dashboard,) = [
        c for c in find(objects, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    ]
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert all(o["metadata"]["labels"]["example.com/team"] == "platform" for o in objects)


def test_minimal_values_render_only_the_core() -> None:
    objects = chart.render(VALUES["minimal"])
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"RuntimeClass", "NetworkPolicy", "DaemonSet", "ServiceMonitor"}
    assert "PrometheusRule" not in kinds
    assert [c["metadata"]["name"] for c in find(objects, "ConfigMap")] == ["farm-controller"]
    assert {"CustomResourceDefinition", "Deployment", "Service"} <= kinds


def test_dashboard_configmap_carries_the_sidecar_label(default_objects: list[Obj]) -> None:
    (configmap,) = find(default_objects, "ConfigMap", "farm-dashboard")
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


def test_controller_config_is_a_valid_controller_config(rendered: tuple[str, list[Obj]]) -> None:
    """`farm controller --config` rejects unknown or bad fields at start; so does this."""
    _, objects = rendered
    (deployment,) = find(objects, "Deployment")
    config = ControllerConfig.model_validate(
        controller_config(objects, deployment["metadata"]["name"])
    )
    assert config.runtime_class in {"gvisor", "gvisor-ptrace"}


def test_every_farm_container_command_parses_with_farms_own_cli(
    rendered: tuple[str, list[Obj]],
) -> None:
    """The chart's `farm controller` and `farm node-monitor` flags are the CLI's: a flag
    renamed in farm/cli.py breaks this test, not a cluster's pods at start."""
    _, objects = rendered
    seen = []
    for obj in find(objects, "Deployment") + find(objects, "DaemonSet"):
        for container in obj["spec"]["template"]["spec"]["containers"]:
            command = [*container.get("command", []), *container.get("args", [])]
            if command[:1] == ["farm"]:
                args = cli._parser().parse_args(command[1:])  # exits on an unknown flag
                seen.append((command[1], args))
    wanted = ["controller"] + (["node-monitor"] if find(objects, "DaemonSet") else [])
    assert sorted(name for name, _ in seen) == wanted


def rules_as_grants(role: Obj) -> set[tuple[str, str, str, frozenset[str]]]:
    """A Role's rules in permissions.flatten's form."""
    return {
        (group, resource, verb, frozenset(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_rbac_grants_exactly_the_calls_farm_k8s_makes(default_objects: list[Obj]) -> None:
    """farm/k8s/permissions.py lists the API calls the controller, its leader election
    and the node monitor make; the chart grants exactly those, no more and no less."""
    roles = find(default_objects, "ClusterRole") + find(default_objects, "Role")
    expected = {
        "-controller": permissions.CONTROLLER,
        "-run-objects": permissions.RUN_OBJECTS,
        "-leader-election": permissions.LEADER_ELECTION,
        "-artifact-service": permissions.ARTIFACT_SERVICE_READ,
        "-node-monitor": permissions.NODE_MONITOR,
        "-node-monitor-pods": permissions.NODE_MONITOR_PODS,
        "-build-author": permissions.BUILD_AUTHOR,
    }
    for suffix, grants in expected.items():
        (role,) = [r for r in roles if r["metadata"]["name"].endswith(suffix)]
        assert rules_as_grants(role) == permissions.flatten(grants), suffix
    assert len(roles) == len(expected)


def test_monitoring_objects_need_prometheus_operators_api() -> None:
    """Without monitoring.coreos.com/v1, `helm install` would fail on an unknown kind."""
    kinds = {o["kind"] for o in chart.render(api_versions=())}
    assert "Deployment" in kinds
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
