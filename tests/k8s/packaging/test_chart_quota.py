"""helm/farm: the per-tenant bound on Builds. The chart cannot know the tenants'
namespaces, so ``buildQuotas`` lists them; each gets a ResourceQuota on
``count/builds.farm.dev`` (docs/kubernetes.md, "Builds per namespace"). None by default;
``max_builds`` (the controller's bound on one list) reaches config.yaml."""

from __future__ import annotations

import pytest
import yaml

from farm import chart
from farm.errors import InfrastructureError
from farm.k8s.config import ControllerConfig
from tests.k8s.packaging.chartlib import Obj
from tests.k8s.packaging.test_chart_admission import config_of

pytestmark = pytest.mark.k8s


def quotas(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] == "ResourceQuota"]


def test_no_quota_by_default(default_objects: list[Obj]) -> None:
    assert quotas(default_objects) == []


def test_each_listed_namespace_gets_a_quota_on_its_builds() -> None:
    sets = [
        "buildQuotas[0].namespace=team-a",
        "buildQuotas[0].maxBuilds=500",
        "buildQuotas[1].namespace=team-b",
        "buildQuotas[1].maxBuilds=0",
    ]
    found = quotas(chart.render(sets=sets))
    assert [(q["metadata"]["namespace"], q["spec"]) for q in found] == [
        ("team-a", {"hard": {"count/builds.farm.dev": "500"}}),
        ("team-b", {"hard": {"count/builds.farm.dev": "0"}}),
    ]
    assert {q["metadata"]["name"] for q in found} == {"farm-builds"}
    assert all(q["metadata"]["labels"]["app.kubernetes.io/part-of"] == "farm" for q in found)


def test_the_nondefault_values_render_a_quota(nondefault_objects: list[Obj]) -> None:
    """So the schema test (test_chart.py) validates a rendered ResourceQuota too."""
    assert [q["metadata"]["namespace"] for q in quotas(nondefault_objects)] == ["team-a"]


@pytest.mark.parametrize(
    ("sets", "error"),
    [
        (
            ["buildQuotas[0].namespace=Team_A", "buildQuotas[0].maxBuilds=5"],
            "/buildQuotas/0/namespace",
        ),
        (
            ["buildQuotas[0].namespace=team-a", "buildQuotas[0].maxBuilds=-1"],
            "/buildQuotas/0/maxBuilds",
        ),
        (["buildQuotas[0].namespace=team-a"], "missing property 'maxBuilds'"),
        (["buildQuotas[0].maxBuilds=5"], "missing property 'namespace'"),
        (
            [
                "buildQuotas[0].namespace=team-a",
                "buildQuotas[0].maxBuilds=5",
                "buildQuotas[1].namespace=team-a",
                "buildQuotas[1].maxBuilds=9",
            ],
            "team-a is listed twice",
        ),
    ],
)
def test_a_bad_quota_entry_is_refused_by_name(sets: list[str], error: str) -> None:
    with pytest.raises(InfrastructureError, match=error):
        chart.render(sets=sets)


def test_max_builds_is_the_controllers_default_and_reaches_it(default_objects: list[Obj]) -> None:
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())["controller"]["config"]
    assert values["max_builds"] == ControllerConfig().max_builds
    assert config_of(default_objects).max_builds == 100_000
    assert config_of(chart.render(sets=["controller.config.max_builds=5000"])).max_builds == 5000
    with pytest.raises(InfrastructureError, match="/controller/config/max_builds"):
        chart.render(sets=["controller.config.max_builds=0"])
