"""The Build CRD and the controller's client paths against the REAL Kubernetes 1.36
custom-resource API server (apiextensions-apiserver and etcd, built by
``make apiserver``), behind one address with the fake serving the built-in kinds
(tests/k8s/realapi.py). Skipped only when the binaries are not built.

What the fake cannot show: whether the real server accepts the CRD (structural schema),
what its schema validation, CEL rules and pruning do to a Build, its printer columns,
and its real resourceVersions, bookmarks, 410s, conflicts and finalizer handling.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from farm.errors import ConflictError, GoneError, KubeNotFoundError, SpecError
from farm.k8s import blocked, names
from farm.k8s.resource import cluster_spec
from farm.k8s.watching import Informer
from farm.observe.spool import Observation
from tests.k8s.conftest import CRD_PATH, CRDS, NS, RUN_NS, Cluster, Routed
from tests.k8s.kubelet import (
    BUILD_CID,
    build_manifest,
    build_pod,
    finish_job,
    job,
    run_collector,
    sandbox_tree,
    wait_for,
)
from tests.k8s.realapi import RealServer
from tests.k8s.router import pruned
from tests.k8s.test_observation import evil

pytestmark = pytest.mark.k8s
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples" / "k8s").glob("*.yaml"))
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def create(routed: Routed, body: dict[str, Any]) -> tuple[int, Any]:
    return routed.real.request("POST", routed.build_path(), body)


def created(routed: Routed, name: str, **spec: Any) -> dict[str, Any]:
    code, body = create(routed, build_manifest(name, **spec))
    assert code == 201, body
    return dict(body)


# --- the CRD ---------------------------------------------------------------------------------
def test_the_generated_crd_is_established_with_its_names(real_api: RealServer) -> None:
    code, crd = real_api.request("GET", f"{CRDS}/{names.CRD_NAME}")
    assert code == 200
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    accepted = crd["status"]["acceptedNames"]
    assert accepted["shortNames"] == ["fbuild"] and accepted["categories"] == ["farm"]


def test_an_int_or_string_with_checks_inside_its_anyof_is_not_structural(
    real_api: RealServer,
) -> None:
    """The CRD as farm generated it before issue 13: ``minimum`` inside an anyOf branch.
    Same group as no other test, so a wrongly accepted copy harms nothing."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    crd["metadata"]["name"] = "builds.structural.farm.test"
    crd["spec"]["group"] = "structural.farm.test"
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    memory = spec["properties"]["resources"]["properties"]["memory"]
    memory["anyOf"] = [{"type": "integer", "minimum": 268435456}, {"type": "string"}]

    code, body = real_api.request("POST", CRDS, crd)

    assert code == 422, body
    assert (
        "properties[memory].anyOf[0].type: Forbidden: must be empty to be structural"
        in (body["message"])
    )


# --- admission by the real schema -------------------------------------------------------------
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_the_examples_are_admitted_as_written(routed: Routed, example: Path) -> None:
    build = yaml.safe_load(example.read_text())
    build["metadata"]["namespace"] = routed.namespace

    code, stored = create(routed, build)

    assert code == 201, stored
    # The CRD declares no defaults: the server stores the spec as written, and the
    # controller applies farm's own (the same model) when it reads it.
    assert stored["spec"] == build["spec"]
    assert stored["metadata"]["generation"] == 1 and stored["metadata"]["uid"]
    cluster_spec(stored["spec"])


INVALID = {
    "no source": ({"source": None}, "spec.source: Required value"),
    "memory word": (
        {"resources": {"memory": "lots"}},
        'spec.resources.memory: Invalid value: "lots": spec.resources.memory in body should '
        "match '^\\s*\\d+\\s*[kmgtKMGT]?([iI]?[bB])?\\s*$'",
    ),
    "memory too small": (
        {"resources": {"memory": 1024}},
        "spec.resources.memory: Invalid value: 1024: spec.resources.memory in body should be "
        "greater than or equal to 268435456",
    ),
    "no cpus": (
        {"resources": {"cpus": 0}},
        "spec.resources.cpus: Invalid value: 0: spec.resources.cpus in body should be greater "
        "than 0",
    ),
    "check of 11": ({"check": 11}, "spec.check: Invalid value: 11"),
    "observe mode": (
        {"observe": {"mode": "loud"}},
        'spec.observe.mode: Unsupported value: "loud": supported values: "audit", "enforce"',
    ),
    "queue name": ({"queue": "Team_A"}, 'spec.queue: Invalid value: "Team_A"'),
    "empty argv": ({"argv": []}, "spec.argv: Invalid value: 0: spec.argv in body should have "),
}


