"""Names the cluster sees: the API group, labels, finalizer and per-build object names.

Callers: every ``farm.k8s`` module. Object names are a pure function of the Build's
name and uid, so a restarted controller finds (or re-creates) exactly the same objects
and a create that races another returns 409 instead of a duplicate. Every Build's
objects live in one run namespace (``ControllerConfig.run_namespace``), whatever
namespace the Build is in: the uid in each name keeps two Builds of the same name in
different namespaces apart, and annotations name the Build (docs/kubernetes.md).
"""

from __future__ import annotations

import hashlib
import re

GROUP = "farm.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Build"
PLURAL = "builds"
SINGULAR = "build"
CRD_NAME = f"{PLURAL}.{GROUP}"
FINALIZER = f"{GROUP}/teardown"

#: Label on every object the controller creates: the Build's uid (unique cluster-wide,
#: so one shared run namespace needs nothing more); teardown and the orphan reaper select on it.
BUILD_LABEL = f"{GROUP}/build"
#: Annotations naming the Build an execution object belongs to. Builds live in tenants'
#: namespaces and their objects in the run namespace, so the object's own namespace
#: says nothing about the Build's (and ownerReferences cannot cross namespaces).
BUILD_NAME_ANNOTATION = f"{GROUP}/build-name"
BUILD_NAMESPACE_ANNOTATION = f"{GROUP}/build-namespace"
#: The namespace every Build's Jobs, pods, volumes, Secrets, policies and accounts are
#: created in (ControllerConfig.run_namespace's default; the chart's runNamespace.name).
RUN_NAMESPACE = "farm-builds"
#: A namespace name (an RFC 1123 label).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A Secret's name (an RFC 1123 subdomain).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A git host the fetch phase may reach: a DNS name or an IPv4 address, no port or path.
_HOST_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
GIT_HOST = re.compile(rf"{_HOST_LABEL}(\.{_HOST_LABEL})*")
#: The label the Job controller puts on the pods it creates: the Job's uid. In the run
#: namespace only the Job controller creates pods, so a run's pod is found by it.
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
PHASE_LABEL = f"{GROUP}/phase"
MANAGED_BY = "farm-controller"
RUNTIME_CLASS = "gvisor"
#: The controller's Service (the chart's ``<fullname>-controller``; the default release's
#: name) and the name of its upload port: the collector gets that Service's ClusterIP.
ARTIFACT_SERVICE = "farm-controller"
ARTIFACT_PORT_NAME = "artifacts"
#: The build container's uid/gid (farm.settings.SANDBOX_UID); the collector runs as another.
COLLECTOR_UID = 10002
#: Kueue's queue label; set only when the Build names a queue.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

PHASES = ("fetch", "build", "collect")
#: Label of a build pod (and its Job and collect policy): which run of a
#: reproducibility check it is ("0" is the build itself, whose record is the Build's).
RUN_LABEL = f"{GROUP}/run"
#: Annotation of a build pod: how many runs the Build has, so the node monitor can
#: share the status's size budget between their records.
RUNS_ANNOTATION = f"{GROUP}/runs"


def short_uid(uid: str) -> str:
    """8 hex characters that tell two Builds of the same name apart."""
    return hashlib.sha256(uid.encode()).hexdigest()[:8]


def record_id(namespace: str, build: str, uid: str, run: int = 0) -> str:
    """The id of run ``run``'s record in the controller's store: ``<ns>.<name>.<uid8>``,
    check run k's ``<ns>.<name>.run<k>-<uid8>`` (not an extension of the Build's, since
    the store accepts a unique prefix of an id)."""
    run_of = f"run{run}-" if run else ""
    return f"{namespace}.{build}.{run_of}{short_uid(uid)}"


def object_name(build: str, uid: str, role: str) -> str:
    """``<build>-<uid8>-<role>``, at most 63 characters (a DNS label, and a Job name
    short enough for the ``job-name`` label Kubernetes puts on its pods)."""
    suffix = f"-{short_uid(uid)}-{role}"
    return build[: 63 - len(suffix)].rstrip("-.") + suffix


def run_role(role: str, run: int) -> str:
    """The role of run ``run``'s own object: run 0 keeps the plain role (a Build without
    a check has the same names as before checks existed), run k gets ``<role>-k``."""
    return role if run == 0 else f"{role}-{run}"


def labels(build: str, uid: str, phase: str | None = None) -> dict[str, str]:
    """Labels of every object created for one Build (the uid, so a re-created Build of
    the same name, or a Build of the same name in another namespace, never shares them)."""
    out = {
        "app.kubernetes.io/name": "farm",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/instance": build[:63].rstrip("-."),
        BUILD_LABEL: uid,
    }
    if phase:
        out["app.kubernetes.io/component"] = phase
        out[PHASE_LABEL] = phase
    return out
