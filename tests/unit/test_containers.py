"""The registry Dockerfile and the offline recipe must describe the same builder."""

import re
from pathlib import Path

import pytest

from farm.images import CARGO_CONFIG, recipe

CONTAINERS = Path(__file__).resolve().parents[2] / "containers"


def test_rust_dockerfile_matches_the_offline_recipe() -> None:
    text = (CONTAINERS / "rust-builder" / "Dockerfile").read_text()
    block = text.split("--no-install-recommends", 1)[1].split("&&", 1)[0]
    packages = set(re.findall(r"^\s+([a-z0-9][a-z0-9.+-]+)", block, re.MULTILINE))
    assert packages == set(recipe("rust").packages)
    assert (CONTAINERS / "rust-builder" / "cargo-config.toml").read_text() == CARGO_CONFIG
    assert "USER 10001:10001" in text


def test_fetch_target_is_the_offline_fetch_recipe() -> None:
    """The farm Dockerfile's fetch stage adds to the farm image what the fetch recipe adds:
    git, and no cargo (the fetch pod runs `farm fetch`, never a tool reading the tree's
    configuration)."""
    text = (CONTAINERS / "farm" / "Dockerfile").read_text()
    stage = text.split("FROM farm AS fetch", 1)[1].split("\nFROM ", 1)[0]
    block = stage.split("--no-install-recommends", 1)[1].split("&&", 1)[0]
    added = set(re.findall(r"^\s+([a-z0-9][a-z0-9.+-]+)", block, re.MULTILINE))
    assert added == set(recipe("fetch").packages) - set(recipe("farm").packages) == {"git"}
    assert "cargo" not in recipe("fetch").packages and recipe("fetch").python == ("farm",)
    assert f"\n{recipe('fetch').config[-1]}\n" in stage
    assert "FROM rust AS fetch" not in (CONTAINERS / "rust-builder" / "Dockerfile").read_text()


def test_farm_dockerfile_configures_the_image_as_the_offline_recipe() -> None:
    text = (CONTAINERS / "farm" / "Dockerfile").read_text()
    for line in recipe("farm").config:
        if not line.startswith("ENV "):  # the Dockerfile sets its ENV in one instruction
            assert f"\n{line}\n" in text, line
        else:
            assert line.removeprefix("ENV ") in text, line


DOCKERFILES = ("farm", "rust-builder")
OCI_LABELS = ("title", "description", "version", "licenses", "base.name", "base.digest")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_pins_its_base_by_digest_runs_non_root_and_is_labelled(name: str) -> None:
    text = (CONTAINERS / name / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)$", text, re.MULTILINE)
    assert base, "the base image is an ARG so a mirror of the same digest can be used"
    assert re.fullmatch(r"debian:bookworm-\d{8}-slim@sha256:[0-9a-f]{64}", base.group(1))
    froms = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert froms and froms[0].startswith("${BASE}")
    digest = base.group(1).split("@")[1]
    assert f'org.opencontainers.image.base.digest="{digest}"' in text
    users = re.findall(r"^USER (\d+):(\d+)$", text, re.MULTILINE)
    assert users and users[-1][0] != "0" and users[-1][1] != "0"
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in text, label
    assert 'io.farm.managed="true"' in text