@pytest.mark.parametrize("change", INVALID.values(), ids=list(INVALID))
def test_an_invalid_build_is_refused_by_the_schema_and_by_farm(
    routed: Routed, change: tuple[dict[str, Any], str]
) -> None:
    fields, message = change
    build = build_manifest("bad")
    build["spec"].update(fields)
    build["spec"] = {k: v for k, v in build["spec"].items() if v is not None}

    code, body = create(routed, build)

    assert code == 422, body
    assert message in body["message"]
    # The controller's model refuses it too, so a Build that slips past an older CRD
    # still fails before anything is created.
    with pytest.raises(SpecError):
        cluster_spec(build["spec"])


def test_unknown_fields_are_pruned_and_status_is_ignored_on_create(routed: Routed) -> None:
    build = build_manifest("pruned", bogus={"x": 1})
    build["status"] = {"phase": "Succeeded"}

    code, stored = create(routed, build)

    assert code == 201, stored
    assert "bogus" not in stored["spec"]
    assert "status" not in stored


def test_the_spec_is_immutable_but_metadata_and_status_are_not(routed: Routed) -> None:
    build = created(routed, "fixed")
    path = routed.build_path("fixed")
    merge = {"Content-Type": "application/merge-patch+json"}

    code, body = routed.real.request("PATCH", path, {"spec": {"argv": ["true"]}}, merge)

    assert code == 422, body
    assert "spec is immutable: delete the Build and create a new one" in body["message"]
    code, body = routed.real.request("PATCH", path, {"metadata": {"labels": {"team": "a"}}}, merge)
    assert code == 200 and body["metadata"]["generation"] == 1
    updated = routed.kube.patch_build_status(routed.namespace, "fixed", {"phase": "Fetching"})
    assert updated["status"]["phase"] == "Fetching"
    assert updated["spec"] == build["spec"]


def test_a_status_write_never_changes_the_spec_and_is_validated(routed: Routed) -> None:
    created(routed, "st")
    code, body = routed.real.request(
        "PATCH",
        routed.build_path("st", "status"),
        {"status": {"phase": "Done"}, "spec": {"argv": ["evil"]}},
        {"Content-Type": "application/merge-patch+json"},
    )
    assert code == 422, body
    assert 'status.phase: Unsupported value: "Done"' in body["message"]
    found = routed.kube.replace_build_status(
        routed.kube.get_build(routed.namespace, "st"), {"phase": "Building"}
    )
    assert found["status"] == {"phase": "Building"}
    assert found["spec"]["argv"] == build_manifest("x")["spec"]["argv"]


def test_the_table_view_has_the_printer_columns(routed: Routed) -> None:
    created(routed, "tabled")
    routed.kube.patch_build_status(
        routed.namespace, "tabled", {"phase": "Succeeded", "blocked": 2, "digest": "sha256:ab"}
    )

    code, table = routed.real.request("GET", routed.build_path(), headers={"Accept": TABLE})

    assert code == 200 and table["kind"] == "Table"
    columns = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert columns == [
        ("Name", 0),
        ("Phase", 0),
        ("Reason", 0),
        ("Blocked", 0),
        ("Reproducible", 0),
        ("Digest", 1),
        ("Age", 0),
    ]
    [row] = table["rows"]
    assert row["cells"][:6] == ["tabled", "Succeeded", None, 2, None, "sha256:ab"]


# --- farm/k8s/kube.py against the real server -------------------------------------------------
def test_guarded_writes_conflict_on_a_stale_resource_version(routed: Routed) -> None:
    kube, ns = routed.kube, routed.namespace
    created(routed, "guarded")
    stale = kube.get_build(ns, "guarded")
    fresh = kube.patch_build_metadata(stale, {"finalizers": [names.FINALIZER]})
    assert int(fresh["metadata"]["resourceVersion"]) > int(stale["metadata"]["resourceVersion"])

    with pytest.raises(ConflictError) as meta:
        kube.patch_build_metadata(stale, {"labels": {"a": "b"}})
    with pytest.raises(ConflictError) as status:
        kube.replace_build_status(stale, {"phase": "Fetching"})

    assert meta.value.status == status.value.status == 409
    assert kube.replace_build_status(fresh, {"phase": "Fetching"})["status"]["phase"] == "Fetching"


