"""Past the bound, a list of Builds kept fairly (farm.k8s.paging.FairShare) against the
REAL custom-resource API server (``make apiserver``; skipped when not built): the
flooding namespace, listed first through the server's continue tokens, is trimmed and
the other namespace's Build is kept. The controller's side is
tests/k8s/test_build_overflow.py (fake API)."""

from __future__ import annotations

import pytest

from farm.k8s import names
from tests.k8s.conftest import Routed
from tests.k8s.kubelet import build_manifest
from tests.k8s.test_real_api_load import make, paged

pytestmark = pytest.mark.k8s


def test_a_kept_list_past_the_bound_keeps_the_other_namespace(routed: Routed) -> None:
    make(routed, *(f"f{i}" for i in range(5)))  # routed.namespace is t-…: listed first
    other = f"z{routed.namespace}"
    path = f"/apis/{names.API_VERSION}/namespaces/{other}/{names.PLURAL}"
    code, body = routed.real.request("POST", path, build_manifest("mine"))
    assert code == 201, body
    try:
        kube, metrics = paged(routed, max_items=4)
        kept = kube.list_builds(keep=True)
        where = [(b["metadata"]["namespace"], b["metadata"]["name"]) for b in kept]
        assert (other, "mine") in where and len(where) == 4
        sample = metrics.registry.get_sample_value
        assert sample("farm_kube_list_overflow_total", {"kind": "Build"}) == 1
    finally:
        routed.real.request("DELETE", f"{path}/mine")
