"""The registry Dockerfile and the offline recipe must describe the same builder."""

import re
from pathlib import Path

from farm.images import CARGO_CONFIG, recipe

CONTAINERS = Path(__file__).resolve().parents[2] / "containers"


def test_rust_dockerfile_matches_the_offline_recipe() -> None:
    text = (CONTAINERS / "rust-builder" / "Dockerfile").read_text()
    block = text.split("--no-install-recommends", 1)[1].split("&&", 1)[0]
    packages = set(re.findall(r"^\s+([a-z0-9][a-z0-9.+-]+)", block, re.MULTILINE))
    assert packages == set(recipe("rust").packages)
    assert (CONTAINERS / "rust-builder" / "cargo-config.toml").read_text() == CARGO_CONFIG
    assert "USER 10001:10001" in text