def test_a_finalizer_holds_a_deleted_build_until_it_is_removed(routed: Routed) -> None:
    kube, ns = routed.kube, routed.namespace
    created(routed, "held")
    kube.patch_build_metadata(kube.get_build(ns, "held"), {"finalizers": [names.FINALIZER]})

    code, body = routed.real.request("DELETE", routed.build_path("held"))

    assert code == 200, body
    held = kube.get_build(ns, "held")
    assert held["metadata"]["deletionTimestamp"]
    # A deleting object takes no new finalizers, but its status can still be written.
    assert kube.patch_build_status(ns, "held", {"tornDown": True})["status"]["tornDown"]
    kube.patch_build_metadata(kube.get_build(ns, "held"), {"finalizers": None})
    with pytest.raises(KubeNotFoundError):
        kube.get_build(ns, "held")


def informer(routed: Routed, seen: list[dict[str, Any]], timeout: int = 5) -> Informer:
    list_raw = functools.partial(
        routed.kube.custom.list_namespaced_custom_object,
        names.GROUP,
        names.VERSION,
        routed.namespace,
        names.PLURAL,
    )
    return Informer(list_raw, seen.append, watch_timeout=timeout, retry_delay=0.1)


def test_the_informer_lists_and_watches_with_real_resource_versions(routed: Routed) -> None:
    created(routed, "one")
    seen: list[dict[str, Any]] = []
    builds = informer(routed, seen).start("builds")
    try:
        wait_for(lambda: builds.synced.is_set(), "the first list")
        listed = int(builds.resource_version or 0)
        created(routed, "two")
        routed.kube.patch_build_status(routed.namespace, "two", {"phase": "Fetching"})
        routed.real.request("DELETE", routed.build_path("one"))
        wait_for(lambda: set(builds.cache) == {f"{routed.namespace}/two"}, "watch events")
        wait_for(
            lambda: builds.cache[f"{routed.namespace}/two"].get("status", {}).get("phase"),
            "the status change",
        )
        assert int(builds.resource_version or 0) > listed
        assert builds.relists == 1
    finally:
        builds.stop()


def test_a_bookmark_moves_the_informer_past_changes_it_does_not_watch(routed: Routed) -> None:
    """The watch cache sends a BOOKMARK (about 2 s before a watch's timeout) with the
    newest resourceVersion it has processed, even when no event matched this watch: a
    Build created in another namespace moves this namespace's informer forward without
    any change reaching its handler, so its next watch starts from a recent version."""
    created(routed, "here")
    seen: list[dict[str, Any]] = []
    builds = informer(routed, seen, timeout=4).start("builds")
    try:
        wait_for(lambda: builds.synced.is_set() and seen, "the first list")
        elsewhere = build_manifest("elsewhere")
        other = f"{routed.namespace}-other"
        path = f"/apis/{names.API_VERSION}/namespaces/{other}/{names.PLURAL}"
        code, far = routed.real.request("POST", path, elsewhere)
        assert code == 201, far
        try:
            target = int(far["metadata"]["resourceVersion"])
            wait_for(lambda: int(builds.resource_version or 0) >= target, "a bookmark")
            assert [o["metadata"]["name"] for o in seen] == ["here"]
        finally:
            routed.real.request("DELETE", f"{path}/elsewhere")
    finally:
        builds.stop()


def test_a_watch_from_before_an_etcd_compaction_is_gone_and_the_informer_relists(
    routed_uncached: Routed, real_etcd: Any
) -> None:
    routed = routed_uncached
    created(routed, "early")
    seen: list[dict[str, Any]] = []
    builds = informer(routed, seen)
    builds.relist()
    created(routed, "late")
    created(routed, "later")  # etcd keeps the compaction revision itself: go past it
    real_etcd.compact()

    with pytest.raises(GoneError) as gone:
        builds.watch_once()

    assert gone.value.status == 410
    builds.start("builds")
    try:
        wait_for(lambda: builds.relists == 2, "a re-list after 410")
        assert set(builds.cache) == {f"{routed.namespace}/{n}" for n in ("early", "late", "later")}
    finally:
        builds.stop()


