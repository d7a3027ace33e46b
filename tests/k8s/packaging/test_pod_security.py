"""Pod Security: only the node monitor needs `privileged`, and it gets a namespace of its
own, so the release namespace and every build namespace can enforce `restricted`.

The checks are the `restricted` profile's, from the Pod Security Standards
(k8s.io/pod-security-admission/policy: hostPath and host namespaces are `baseline`,
the rest `restricted`), applied to every pod template the chart renders and to the
fetch and build Jobs the controller creates.
"""

from __future__ import annotations

from typing import Any

import pytest

from farm import chart
from farm.k8s import objects
from farm.k8s.config import ControllerConfig
from farm.k8s.objects import BuildRef
from farm.k8s.resource import cluster_spec
from tests.k8s.packaging.chartlib import Obj, find

pytestmark = pytest.mark.k8s

PRIVILEGED = "pod-security.kubernetes.io/enforce"
_SECCOMP = {"RuntimeDefault", "Localhost"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in ``pod`` (a PodSpec) the `restricted` profile forbids."""
    bad = [f"host namespace {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    bad += [f"hostPath volume {v['name']}" for v in pod.get("volumes", []) if "hostPath" in v]
    pod_ctx = pod.get("securityContext", {})
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        ctx = {**pod_ctx, **c.get("securityContext", {})}
        name = c["name"]
        if ctx.get("privileged"):
            bad.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation not false")
        if ctx.get("runAsNonRoot") is not True or ctx.get("runAsUser") == 0:
            bad.append(f"{name}: may run as root")
        if ctx.get("seccompProfile", {}).get("type") not in _SECCOMP:
            bad.append(f"{name}: no RuntimeDefault seccomp profile")
        caps = c.get("securityContext", {}).get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: capabilities not dropped")
    return bad


def _pods(objects_: list[Obj]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (o["metadata"]["namespace"], o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in objects_
        if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job")
    ]


def test_only_the_node_monitor_needs_privileged_and_it_has_its_own_namespace() -> None:
    rendered = chart.render()
    namespaces = {
        n["metadata"]["name"]: n["metadata"]["labels"] for n in find(rendered, "Namespace")
    }
    # The run namespace, where every build and fetch pod runs, enforces `restricted`.
    assert namespaces.pop(ControllerConfig().run_namespace)[PRIVILEGED] == "restricted"
    (ns,) = [n for n in find(rendered, "Namespace") if n["metadata"]["name"] in namespaces]
    assert ns["metadata"]["labels"][PRIVILEGED] == "privileged"
    monitor_ns = ns["metadata"]["name"]
    assert monitor_ns != chart.NAMESPACE
    pods = _pods(rendered)
    assert {name for space, name, _ in pods if space == monitor_ns} == {"farm-node-monitor"}
    (monitor,) = [pod for space, _, pod in pods if space == monitor_ns]
    assert restricted_violations(monitor), "the check itself must see the monitor's hostPath"
    for space, name, pod in pods:
        if space != monitor_ns:
            assert restricted_violations(pod) == [], name
    # Its ServiceAccount, RBAC subject and metrics Service follow it there.
    (account,) = find(rendered, "ServiceAccount", "farm-node-monitor")
    assert account["metadata"]["namespace"] == monitor_ns
    (binding,) = find(rendered, "ClusterRoleBinding", "farm-node-monitor")
    assert binding["subjects"][0]["namespace"] == monitor_ns
    (service,) = find(rendered, "Service", "farm-node-monitor")
    assert service["metadata"]["namespace"] == monitor_ns
    (monitor_cfg,) = find(rendered, "ServiceMonitor")
    assert set(monitor_cfg["spec"]["namespaceSelector"]["matchNames"]) == {
        chart.NAMESPACE,
        monitor_ns,
    }


def test_an_existing_namespace_can_be_named_instead() -> None:
    rendered = chart.render(
        sets=["nodeMonitor.namespace.create=false", "runNamespace.create=false"]
    )
    assert find(rendered, "Namespace") == []
    (monitor,) = find(rendered, "DaemonSet")
    assert monitor["metadata"]["namespace"] == "farm-node-monitor"


def test_the_pods_the_controller_creates_pass_restricted() -> None:
    ref = BuildRef("team-a", "app", "uid-1")
    spec = cluster_spec({"source": {"git": "https://git.test/a.git", "revision": "a" * 40}})
    sandbox = objects.sandbox_spec(ref, spec)
    config = ControllerConfig()
    jobs = [
        objects.fetch_job(ref, spec, sandbox, config),
        objects.build_job(ref, spec, sandbox, config, artifact_url="http://10.96.0.10:8443"),
    ]
    for job in jobs:
        assert restricted_violations(job["spec"]["template"]["spec"]) == [], job["metadata"]
