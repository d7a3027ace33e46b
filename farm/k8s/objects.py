"""Build the Kubernetes objects of one Build from its SandboxSpec, as plain dicts.

Callers: ``farm.k8s.reconcile`` creates these; tests validate every one against the
official Kubernetes schemas. Pure functions, no API calls. The SandboxSpec (from
``farm.policy.sandbox_for``, the same policy as local builds) is *translated*: its
env, workdir, uid, limits, deadline and mounts become pod fields; nothing is relaxed.
Mounts are matched by their sandbox path, since a cluster has no host directories.

Per Build: a permissionless ServiceAccount, a sources PVC, a collector-token Secret,
a fetch Job (git, then ``farm fetch``: farm's own code, no cargo) and NetworkPolicy
(egress to mirrors only), and a build Job whose pod runs the untrusted build as an init
container under gVisor with a deny-all NetworkPolicy, then a trusted collector container
(see docs/kubernetes.md, "Artifacts").

All of them go in the controller's run namespace (``BuildRef.run_namespace``), never in
the Build's own: whoever may edit the Build's namespace could otherwise mount the
sources volume, read or plant the token Secret, or pass a pod of theirs off as the build
pod (docs/kubernetes.md, "Where a Build's objects live"). They carry no ownerReference
to the Build (one across namespaces is invalid, and the garbage collector would delete
the object at once); annotations name the Build, and the uid label finds them.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm import ecosystems, policy
from farm.errors import InfrastructureError
from farm.k8s import names
from farm.k8s.config import ClusterRegistry, ControllerConfig
from farm.k8s.resource import ClusterBuildSpec
from farm.sandbox import SandboxSpec
from farm.settings import Settings

SRC_VOLUME, TARGET_VOLUME, OUT_VOLUME, TMP_VOLUME = "src", "target", "out", "tmp"
TOKEN_VOLUME, COLLECTOR_TMP_VOLUME = "collector-token", "collector-tmp"
TOKEN_DIR = "/var/run/farm/collector"
#: The collector's own /tmp, and its whole ephemeral-storage (that /tmp and its logs).
COLLECTOR_TMP_SIZE, COLLECTOR_STORAGE = 64 << 20, 128 << 20
VENDOR_DIR = "/vendor"
#: Where the build container sees the fetch phase's source replacement (vendored crates).
#: Not $CARGO_HOME/config.toml: cargo ranks a config in an ancestor of the cwd above
#: that one, and farm's builder images configure Debian's registry in /.cargo (for local
#: builds), which would silently win over /vendor (tests/e2e/test_k8s_phases.py). This
#: mount replaces the image's file instead.
VENDOR_CONFIG = "/.cargo/config.toml"
#: Mount point of the sources PVC in the fetch pod; the build sees parts of it.
WORK_DIR = "/work"
#: The PVC's directory of ``farm fetch``'s result: ``vendor/`` and ``cargo-config.toml``
#: (farm.ecosystems.cargo.vendor), which the build container mounts by subPath.
DEPS_DIR = "deps"
#: Where the fetch container sees the chosen registry's token (a Secret in the run
#: namespace, read-only; the controller config's ``registries[].token_secret``).
REGISTRY_TOKEN_DIR = "/var/run/farm/registry"
REGISTRY_TOKEN_VOLUME = "registry-token"
#: The fetch pod's first step (init container ``checkout``): the sources at exactly the
#: Build's commit, into a new repository (no config, hooks or attributes of the tenant's
#: tree exist before the checkout, and git runs nothing of the tree's after it).
CHECKOUT_SCRIPT = r"""set -eu
git init -q /work/repo
cd /work/repo
git fetch -q --depth 1 "$FARM_GIT_URL" "$FARM_GIT_REVISION"
git -c advice.detachedHead=false -c core.hooksPath=/dev/null checkout -q FETCH_HEAD
test "$(git rev-parse HEAD)" = "$FARM_GIT_REVISION"
"""


@dataclass(frozen=True)
class BuildRef:
    """The identity of one Build object; every name below derives from it.
    ``namespace`` is the Build's; ``run_namespace`` is where its objects are created
    (the controller's ``ControllerConfig.run_namespace``)."""

    namespace: str
    name: str
    uid: str
    generation: int = 1
    run_namespace: str = names.RUN_NAMESPACE

    def object_name(self, role: str) -> str:
        return names.object_name(self.name, self.uid, role)

    def labels(self, phase: str | None = None) -> dict[str, str]:
        return names.labels(self.name, self.uid, phase)

    def annotations(self) -> dict[str, str]:
        """Which Build an object is for: the controller and the node monitor read the
        Build's namespace from here, never from the object's own namespace."""
        return {
            names.BUILD_NAME_ANNOTATION: self.name,
            names.BUILD_NAMESPACE_ANNOTATION: self.namespace,
        }

    def meta(self, role: str, phase: str | None = None) -> dict[str, Any]:
        return {
            "name": self.object_name(role),
            "namespace": self.run_namespace,
            "labels": self.labels(phase),
            "annotations": self.annotations(),
        }

    def upload_key(self, run: int = 0) -> str:
        """The artifact endpoint's key of run ``run``'s upload (``ns/name/uid``, the uid
        suffixed for a check run): each run uploads with its own token."""
        uid = self.uid if run == 0 else f"{self.uid}-run{run}"
        return f"{self.namespace}/{self.name}/{uid}"

    def run_labels(self, run: int) -> dict[str, str]:
        """Labels of run ``run``'s build pod; its collect policy selects exactly these."""
        return {**self.labels("build"), names.RUN_LABEL: str(run)}


def sandbox_spec(ref: BuildRef, spec: ClusterBuildSpec) -> SandboxSpec:
    """The same policy as a local build (``farm.policy.sandbox_for``). A Build without
    ``argv`` gets the default ecosystem's (its tree is cloned in the pod, where the
    controller cannot look; farm.ecosystems.default); the cluster has no host dirs, so
    the BuildDirs are placeholders that ``build_job`` maps by sandbox path."""
    argv = spec.argv or ecosystems.default().default_argv()
    filled = spec.model_copy(update={"argv": argv})
    root = Path("/nonexistent")
    build_id = names.object_name(ref.name, ref.uid, "build")
    return policy.sandbox_for(filled, build_id, policy.BuildDirs(root), Settings(home=root))


def service_account(ref: BuildRef) -> dict[str, Any]:
    """A ServiceAccount with no RoleBinding and no token mounted: build pods hold no
    credential, and are not the namespace's default account (which may have some)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": ref.meta("sandbox"),
        "automountServiceAccountToken": False,
    }


def source_claim(ref: BuildRef, config: ControllerConfig) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": config.source_size}},
    }
    if config.storage_class:
        spec["storageClassName"] = config.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": ref.meta("src"),
        "spec": spec,
    }


def token_secret(ref: BuildRef, token: str, run: int = 0) -> dict[str, Any]:
    """The collector's per-run upload token; mounted only into the collector container."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": ref.meta(names.run_role("collector", run)),
        "type": "Opaque",
        "immutable": True,
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


def _policy(
    ref: BuildRef,
    role: str,
    phase: str,
    egress: list[dict[str, Any]],
    selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": ref.meta(role, phase),
        "spec": {
            "podSelector": {"matchLabels": selector or ref.labels(phase)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }


def fetch_policy(ref: BuildRef, config: ControllerConfig) -> dict[str, Any]:
    """Fetch pods may reach cluster DNS and the configured mirrors, nothing else."""
    dns = {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    mirrors = [
        {
            "to": [{"ipBlock": {"cidr": m.cidr}}],
            "ports": [{"protocol": "TCP", "port": p} for p in m.ports],
        }
        for m in config.mirrors
    ]
    return _policy(ref, "fetch", "fetch", [dns, *mirrors])


def build_policy(ref: BuildRef) -> dict[str, Any]:
    """Deny all ingress and egress for the build pod (empty rule lists)."""
    return _policy(ref, "build", "build", [])


def collect_policy(ref: BuildRef, config: ControllerConfig, run: int = 0) -> dict[str, Any]:
    """Created only once run ``run``'s build container has terminated: lets that pod (now
    running just the trusted collector) reach the controller's artifact port. It selects
    that run's pod only: another run's build may still be running untrusted code.
    Nothing else, not even DNS: the collector is given the Service's ClusterIP
    (farm.k8s.endpoint), and the policy is evaluated after kube-proxy's DNAT of it to a
    controller pod, so the controller pods' port is the one rule needed."""
    peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": config.namespace}},
        "podSelector": {"matchLabels": dict(config.controller_labels)},
    }
    rule = {"to": [peer], "ports": [{"protocol": "TCP", "port": config.artifact_port}]}
    role = names.run_role("collect", run)
    return _policy(ref, role, "build", [rule], ref.run_labels(run))


def _pod_security(uid: int, gid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security(uid: int | None = None) -> dict[str, Any]:
    sec: dict[str, Any] = {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if uid is not None:
        sec["runAsUser"] = uid
    return sec


def _ids(sandbox: SandboxSpec) -> tuple[int, int]:
    uid, _, gid = sandbox.user.partition(":")
    return int(uid), int(gid or uid)


def _job(
    ref: BuildRef,
    role: str,
    pod: dict[str, Any],
    deadline: int,
    config: ControllerConfig,
    queue: str | None,
    template: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Job named for ``role``; ``template`` is the pod's metadata when it is not just
    the phase's labels (a build run's)."""
    meta = ref.meta(role, role)
    pod_meta = template or {"labels": ref.labels(role), "annotations": ref.annotations()}
    meta["labels"] = {**meta["labels"], **pod_meta["labels"]}
    if queue:
        meta["labels"][names.KUEUE_QUEUE_LABEL] = queue
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 0,
            # A pod evicted, preempted or drained (DisruptionTarget) did not fail: the
            # Job makes a fresh pod, a fresh sandbox, instead of failing the Build. Any
            # other pod failure still ends the Job at once (backoffLimit 0).
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
            },
            "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": config.ttl_seconds_after_finished,
            # Kueue admits a suspended Job by unsuspending it; without Kueue it runs now.
            "suspend": bool(queue),
            "template": {"metadata": pod_meta, "spec": pod},
        },
    }


def _pod_base(ref: BuildRef, config: ControllerConfig, uid: int, gid: int) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "runtimeClassName": config.runtime_class,
        "serviceAccountName": ref.object_name("sandbox"),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(uid, gid),
    }


def fetch_job(
    ref: BuildRef, spec: ClusterBuildSpec, sandbox: SandboxSpec, config: ControllerConfig
) -> dict[str, Any]:
    """Farm's own code only: git checks out the commit (init container ``checkout``),
    then ``farm fetch`` (container ``fetch``) vendors Cargo.lock's packages from the
    operator's registry into the sources PVC. No cargo runs here: it would read the
    tenant's ``.cargo/config.toml`` (source replacement, registries, credential
    providers, runners) in a pod that has network (docs/kubernetes.md, "Fetch Job").
    Raises SpecError if ``spec.registry`` is not one of the config's registries."""
    uid, gid = _ids(sandbox)
    registry = config.registry_for(spec.registry)
    fetch = _fetch_container(spec, config, registry)
    volumes: list[dict[str, Any]] = [
        {"name": SRC_VOLUME, "persistentVolumeClaim": {"claimName": ref.object_name("src")}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    if registry.token_secret:
        # Only the fetch container mounts it: the checkout handles the tenant's tree.
        fetch["volumeMounts"].append(
            {"name": REGISTRY_TOKEN_VOLUME, "mountPath": REGISTRY_TOKEN_DIR, "readOnly": True}
        )
        volumes.append(_token_volume(registry.token_secret))
    pod = {
        **_pod_base(ref, config, uid, gid),
        "initContainers": [_checkout_container(spec, config)],
        "containers": [fetch],
        "volumes": volumes,
    }
    return _job(ref, "fetch", pod, config.fetch_deadline_seconds, config, spec.queue)


def _fetch_volume_mounts() -> list[dict[str, Any]]:
    return [
        {"name": SRC_VOLUME, "mountPath": WORK_DIR},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]


def _checkout_container(spec: ClusterBuildSpec, config: ControllerConfig) -> dict[str, Any]:
    """git, with the site's ``fetch_env`` (e.g. insteadOf rules for its git mirror)."""
    env = {
        **config.fetch_env,
        "FARM_GIT_URL": spec.source.git,
        "FARM_GIT_REVISION": spec.source.revision,
        "HOME": "/tmp",
    }
    return {
        "name": "checkout",
        "image": config.fetch_image,
        "command": ["/bin/sh", "-c", CHECKOUT_SCRIPT],
        "env": _env(env),
        "workingDir": WORK_DIR,
        "securityContext": _container_security(),
        "resources": _resources(1.0, 1 << 30),
        "volumeMounts": _fetch_volume_mounts(),
    }


def _fetch_container(
    spec: ClusterBuildSpec, config: ControllerConfig, registry: ClusterRegistry
) -> dict[str, Any]:
    """``farm fetch``. Its crate cache (FARM_HOME) is on the sources volume, sized by
    ``source_size``, not on the pod's 1 GiB /tmp; the build pod mounts only the checkout
    and the vendored result from that volume, never the cache."""
    env = {
        "FARM_HOME": f"{WORK_DIR}/farm-home",
        "HOME": "/tmp",
        "FARM_REGISTRIES_JSON": _registries_json(registry),
    }
    return {
        "name": "fetch",
        "image": config.fetch_image,
        "command": fetch_command(spec, config),
        "env": _env(env),
        "workingDir": WORK_DIR,
        "securityContext": _container_security(),
        "resources": _resources(1.0, 1 << 30),
        "volumeMounts": _fetch_volume_mounts(),
    }


def _token_volume(secret: str) -> dict[str, Any]:
    return {
        "name": REGISTRY_TOKEN_VOLUME,
        "secret": {
            "secretName": secret,
            "items": [{"key": "token", "path": "token"}],
            "defaultMode": 0o440,
        },
    }


def fetch_command(spec: ClusterBuildSpec, config: ControllerConfig) -> list[str]:
    """``farm fetch`` of the checked-out project into ``WORK_DIR/DEPS_DIR``, from the
    registry the Build names, with the operator's git hosts."""
    project = "/".join(p for p in (WORK_DIR, _subdir(spec)) if p)
    argv = ["farm", "fetch", project, "--dest", f"{WORK_DIR}/{DEPS_DIR}", "--always-vendor"]
    # The subdir is the tenant's: a link there must not lead the fetch out of the tree.
    argv += ["--within", f"{WORK_DIR}/repo"]
    argv += ["--registry", config.registry_for(spec.registry).name]
    for host in config.git_hosts:
        argv += ["--git-host", host]
    return argv


def _registries_json(registry: ClusterRegistry) -> str:
    """The one registry the fetch pod may use, as ``FARM_REGISTRIES_JSON``: its token is a
    file path (the Secret's mount), never the token itself."""
    chosen = registry.registry(f"{REGISTRY_TOKEN_DIR}/token")
    return json.dumps([chosen.model_dump(mode="json", exclude_none=True)])


def build_job(
    ref: BuildRef,
    spec: ClusterBuildSpec,
    sandbox: SandboxSpec,
    config: ControllerConfig,
    run: int = 0,
    node: str | None = None,
    *,
    artifact_url: str,
) -> dict[str, Any]:
    """The untrusted build (init container ``build``) then the collector container.
    ``run`` is the run of a reproducibility check (0: the build itself); ``sandbox``
    carries that run's variation; ``node`` (required for runs 1..) is run 0's node;
    ``artifact_url`` is where the collector uploads (farm.k8s.endpoint: an IP literal,
    since the collect policy allows no DNS)."""
    uid, gid = _ids(sandbox)
    tmp_size = sandbox.tmpfs.get(policy.TMP, spec.resources.scratch)
    volumes = [
        {
            "name": SRC_VOLUME,
            "persistentVolumeClaim": {"claimName": ref.object_name("src"), "readOnly": True},
        },
        # Each volume alone stays within the cap; the build container's ephemeral-storage
        # limit (disk + /tmp) bounds them together: the kubelet evicts the pod past it.
        {"name": TARGET_VOLUME, "emptyDir": {"sizeLimit": str(sandbox.disk)}},
        {"name": OUT_VOLUME, "emptyDir": {"sizeLimit": str(sandbox.disk)}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": str(tmp_size)}},
        {"name": COLLECTOR_TMP_VOLUME, "emptyDir": {"sizeLimit": str(COLLECTOR_TMP_SIZE)}},
        {
            "name": TOKEN_VOLUME,
            "secret": {
                "secretName": ref.object_name(names.run_role("collector", run)),
                "defaultMode": 0o440,
            },
        },
    ]
    pod = {
        **_pod_base(ref, config, uid, gid),
        "hostname": sandbox.hostname,
        "initContainers": [_build_container(spec, sandbox)],
        "containers": [_collector_container(ref, spec, config, run, artifact_url)],
        "volumes": volumes,
    }
    if run:
        pod["affinity"] = _on_node(node)
    deadline = sandbox.deadline_seconds + config.collect_grace_seconds
    template = {
        "labels": ref.run_labels(run),
        "annotations": {**ref.annotations(), names.RUNS_ANNOTATION: str(max(1, spec.check))},
    }
    role = names.run_role("build", run)
    return _job(ref, role, pod, deadline, config, spec.queue, template)


def _on_node(node: str | None) -> dict[str, Any]:
    """A check run shares the sources volume, which is ReadWriteOnce (one node at a
    time), so it must run on run 0's node. By node name, not by pod affinity: affinity
    stops matching once run 0's pod has ended, which would leave the run unschedulable."""
    if not node:
        raise ValueError("a check run's Job needs run 0's node")
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }


def _build_container(spec: ClusterBuildSpec, sandbox: SandboxSpec) -> dict[str, Any]:
    subdir = _subdir(spec)
    by_target = {m.target: m for m in sandbox.mounts}
    mounts = [
        {"name": SRC_VOLUME, "mountPath": policy.SRC, "subPath": subdir, "readOnly": True},
        {
            "name": SRC_VOLUME,
            "mountPath": VENDOR_DIR,
            "subPath": f"{DEPS_DIR}/vendor",
            "readOnly": True,
        },
        {
            "name": SRC_VOLUME,
            "mountPath": VENDOR_CONFIG,
            "subPath": f"{DEPS_DIR}/cargo-config.toml",
            "readOnly": True,
        },
        {"name": TARGET_VOLUME, "mountPath": policy.TARGET},
        {"name": OUT_VOLUME, "mountPath": policy.OUT},
        {"name": TMP_VOLUME, "mountPath": policy.TMP},
    ]
    # The policy decides what is writable; a cluster mount must agree with it.
    for mount in mounts:
        decided = by_target.get(str(mount["mountPath"]))
        if decided is not None and decided.read_only != bool(mount.get("readOnly", False)):
            raise InfrastructureError(f"mount {mount['mountPath']} disagrees with farm.policy")
    return {
        "name": "build",
        "image": sandbox.image,
        "command": list(sandbox.argv),
        # In the policy's order (not sorted): a check run's variation reorders it.
        "env": [{"name": k, "value": v} for k, v in sandbox.env.items()],
        "workingDir": sandbox.workdir,
        "securityContext": _container_security(),
        "resources": _resources(sandbox.cpus, sandbox.memory, _build_storage(sandbox)),
        "volumeMounts": mounts,
    }


def _collector_container(
    ref: BuildRef, spec: ClusterBuildSpec, config: ControllerConfig, run: int, url: str
) -> dict[str, Any]:
    env = {
        "FARM_ARTIFACT_URL": url,
        "FARM_BUILD": ref.upload_key(run),
        "FARM_TOKEN_FILE": f"{TOKEN_DIR}/token",
        "FARM_OUTPUTS": ",".join(spec.outputs or []),
        "FARM_LIMITS": spec.limits.model_dump_json(),
        "FARM_COLLECT_DEADLINE": str(config.collect_retry_seconds),
        "HOME": "/tmp",
    }
    return {
        "name": "collector",
        "image": config.collector_image,
        "command": ["python", "-m", "farm.k8s.collector"],
        "env": _env(env),
        "securityContext": _container_security(uid=names.COLLECTOR_UID),
        "resources": _resources(0.5, 256 << 20, COLLECTOR_STORAGE),
        "volumeMounts": [
            {
                "name": SRC_VOLUME,
                "mountPath": policy.SRC,
                "subPath": _subdir(spec),
                "readOnly": True,
            },
            {"name": TARGET_VOLUME, "mountPath": policy.TARGET, "readOnly": True},
            {"name": OUT_VOLUME, "mountPath": policy.OUT, "readOnly": True},
            {"name": COLLECTOR_TMP_VOLUME, "mountPath": "/tmp"},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
        ],
    }


def _subdir(spec: ClusterBuildSpec) -> str:
    return "/".join(p for p in ("repo", spec.source.subdir.strip("/")) if p)


def _env(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in sorted(values.items())]


def _build_storage(sandbox: SandboxSpec) -> int:
    """What the build may write on the node: target/ and /out (``resources.disk``) plus
    /tmp, which in the cluster is a disk-backed emptyDir rather than a tmpfs."""
    return sandbox.disk + sum(sandbox.tmpfs.values())


def _resources(cpus: float, memory: int, storage: int | None = None) -> dict[str, Any]:
    """Requests equal limits: the pod is Guaranteed and cannot borrow a neighbour's CPU;
    an ephemeral-storage request makes the scheduler place it where the disk is free."""
    amount = {"cpu": f"{round(cpus * 1000)}m", "memory": str(memory)}
    if storage is not None:
        amount["ephemeral-storage"] = str(storage)
    return {"requests": dict(amount), "limits": dict(amount)}
