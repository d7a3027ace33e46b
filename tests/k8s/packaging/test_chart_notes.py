"""The chart's NOTES.txt, as `helm install` prints it (a client-side dry run of the real
chart with the pinned helm): how to see the controller and a Build, and the warnings that
depend on the values."""

from __future__ import annotations

from farm import chart


def notes(*sets: str) -> str:
    argv = ["install", "--dry-run=client", chart.RELEASE, str(chart.CHART)]
    argv += ["--namespace", chart.NAMESPACE]
    for item in sets:
        argv += ["--set", item]
    out = chart.helm(*argv)
    return out[out.index("NOTES:") :]


def test_the_notes_say_how_to_watch_a_build() -> None:
    text = notes()
    assert "rollout status deployment/farm-controller" in text  # release farm: fullname farm
    assert "kubectl get fbuild -n NAMESPACE -w" in text
    assert "nodeMonitor.enabled=false" in text  # the managed-gVisor caveat
    assert "which this chart did not create: it must exist already" in text  # the default
    assert "did not create" not in notes("runtimeClass.create=true")


def test_the_notes_follow_the_values() -> None:
    text = notes("nodeMonitor.enabled=false", "runNamespace.name=acme-builds")
    assert "pod-init-config" not in text
    assert "their pods, volumes and Secrets all run in\nacme-builds" in text
    assert "ClusterRole farm-build-author in their" in text
