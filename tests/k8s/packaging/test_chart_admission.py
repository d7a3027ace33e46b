"""helm/farm: the operator's ceilings and image allowlist are helm values that reach the
controller's config.yaml, default to the controller's own defaults, and are checked."""

from __future__ import annotations

import pytest
import yaml

from farm import chart
from farm.admission import Ceilings, ImageAllowlist
from farm.errors import InfrastructureError
from farm.k8s.config import ControllerConfig
from tests.k8s.packaging.chartlib import Obj, find

pytestmark = pytest.mark.k8s


def config_of(objects: list[Obj]) -> ControllerConfig:
    (configmap,) = [
        c for c in find(objects, "ConfigMap") if c["metadata"]["name"].endswith("-controller")
    ]
    return ControllerConfig.model_validate(yaml.safe_load(configmap["data"]["config.yaml"]))


def test_values_yaml_states_the_controllers_own_defaults() -> None:
    """The chart's defaults are written out for operators to read; they must be exactly
    the model's, or the documentation lies."""
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())["controller"]["config"]
    assert Ceilings.model_validate(values["ceilings"]) == Ceilings()
    assert set(values["ceilings"]) == set(Ceilings.model_fields)
    assert ImageAllowlist.model_validate(values["allowed_images"]) == ImageAllowlist()


def test_default_install_gets_the_default_ceilings_and_images(default_objects: list[Obj]) -> None:
    config = config_of(default_objects)
    assert config.ceilings == Ceilings()
    assert config.allowed_images.root == ["farm/rust:bookworm"]


def test_ceilings_and_images_set_through_helm_reach_the_controller() -> None:
    objects = chart.render(
        sets=[
            "controller.config.ceilings.memory=8g",
            "controller.config.ceilings.timeout_seconds=600",
            "controller.config.ceilings.cpus=2.5",
            "controller.config.allowed_images={registry.example.com/farm/rust@sha256:"
            + "ab" * 32
            + ",farm/rust:*}",
        ]
    )
    config = config_of(objects)
    assert (config.ceilings.memory, config.ceilings.timeout_seconds) == (8 << 30, 600)
    assert config.ceilings.cpus == 2.5
    assert config.ceilings.log == Ceilings().log  # the rest keep their defaults
    assert config.allowed_images.root == [
        "registry.example.com/farm/rust@sha256:" + "ab" * 32,
        "farm/rust:*",
    ]
    # What the controller then admits: the pinned digest, not the bare tag elsewhere.
    admission = config.admission()
    assert admission.allowed_images.check("registry.example.com/farm/rust:bookworm") is not None


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("controller.config.ceilings.memroy=8g", "additional properties 'memroy' not allowed"),
        ("controller.config.ceilings.memory=lots", "/controller/config/ceilings/memory"),
        ("controller.config.ceilings.cpus=0", "/controller/config/ceilings/cpus"),
        ("controller.config.allowed_images={Farm/Rust}", "/controller/config/allowed_images/0"),
    ],
)
def test_values_schema_rejects_bad_ceilings_and_patterns(setting: str, error: str) -> None:
    with pytest.raises(InfrastructureError, match=error):
        chart.render(sets=[setting])
