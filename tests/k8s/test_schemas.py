"""Every object the controller can create, checked against the official Kubernetes
schemas of tests/k8s/versions.py (kubernetes-validate --strict, offline) and the
kubernetes 37 client's models; Build objects checked against the CRD's own schema; the
committed CRD and manifests/ (base, crd, the example Build) kept equal to what the code
generates and valid."""

from __future__ import annotations

import copy
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from farm import reprocheck
from farm.errors import SpecError
from farm.k8s import crd, kube, names, objects
from farm.k8s.config import ControllerConfig, Mirror
from farm.k8s.leader import LeaderElector
from farm.k8s.main import crd_yaml
from farm.k8s.objects import BuildRef
from farm.k8s.resource import (
    MAX_STATUS_ACTIONS,
    BuildStatus,
    ObservationStatus,
    RunStatus,
    cluster_spec,
    set_condition,
)
from tests.k8s.versions import K8S_VERSION

#: The controller Service's ClusterIP and artifacts port (farm.k8s.endpoint).
URL = "http://10.96.0.10:8443"

ROOT = Path(__file__).resolve().parents[2]
REVISION = "0123456789abcdef0123456789abcdef01234567"
SPECS = {
    "default": {"source": {"git": "https://git.test/a.git", "revision": REVISION}},
    "full": {
        "source": {"git": "https://git.test/a.git", "revision": REVISION, "subdir": "crates/app"},
        "argv": ["make", "all"],
        "env": {"RUSTFLAGS": "-C opt-level=3"},
        "outputs": ["out/**", "target/release/app"],
        "resources": {"cpus": 0.5, "memory": "1g", "pids": 256, "scratch": "64m", "disk": "1g"},
        "limits": {"max_file": "1m", "max_total": "8m", "max_files": 3, "log": 65536},
        "timeout_seconds": 60,
        "tenant": "team-b",
        "source_date_epoch": 0,
        "queue": "farm-builds",
    },
    "check": {"source": {"git": "https://git.test/a.git", "revision": REVISION}, "check": 3},
}
CONFIG = ControllerConfig(mirrors=[Mirror(cidr="10.20.0.0/24", ports=[443, 9418])])


def created_objects(spec_name: str) -> list[dict[str, Any]]:
    """Everything reconcile creates for one Build, plus its Event and the Lease."""
    ref = BuildRef("team-a", "a-rather-long-build-name-" + "x" * 60, "8d2f-11ee-uid", 3)
    spec = cluster_spec(SPECS[spec_name])
    sandbox = objects.sandbox_spec(ref, spec)
    build = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
    }
    runs = range(max(1, spec.check))
    varied = [vary(sandbox) if (vary := reprocheck.variation(k)) else sandbox for k in runs]
    return [
        objects.service_account(ref),
        objects.source_claim(ref, CONFIG),
        *(objects.token_secret(ref, "s3cret-token", k) for k in runs),
        objects.fetch_policy(ref, CONFIG),
        objects.build_policy(ref),
        *(objects.collect_policy(ref, CONFIG, k) for k in runs),
        objects.fetch_job(ref, spec, sandbox, CONFIG),
        *(
            objects.build_job(ref, spec, varied[k], CONFIG, k, "node-1", artifact_url=URL)
            for k in runs
        ),
        kube.event_body(build, "Building", "build running"),
        LeaderElector(None, "farm-system", "farm-controller", "pod-1").lease_body(),  # type: ignore[arg-type]
    ]


ALL = [(s, o) for s in SPECS for o in created_objects(s)]
IDS = [
    f"{s}-{o['kind']}-{o['metadata'].get('name', o['metadata'].get('generateName'))[-12:]}"
    for s, o in ALL
]


