"""Fixtures of the realworld corpus: the e2e ones (real dockerd and runsc, a fresh
FARM_HOME per test, a leak check after each), reused as they are."""

from tests.e2e.conftest import client, home  # noqa: F401 (pytest fixtures)
