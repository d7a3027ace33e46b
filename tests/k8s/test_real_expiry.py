"""Build expiry (farm.k8s.expiry) against the REAL custom-resource API server: the
delete's uid precondition, and the finalizer releasing an expired Build once the
controller sees it deleted (tests/k8s/test_real_apiserver.py has the fixtures)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from farm.errors import ConflictError, KubeNotFoundError, NotFoundError
from farm.k8s import names
from tests.k8s.conftest import Routed
from tests.k8s.kubelet import wait_for
from tests.k8s.test_real_apiserver import assert_nothing_pruned, controlled, created

pytestmark = pytest.mark.k8s


def released(routed: Routed, name: str) -> bool:
    try:
        routed.kube.get_build(routed.namespace, name)
    except KubeNotFoundError:
        return True
    return False


def test_an_expired_build_is_deleted_and_its_finalizer_lets_it_go(
    routed: Routed, tmp_path: Path
) -> None:
    ns = routed.namespace
    with controlled(routed, tmp_path) as cluster:
        ctl = cluster.controllers[0][0]
        build = created(routed, "old", check=1)  # admitted by the schema, refused by farm
        wait_for(
            lambda: routed.kube.get_build(ns, "old").get("status", {}).get("tornDown"), "teardown"
        )
        rid = names.record_id(ns, "old", build["metadata"]["uid"])
        assert ctl.reconciler.store.get(rid).id == rid
        # A Build re-created under the name is not the expired one: the server refuses.
        with pytest.raises(ConflictError):
            routed.kube.delete_build(ns, "old", "0" * 8 + "-0000-0000-0000-" + "0" * 12)
        assert ctl.expire() == 0

        assert ctl.expire(datetime.now(UTC) + timedelta(days=8)) == 1

        wait_for(lambda: released(routed, "old"), "the finalizer's removal")
        with pytest.raises(NotFoundError):
            ctl.reconciler.store.get(rid)
    assert_nothing_pruned(routed)
