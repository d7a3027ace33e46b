"""The chart keeps tenants away from what runs their builds: the controller's artifact
port admits only build pods of the run namespace (a tenant's pod with the same labels
does not match), and the controller's grants on Jobs, pods, Secrets, volumes and policies
are a Role in the run namespace, never cluster-wide (docs/kubernetes.md, "Where a Build's
objects live")."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from farm import chart
from farm.k8s import objects
from farm.k8s.config import ControllerConfig
from farm.k8s.objects import BuildRef
from farm.k8s.resource import cluster_spec
from tests.k8s.packaging.chartlib import VALUES, Obj, find

pytestmark = pytest.mark.k8s

RUN_OBJECTS = {
    "jobs",
    "pods",
    "pods/log",
    "secrets",
    "serviceaccounts",
    "persistentvolumeclaims",
    "networkpolicies",
}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels and matchExpressions) against ``labels``;
    ``{}`` selects everything, as the API server reads it."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for term in selector.get("matchExpressions") or []:
        key, op, values = term["key"], term["operator"], term.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def admitted(policy: Obj, port: int, pod: dict[str, str], namespace: dict[str, str]) -> bool:
    """Whether ``policy``'s ingress lets a pod with labels ``pod``, in a namespace with
    labels ``namespace``, reach ``port`` (NetworkPolicy peer semantics: a peer with both
    selectors needs both to match; without namespaceSelector, the policy's namespace)."""
    own = policy["metadata"]["namespace"]
    for rule in policy["spec"].get("ingress") or []:
        if rule.get("ports") and port not in [p["port"] for p in rule["ports"]]:
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            if "ipBlock" in peer:
                continue
            if "namespaceSelector" in peer:
                in_ns = selects(peer["namespaceSelector"], namespace)
            else:
                in_ns = namespace.get("kubernetes.io/metadata.name") == own
            if in_ns and selects(peer.get("podSelector") or {}, pod):
                return True
    return False


def build_pod_labels(run_namespace: str) -> dict[str, str]:
    """A real build pod's labels, as the controller makes its Job's pod template."""
    ref = BuildRef("team-a", "app", "uid-1", run_namespace=run_namespace)
    spec = cluster_spec({"source": {"git": "https://git.test/a.git", "revision": "a" * 40}})
    sandbox = objects.sandbox_spec(ref, spec)
    job = objects.build_job(
        ref, spec, sandbox, ControllerConfig(), artifact_url="http://10.96.0.10:8443"
    )
    return dict(job["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("values", ["default", "nondefault"])
def test_the_artifact_port_admits_build_pods_of_the_run_namespace_only(values: str) -> None:
    rendered = chart.render(VALUES[values])
    config = ControllerConfig.model_validate(
        yaml.safe_load(find(rendered, "ConfigMap")[0]["data"]["config.yaml"])
    )
    (policy,) = [
        p for p in find(rendered, "NetworkPolicy") if p["metadata"]["namespace"] == config.namespace
    ]
    port, labels = config.artifact_port, build_pod_labels(config.run_namespace)

    def ns(name: str, **extra: str) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": name, **extra}

    assert admitted(policy, port, labels, ns(config.run_namespace))
    # The same labels in a tenant's namespace (even one labelled like the run
    # namespace's Pod Security), or in the controller's own: not admitted.
    tenant = ns("team-a", **{"pod-security.kubernetes.io/enforce": "restricted"})
    for where in (tenant, ns("default"), ns(config.namespace)):
        assert not admitted(policy, port, labels, where), where
    # In the run namespace, only build pods: not an unlabelled pod.
    assert not admitted(policy, port, {"app": "x"}, ns(config.run_namespace))


def test_the_evaluator_is_live() -> None:
    """The old policy (any namespace, label farm.dev/phase=build) admitted a tenant's pod:
    the evaluator above says so, so its 'not admitted' means something."""
    old = {
        "metadata": {"namespace": "farm-system"},
        "spec": {
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {},
                            "podSelector": {"matchLabels": {"farm.dev/phase": "build"}},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": 8443}],
                }
            ]
        },
    }
    labels = build_pod_labels("farm-builds")
    assert admitted(old, 8443, labels, {"kubernetes.io/metadata.name": "team-a"})


@pytest.mark.parametrize("values", ["default", "nondefault", "minimal"])
def test_no_cluster_wide_grant_on_what_runs_a_build(values: str) -> None:
    """Secrets, pods, Jobs, volumes, policies and accounts: a Role in the run namespace,
    bound to the controller (or the node monitor: pods, list) and nothing else."""
    rendered = chart.render(VALUES[values])
    run_ns = next(
        r["metadata"]["namespace"]
        for r in find(rendered, "Role")
        if r["metadata"]["name"].endswith("-run-objects")
    )
    assert run_ns == ("acme-builds" if values == "nondefault" else "farm-builds")
    for role in find(rendered, "ClusterRole"):
        resources = {res for rule in role["rules"] for res in rule["resources"]}
        assert not resources & RUN_OBJECTS, role["metadata"]["name"]
    for role in find(rendered, "Role"):
        resources = {res for rule in role["rules"] for res in rule["resources"]}
        if resources & RUN_OBJECTS:
            assert role["metadata"]["namespace"] == run_ns, role["metadata"]["name"]
    bindings = {b["metadata"]["name"]: b for b in find(rendered, "RoleBinding")}
    for name, binding in bindings.items():
        if binding["metadata"]["namespace"] == run_ns:
            assert binding["roleRef"]["kind"] == "Role", name  # no ClusterRole bound there
            assert [s["kind"] for s in binding["subjects"]] == ["ServiceAccount"], name


def test_teams_get_a_build_author_role_not_edit() -> None:
    """Builds only: no pods, Secrets or volumes, in any namespace it is bound in; and
    aggregated into admin and edit, so those manage Builds as well."""
    (author,) = find(chart.render(), "ClusterRole", "farm-build-author")
    assert author["rules"] == [
        {
            "apiGroups": ["farm.dev"],
            "resources": ["builds"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        },
        {"apiGroups": ["farm.dev"], "resources": ["builds/status"], "verbs": ["get"]},
    ]
    labels = author["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