def test_concurrent_status_writers_one_wins_the_other_conflicts(routed: Routed) -> None:
    created(routed, "raced")
    read = routed.kube.get_build(routed.namespace, "raced")
    results: list[str] = []

    def write(phase: str) -> None:
        try:
            routed.kube.replace_build_status(copy.deepcopy(read), {"phase": phase})
            results.append("ok")
        except ConflictError:
            results.append("conflict")

    threads = [threading.Thread(target=write, args=(p,)) for p in ("Fetching", "Failed")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["conflict", "ok"]


# --- kubectl through the router ---------------------------------------------------------------
def test_kubectl_get_builds_prints_the_columns(routed: Routed, tmp_path: Path) -> None:
    kubectl = REPO / ".tools" / "bin" / "kubectl"
    if not kubectl.exists():
        pytest.skip("kubectl is not installed: run `make tools`")
    created(routed, "shown")
    routed.kube.patch_build_status(routed.namespace, "shown", {"phase": "Building"})
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "KUBECONFIG": "/dev/null"}
    argv = [str(kubectl), f"--server={routed.router.url}", f"--cache-dir={tmp_path}/cache"]

    out = subprocess.run(
        [*argv, "get", "builds", "-n", routed.namespace],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "REASON", "BLOCKED", "REPRODUCIBLE", "AGE"]
    assert row.split()[:2] == ["shown", "Building"]
    wide = subprocess.run(
        [*argv, "get", "fbuild", "-o", "wide", "-n", routed.namespace],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert wide.returncode == 0, wide.stderr
    assert "DIGEST" in wide.stdout.splitlines()[0]


# --- the whole controller, its Builds in the real server ------------------------------------
@contextlib.contextmanager
def controlled(
    routed: Routed, tmp_path: Path, observations: dict[str, Observation] | None = None
) -> Iterator[Cluster]:
    """A controller and node-1's monitor on the routed cluster, stopped afterwards."""
    cluster = Cluster(routed.api, routed.fake, routed.kube, tmp_path)
    try:
        cluster.controller("a")
        cluster.monitor(observations)
        yield cluster
    finally:
        for _, stop, thread, artifacts in cluster.controllers:
            stop.set()
            thread.join(30)
            artifacts.stop()
        for stop, thread in cluster.monitors:
            stop.set()
            thread.join(30)


def assert_nothing_pruned(routed: Routed) -> None:
    """Every field farm wrote through the router survived: the real server prunes what
    its schema does not declare, silently, so a status field missing from the CRD
    would be lost on a real cluster while the fake kept it."""
    lost = [
        f"{method} {path}: {field}"
        for method, path, sent, stored in routed.router.real_writes
        for part in ("spec", "status")  # metadata is the server's to manage
        for field in pruned(sent.get(part), stored.get(part), f".{part}")
    ]
    assert lost == []


def phase(routed: Routed, name: str, want: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = routed.kube.get_build(routed.namespace, name)
        return found if found.get("status", {}).get("phase") == want else None

    return wait_for(reached, f"Build {name} to reach {want}")


def run_through_collection(routed: Routed, tmp_path: Path, name: str) -> dict[str, Any]:
    """Create the Build in the real server; play fetch, build (exit 0) and collection."""
    build = created(routed, name)
    fetching = phase(routed, name, "Fetching")
    assert names.FINALIZER in fetching["metadata"]["finalizers"]
    finish_job(routed.api, RUN_NS, job(routed.api, RUN_NS, build, "fetch"))
    build_job = job(routed.api, RUN_NS, build, "build")
    phase(routed, name, "Building")
    build_pod(routed.api, RUN_NS, build_job, exit_code=0, log=b"Compiling hello\n")
    phase(routed, name, "Collecting")
    root = sandbox_tree(tmp_path / name, {"hello": b"\x7fELF"})
    assert run_collector(routed.api, RUN_NS, build, root) == 0
    return build


def test_the_controller_runs_a_real_build_object_to_succeeded_and_releases_it(
    routed: Routed, tmp_path: Path
) -> None:
    """The reconcile loop end to end with the Build stored by the real server: its
    finalizer, every status write (each a guarded PUT that must carry the current
    resourceVersion), the node monitor's status merge patch, and the finalizer's
    removal after teardown when the Build is deleted. Jobs, pods and the rest live in
    the fake, driven by the test as kubelet."""
    ns = routed.namespace
    with controlled(routed, tmp_path):
        run_through_collection(routed, tmp_path, "hello")
        done = phase(routed, "hello", "Succeeded")
        assert done["status"]["digest"].startswith("sha256:")
        assert done["status"]["observation"]["complete"] is True
        wait_for(lambda: routed.kube.get_build(ns, "hello")["status"].get("tornDown"), "teardown")

        code, _ = routed.real.request("DELETE", routed.build_path("hello"))
        assert code == 200

        def released() -> bool:
            try:
                routed.kube.get_build(ns, "hello")
            except KubeNotFoundError:
                return True
            return False

        wait_for(released, "the finalizer's removal")
    assert len(routed.router.real_writes) > 5
    assert_nothing_pruned(routed)


def test_a_blocked_action_quarantines_with_its_record_in_the_real_status(
    routed: Routed, tmp_path: Path
) -> None:
    """The node monitor's classified record (actions with package, role, address) and
    the Quarantined status pass the real server's schema: a field the CRD lacked or
    typed differently would be refused (422) or pruned here."""
    with controlled(routed, tmp_path, {BUILD_CID: evil()}) as cluster:
        run_through_collection(routed, tmp_path, "tainted")
        done = phase(routed, "tainted", "Quarantined")
        store = cluster.controllers[0][0].reconciler.store
    status = done["status"]
    # The monitor's listing passed the real schema on its way in (its patch was
    # admitted); the controller then moved it to its store: the status keeps the
    # digest and counts, which the real schema keeps too.
    seen = status["observation"]
    assert seen["actions"] == [] and seen["listed"] == 1
    [action] = blocked.read(store, seen["actionsSha256"])
    assert (action.package, action.kind, action.target) == ("evil", "network", "10.1.2.3:443")
    assert (action.address, action.port, action.role) == ("10.1.2.3", 443, "build script")
    assert status["blocked"] == 1 and status["blockedByKind"] == {"network": 1}
    assert status["blockedBySeverity"] == {"normal": 1}
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Succeeded"] == "Quarantined"
    assert_nothing_pruned(routed)
    # The printer column Blocked still reads the count.
    code, table = routed.real.request("GET", routed.build_path(), headers={"Accept": TABLE})
    assert code == 200
    [row] = [r for r in table["rows"] if r["cells"][0] == "tainted"]
    assert row["cells"][1:4] == ["Quarantined", "Quarantined", 1]


def test_a_field_the_crd_lacks_is_pruned_and_the_check_sees_it(routed: Routed) -> None:
    created(routed, "lossy")
    routed.kube.patch_build_status(routed.namespace, "lossy", {"phase": "Fetching", "bogus": 1})
    [(_, _, sent, stored)] = routed.router.real_writes
    assert pruned(sent, stored) == [".status.bogus"]


# --- the fake keeps up: the same requests against both ----------------------------------------
def _http(base: str, method: str, path: str, body: Any, content: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        base + path, json.dumps(body).encode(), {"Content-Type": content}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(params=["real", "fake"])
def either(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(base URL, Builds path) of the router to the real server, or of the fake alone."""
    if request.param == "real":
        routed: Routed = request.getfixturevalue("routed")
        api, found = routed.api, (routed.router.url, routed.build_path())
    else:
        cluster: Cluster = request.getfixturevalue("cluster")
        path = f"/apis/{names.API_VERSION}/namespaces/{NS}/{names.PLURAL}"
        api, found = cluster.api, (cluster.server.url, path)
    yield found
    api.rbac_calls.clear()  # the test's own requests, not the controller's


def test_both_ignore_status_on_create_and_refuse_a_spec_change(either: tuple[str, str]) -> None:
    """Found against the real server, then taught to the fake: a Build's status is
    written only through /status, and its spec never changes after create."""
    base, path = either
    build = build_manifest("same")
    build["status"] = {"phase": "Succeeded"}

    code, stored = _http(base, "POST", path, build, "application/json")

    assert code == 201, stored
    assert "status" not in stored
    change = {"spec": {"argv": ["true"]}}
    code, refused = _http(base, "PATCH", f"{path}/same", change, "application/merge-patch+json")
    assert code == 422, refused
    assert "spec is immutable: delete the Build and create a new one" in refused["message"]


def test_the_fake_sends_a_bookmark_as_the_watch_cache_does(cluster: Cluster) -> None:
    """The real server's bookmark (test above), taught to the fake: a Build created in
    another namespace moves this namespace's informer forward, no event reaching it."""
    cluster.api.create("builds", NS, build_manifest("here"))
    seen: list[dict[str, Any]] = []
    list_raw = functools.partial(
        cluster.kube.custom.list_namespaced_custom_object,
        names.GROUP,
        names.VERSION,
        NS,
        names.PLURAL,
    )
    builds = Informer(list_raw, seen.append, watch_timeout=2, retry_delay=0.1).start("builds")
    try:
        wait_for(lambda: builds.synced.is_set() and seen, "the first list")
        far = cluster.api.create("builds", f"{NS}-other", build_manifest("elsewhere"))
        target = int(far["metadata"]["resourceVersion"])
        wait_for(lambda: int(builds.resource_version or 0) >= target, "a bookmark")
        assert [o["metadata"]["name"] for o in seen] == ["here"]
    finally:
        builds.stop()
