"""Shared fixtures. Markers are assigned by directory: tests/unit -> unit, tests/e2e -> e2e,
tests/k8s -> k8s, tests/realworld -> realworld."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if kind in ("unit", "e2e", "k8s", "realworld"):
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def real_crates() -> dict[str, bytes]:
    """Real crates.io crates (tests/realcrates.py): name -> bytes, each checked against its
    pinned sha256; downloaded from Debian's signed archive once, then cached."""
    from tests.realcrates import ensure

    return ensure()
