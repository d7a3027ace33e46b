"""Every Prometheus metric farm exports, in one place, on a registry the caller passes in.

Callers: ``farm.serve`` (local service), the Kubernetes controller and node monitor
create one :class:`Metrics` per process; tests create their own registry. Nothing is
registered at import time.

Naming follows Prometheus conventions: ``farm_`` prefix, base units, ``_total`` on
counters, ``_seconds`` on durations. Labels are bounded (tenant, result, kind); a build
id or a path is never a label: per-build detail lives in reports and Build status.
The Grafana dashboard and the alert rules under helm/ query exactly these names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Build durations span seconds (cache-warm) to an hour (cold workspace).
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
QUEUE_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
TEARDOWN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

#: Values of the ``result`` label of farm_builds_total: a BuildRecord's final status,
#: or "quarantined" when enforce mode withheld the artifacts.
BUILD_RESULTS = (
    "succeeded",
    "failed",
    "timed_out",
    "oom_killed",
    "cancelled",
    "error",
    "lost",
    "quarantined",
)
#: BlockedAction kinds (farm.observe.classify).
BLOCKED_KINDS = ("network", "fs_write_denied", "privilege", "sensitive_read", "persistence")
CACHE_RESULTS = ("hit", "miss", "bypass")
REPRO_RESULTS = ("reproducible", "unreproducible", "error")
#: Values of the ``severity`` label of farm_behaviour_changes_total (farm.profiles.model).
BEHAVIOUR_SEVERITIES = ("high", "medium", "low", "info")


class Metrics:
    """The farm's metric families. ``registry`` is required: no global state."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.builds = Counter(
            "farm_builds", "Builds finished, by result.", ["tenant", "result"], registry=registry
        )
        self.build_duration = Histogram(
            "farm_build_duration_seconds",
            "Wall-clock time of a build, from sandbox creation to teardown.",
            ["tenant"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "farm_build_queue_wait_seconds",
            "Time a build waited in the queue before a worker took it.",
            ["tenant"],
            buckets=QUEUE_BUCKETS,
            registry=registry,
        )
        self.queued = Gauge(
            "farm_builds_queued", "Builds waiting in the queue.", ["tenant"], registry=registry
        )
        self.sandboxes_active = Gauge(
            "farm_sandboxes_active", "Sandboxes currently running.", registry=registry
        )
        self.blocked_actions = Counter(
            "farm_blocked_actions",
            "Actions the sandbox blocked or flagged, by kind.",
            ["tenant", "kind"],
            registry=registry,
        )
        self.behaviour_changes = Counter(
            "farm_behaviour_changes",
            "Packages whose behaviour profile gained something since their last known one"
            " (farm.profiles), by the change's severity.",
            ["tenant", "severity"],
            registry=registry,
        )
        self.teardown = Histogram(
            "farm_teardown_seconds",
            "Time to tear a sandbox down after its build ended.",
            buckets=TEARDOWN_BUCKETS,
            registry=registry,
        )
        self.reaped = Counter(
            "farm_sandboxes_reaped",
            "Sandboxes of crashed or lost builds removed by the reaper.",
            registry=registry,
        )
        self.builds_expired = Counter(
            "farm_builds_expired",
            "Finished Builds the controller deleted past their TTL or history limit.",
            ["tenant"],
            registry=registry,
        )
        self.observer_dropped = Counter(
            "farm_observer_events_dropped",
            "gVisor trace events dropped by gVisor or undecodable by farm.",
            registry=registry,
        )
        self.repro_checks = Counter(
            "farm_reproducibility_checks",
            "Reproducibility checks (farm build --check N, a Build's spec.check), by verdict.",
            ["tenant", "result"],
            registry=registry,
        )
        self.cache_requests = Counter(
            "farm_cache_requests", "Build cache lookups, by result.", ["result"], registry=registry
        )
        self.pods_torn_down = Counter(
            "farm_pods_torn_down",
            "Kubernetes build pods deleted by the controller.",
            registry=registry,
        )
        self.list_overflow = Counter(
            "farm_kube_list_overflow",
            "Kubernetes lists refused for having more items than farm's bound, by kind.",
            ["kind"],
            registry=registry,
        )
        self.sandboxes_leaked = Gauge(
            "farm_sandboxes_leaked",
            "Sandboxes still present after their build finished (should stay 0).",
            registry=registry,
        )
