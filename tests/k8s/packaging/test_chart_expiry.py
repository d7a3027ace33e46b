"""helm/farm: the Build TTL and history limit are helm values that reach the
controller's config.yaml, default to the controller's own defaults, and are checked."""

from __future__ import annotations

import pytest
import yaml

from farm import chart
from farm.errors import InfrastructureError
from farm.k8s.config import ControllerConfig
from tests.k8s.packaging.chartlib import Obj
from tests.k8s.packaging.test_chart_admission import config_of

pytestmark = pytest.mark.k8s
FIELDS = ("build_ttl_seconds", "build_history_limit")


def test_values_yaml_states_the_controllers_own_retention_defaults() -> None:
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())["controller"]["config"]
    defaults = ControllerConfig()
    assert {f: values[f] for f in FIELDS} == {f: getattr(defaults, f) for f in FIELDS}


def test_default_install_keeps_seven_days_and_a_hundred(default_objects: list[Obj]) -> None:
    config = config_of(default_objects)
    assert (config.build_ttl_seconds, config.build_history_limit) == (7 * 86400, 100)


def test_retention_set_through_helm_reaches_the_controller() -> None:
    sets = ["controller.config.build_ttl_seconds=0", "controller.config.build_history_limit=5"]
    config = config_of(chart.render(sets=sets))
    assert (config.build_ttl_seconds, config.build_history_limit) == (0, 5)


@pytest.mark.parametrize("field", FIELDS)
def test_values_schema_rejects_a_negative_retention(field: str) -> None:
    with pytest.raises(InfrastructureError, match=f"/controller/config/{field}"):
        chart.render(sets=[f"controller.config.{field}=-1"])
