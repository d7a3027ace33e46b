"""The chart passes the operator's registries and git hosts to the controller, which
hands the fetch pod exactly the registry a Build names (tests/k8s/test_fetch_pod.py)."""

from __future__ import annotations

from farm.k8s.config import ControllerConfig
from tests.k8s.packaging.chartlib import Obj
from tests.k8s.packaging.test_chart import controller_config


def test_registries_and_git_hosts_reach_the_controller_config(
    default_objects: list[Obj], nondefault_objects: list[Obj]
) -> None:
    default = ControllerConfig.model_validate(controller_config(default_objects))
    assert default.registries == ControllerConfig().registries
    assert default.git_hosts == []
    config = controller_config(nondefault_objects, "acme-farm-controller")
    parsed = ControllerConfig.model_validate(config)
    assert [(r.name, r.token_secret) for r in parsed.registries] == [
        ("corp", "corp-cargo"),
        ("crates-io", None),
    ]
    assert parsed.registry_for(None).name == "corp"
    assert parsed.git_hosts == ["git.corp.test"]
