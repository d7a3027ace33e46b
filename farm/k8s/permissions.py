"""The Kubernetes API calls farm/k8s makes, as RBAC grants: (API group, resource, verbs).

Callers: none at run time. helm/farm/templates/rbac.yaml grants exactly these (checked by
tests/k8s/packaging/test_chart.py), so the table is the one reference for what the
controller (farm/k8s/kube.py via reconcile, teardown, watching, collector), its leader
election (farm/k8s/leader.py) and the node monitor (farm/k8s/nodemonitor.py) call. A new
call in farm/k8s means a new row here, and the chart test then says the chart lacks it.
Each table says where it is granted: cluster-wide (a ClusterRole), or a Role in the
controller's namespace or in the run namespace (tests/k8s/conftest.py checks each call
against the table of its namespace).
"""

from __future__ import annotations

from typing import NamedTuple

from farm.k8s.controller import LEASE_NAME
from farm.k8s.names import ARTIFACT_SERVICE, GROUP


class Grant(NamedTuple):
    """One RBAC rule: verbs on one resource of one API group ("" is the core group),
    optionally only on the named objects."""

    group: str
    resource: str
    verbs: frozenset[str]
    names: frozenset[str] = frozenset()


def _grant(group: str, resource: str, *verbs: str, names: tuple[str, ...] = ()) -> Grant:
    return Grant(group, resource, frozenset(verbs), frozenset(names))


#: Cluster-wide: Builds may live in any namespace, and their Events go beside them.
#: Nothing else: the objects that run a Build are in the run namespace (RUN_OBJECTS).
CONTROLLER: tuple[Grant, ...] = (
    # delete: finished Builds past their TTL or history limit (farm.k8s.expiry).
    _grant(GROUP, "builds", "get", "list", "watch", "patch", "delete"),
    _grant(GROUP, "builds/status", "get", "update", "patch"),
    _grant("", "events", "create", "patch"),
)

#: The run namespace only (ControllerConfig.run_namespace): every Build's Jobs, pods,
#: volumes, token Secrets, policies and accounts. No cluster-wide secrets, pods or Jobs.
RUN_OBJECTS: tuple[Grant, ...] = (
    _grant("batch", "jobs", "create", "get", "list", "watch", "delete"),
    _grant("", "pods", "get", "list", "watch", "delete"),
    _grant("", "pods/log", "get"),
    _grant("", "secrets", "create", "get", "list", "delete"),
    _grant("", "serviceaccounts", "create", "get", "list", "delete"),
    _grant("", "persistentvolumeclaims", "create", "get", "list", "delete"),
    _grant("networking.k8s.io", "networkpolicies", "create", "get", "list", "delete"),
)

#: The controller's own namespace only; get/update only on its one Lease.
LEADER_ELECTION: tuple[Grant, ...] = (
    _grant("coordination.k8s.io", "leases", "create"),
    _grant("coordination.k8s.io", "leases", "get", "update", names=(LEASE_NAME,)),
)

#: The controller's own namespace only: get of its own Service, whose ClusterIP the
#: collector uploads to (farm/k8s/endpoint.py). The chart names it ``<fullname>-controller``
#: (``farm-controller`` in the default release, which the chart test renders).
ARTIFACT_SERVICE_READ: tuple[Grant, ...] = (
    _grant("", "services", "get", names=(ARTIFACT_SERVICE,)),
)

#: Cluster-wide: patches its record and counts into the status of a Build, anywhere.
NODE_MONITOR: tuple[Grant, ...] = (_grant(GROUP, "builds/status", "patch"),)

#: The run namespace only: lists, then watches, the build pods on its node there.
NODE_MONITOR_PODS: tuple[Grant, ...] = (_grant("", "pods", "list", "watch"),)

#: Not farm's own: what a team needs to run builds in its namespace, granted (by a
#: RoleBinding there) instead of ``edit``, which would also let it create pods, Secrets
#: and volumes. The chart's ``<fullname>-build-author`` ClusterRole.
BUILD_AUTHOR: tuple[Grant, ...] = (
    _grant(GROUP, "builds", "create", "get", "list", "watch", "delete"),
    _grant(GROUP, "builds/status", "get"),
)


def flatten(grants: tuple[Grant, ...]) -> set[tuple[str, str, str, frozenset[str]]]:
    """(group, resource, verb, names) for each verb: equal sets grant the same, however
    the rules are split or ordered."""
    return {(g.group, g.resource, verb, g.names) for g in grants for verb in g.verbs}