@pytest.mark.parametrize(("spec_name", "obj"), ALL, ids=IDS)
def test_every_created_object_is_valid_kubernetes(spec_name: str, obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    model = {"Event": "CoreV1Event"}.get(obj["kind"], f"V1{obj['kind']}")
    getattr(client, model).model_validate(obj)  # the client's models forbid unknown fields


def test_the_official_schemas_are_used_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("kubernetes-validate tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for _, obj in ALL:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    bad = copy.deepcopy(ALL[0][1])
    bad["automountServiceAccountTokens"] = False  # a typo the strict schema must catch
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def manifest_docs() -> list[tuple[str, dict]]:
    """Every Kubernetes object under manifests/. Kustomizations and overlay patches are
    not whole objects, and monitoring.coreos.com ones have no built-in schema:
    tests/k8s/packaging validates those (the kustomize renders, prometheus-operator's
    schemas)."""
    docs = []
    examples = sorted((ROOT / "examples/k8s").glob("*.yaml"))
    for path in [*sorted((ROOT / "manifests").rglob("*.yaml")), *examples]:
        if path.name == "kustomization.yaml" or "overlays" in path.parts:
            continue
        docs += [
            (str(path.relative_to(ROOT)), d)
            for d in yaml.safe_load_all(path.read_text())
            if d and not d["apiVersion"].startswith("monitoring.coreos.com/")
        ]
    return docs


@pytest.mark.parametrize(
    ("path", "doc"), manifest_docs(), ids=lambda v: v if isinstance(v, str) else v["kind"]
)
def test_every_manifest_is_valid(path: str, doc: dict) -> None:
    if doc["kind"] == names.KIND:
        jsonschema.validate(doc, build_schema())
        cluster_spec(doc["spec"])
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_committed_crd_is_the_generated_one() -> None:
    committed = (ROOT / "manifests/crd/builds.farm.dev.yaml").read_text()
    assert committed == crd_yaml(), (
        "run: farm controller --print-crd > manifests/crd/builds.farm.dev.yaml"
    )


# --- the CRD's schema ----------------------------------------------------------------------


def to_jsonschema(node: Any) -> Any:
    """OpenAPI v3.0 (Kubernetes flavour) → JSON Schema, for the jsonschema validator."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
    if out.pop("exclusiveMinimum", False) is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    return out


def build_schema() -> dict:
    return to_jsonschema(crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def structural_problems(node: dict, path: str = "") -> list[str]:
    """The structural-schema rules of apiextensions.k8s.io/v1 that farm's schema touches."""
    problems = []
    if "$ref" in node or node.get("additionalProperties") is False:
        problems.append(f"{path}: $ref or additionalProperties: false")
    if "type" not in node and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path}: no type")
    if "anyOf" in node:
        # apiextensions' isIntOrStringAnyOfPattern: exactly these two branches, nothing
        # more in either; any other anyOf is a value validation, where `type` is
        # forbidden ("must be empty to be structural").
        if not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: anyOf outside int-or-string")
        if node["anyOf"] != [{"type": "integer"}, {"type": "string"}]:
            problems.append(f"{path}: anyOf is not exactly [integer, string]: {node['anyOf']}")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: both properties and additionalProperties")
    for name, child in (node.get("properties") or {}).items():
        problems += structural_problems(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += structural_problems(node[key], f"{path}[{key}]")
    return problems


def test_the_crd_schema_is_structural_and_has_the_required_parts() -> None:
    version = crd.crd()["spec"]["versions"][0]
    assert structural_problems(version["schema"]["openAPIV3Schema"]) == []
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Reason", "Blocked", "Reproducible", "Digest", "Age"]
    # Tekton's spelling for the reason of the Succeeded condition; the digest only in -o wide.
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Succeeded")].reason'
    assert columns["Digest"]["priority"] == 1
    names = crd.crd()["spec"]["names"]
    assert (names["shortNames"], names["categories"]) == (["fbuild"], ["farm"])
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    # A list-map keyed by type, as metav1.Condition lists are in built-in kinds.
    assert status["conditions"]["x-kubernetes-list-type"] == "map"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert set(status["conditions"]["items"]["required"]) == {
        "type",
        "status",
        "reason",
        "lastTransitionTime",
    }


def build(spec: dict, status: dict | None = None) -> dict:
    doc = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "b"},
        "spec": spec,
    }
    if status is not None:
        doc["status"] = status
    return doc


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS)
def test_valid_builds_pass_the_crd_and_the_pydantic_spec(spec: dict) -> None:
    jsonschema.validate(build(spec), build_schema())
    cluster_spec(spec)


