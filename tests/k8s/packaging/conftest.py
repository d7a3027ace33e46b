"""Fixtures of the packaging tests: the chart rendered with each values file."""

from __future__ import annotations

import pytest

from farm import chart
from tests.k8s.packaging.chartlib import VALUES, Obj


@pytest.fixture(scope="session", params=sorted(VALUES))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    """(values name, objects) for each values file."""
    return request.param, chart.render(VALUES[request.param])


@pytest.fixture(scope="session")
def default_objects() -> list[Obj]:
    return chart.render()


@pytest.fixture(scope="session")
def nondefault_objects() -> list[Obj]:
    return chart.render(VALUES["nondefault"])