BAD = {
    "cpus not a number": {"resources": {"cpus": "lots"}},
    "cpus zero": {"resources": {"cpus": 0}},
    "memory below the floor": {"resources": {"memory": 1024}},
    "memory not a size": {"resources": {"memory": "4 gallons"}},
    "pids below 128": {"resources": {"pids": 64}},
    "empty argv": {"argv": []},
    "env value not a string": {"env": {"A": 1}},
    "timeout too long": {"timeout_seconds": 90_000},
    "missing revision": {"source": {"git": "https://git.test/a.git"}},
    "bad queue name": {"queue": "Not_A_Name"},
    "check past the maximum": {"check": reprocheck.MAX_RUNS + 1},
    "negative check": {"check": -1},
}


@pytest.mark.parametrize("change", BAD.values(), ids=BAD)
def test_type_and_bound_errors_are_rejected_by_both_the_crd_and_pydantic(change: dict) -> None:
    spec = {**SPECS["default"], **change}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(build(spec), build_schema())
    with pytest.raises(SpecError):
        cluster_spec(spec)


def test_a_full_status_validates_against_the_crd() -> None:
    action = {
        "kind": "network",
        "operation": "connect",
        "target": "10.1.2.3:443",
        "errno": "ENETUNREACH",
        "time_ns": 1,
        "pid": 8,
        "process_name": "build-script-bu",
        "executable": "/build/target/release/build/evil-0/build-script-build",
        "argv": ["build-script-build"],
        "package": "evil",
        "version": "0.3.1",
        "role": "build script",
        "family": "inet",
        "address": "10.1.2.3",
        "port": 443,
        "protocol": "tcp",
    }
    observation = ObservationStatus(
        containerID="ab" * 32, events=40, dropped=1, actions=[action], unlisted=0
    )
    status = BuildStatus(
        phase="Quarantined",
        exitTime=datetime(2026, 11, 29, tzinfo=UTC),
        observation=observation,
        provenance="2" * 64,
        exitCode=0,
        blocked=2,
        blockedByKind={"network": 2},
        reproducible=True,
        digest="sha256:" + "0" * 64,
        refused=["out/x: symlink"],
        containerIDs=["ab" * 32],
        logSha256="1" * 64,
        tornDown=True,
    )
    status.differing = ["out/app"]
    status.checkRuns["1"] = RunStatus(exitCode=0, observation=observation, blocked=2)
    set_condition(status, "Succeeded", "True", "Succeeded", "1 artifact", 3)
    doc = build(SPECS["default"], status.model_dump(mode="json", exclude_none=True))
    jsonschema.validate(doc, build_schema())
    doc["status"]["phase"] = "Exploded"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, build_schema())
    doc["status"]["phase"] = "Quarantined"
    doc["status"]["observation"]["actions"] *= MAX_STATUS_ACTIONS + 1
    with pytest.raises(jsonschema.ValidationError, match="is too long"):
        jsonschema.validate(doc, build_schema())


def test_the_crd_makes_spec_immutable_with_a_cel_rule() -> None:
    """The signed provenance names the spec in the record: the API server must refuse an
    edit of a Build's spec. Its shape here; the real API server evaluates it in
    tests/k8s/test_real_apiserver.py."""
    spec = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    [rule] = spec["x-kubernetes-validations"]
    assert rule["rule"] == "self == oldSelf" and "immutable" in rule["message"]


def test_the_generated_crd_has_no_yaml_anchors_or_aliases() -> None:
    """The schema reuses a model's nodes; the YAML must still spell each one out."""
    import yaml

    from farm.chart import CHART_CRD
    from farm.k8s.main import crd_yaml

    for text in (crd_yaml(), CHART_CRD.read_text()):
        events = list(yaml.parse(text))
        assert not [e for e in events if getattr(e, "anchor", None)]
        assert not [e for e in events if isinstance(e, yaml.AliasEvent)]
