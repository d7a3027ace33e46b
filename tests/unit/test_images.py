"""farm.images' recipes and farm.wheelhouse's content digests (no Docker, no network)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from farm import wheelhouse
from farm.errors import ImageError, InputError
from farm.images import build_image, build_rootfs, recipe
from farm.k8s.config import ControllerConfig
from farm.settings import Settings
from farm.store import Store

#: The rust recipe's digest since it labels its toolchain (``toolchain=True``: that one
#: change rebuilt farm/rust:bookworm once, with the same rootfs). Every host has an image
#: labelled with it; a change here rebuilds farm/rust:bookworm everywhere.
RUST_DIGEST = "3abb50cd4865cfad932508773960d2d008b56bf63b0f7d84e9e1833f3a67724e"


def test_new_recipe_fields_leave_existing_digests_alone() -> None:
    assert recipe("rust").digest == RUST_DIGEST
    changed = dataclasses.replace(recipe("rust"), user=1)
    assert changed.digest != RUST_DIGEST  # a set field does count


def test_wheels_and_mirror_are_part_of_the_farm_recipe() -> None:
    farm = recipe("farm")
    with_wheels = dataclasses.replace(farm, wheels=(("farm-0.1.0-py3-none-any.whl", "a" * 64),))
    assert len({farm.digest, with_wheels.digest}) == 2
    assert dataclasses.replace(farm, mirror="http://mirror.test/debian").digest != farm.digest


def test_controller_config_defaults_name_the_recipe_images() -> None:
    config = ControllerConfig()
    assert (config.fetch_image, config.collector_image) == (
        recipe("fetch").tag,
        recipe("farm").tag,
    )


def _wheel(path: Path, files: dict[str, str], mtime: tuple[int, ...]) -> Path:
    """A wheel whose RECORD holds each file's sha256, as wheel builders write it."""
    record = "".join(f"{name},sha256={_b64sha(body)},{len(body)}\n" for name, body in files.items())
    with zipfile.ZipFile(path, "w") as z:
        for name, body in {**files, "farm-0.1.0.dist-info/RECORD": record}.items():
            z.writestr(zipfile.ZipInfo(name, date_time=mtime), body)
    return path


def _b64sha(body: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body.encode()).digest()).decode().rstrip("=")


def test_wheel_digest_names_content_not_build_time(tmp_path: Path) -> None:
    """A rebuilt wheel of the same source differs only in zip timestamps: same digest."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    name = "farm-0.1.0-py3-none-any.whl"
    _wheel(tmp_path / "a" / name, {"farm/x.py": "1"}, (2020, 1, 1, 0, 0, 0))
    _wheel(tmp_path / "b" / name, {"farm/x.py": "1"}, (2024, 6, 1, 12, 0, 0))
    assert wheelhouse.digests(tmp_path / "a") == wheelhouse.digests(tmp_path / "b")
    _wheel(tmp_path / "b" / name, {"farm/x.py": "2"}, (2024, 6, 1, 12, 0, 0))
    assert wheelhouse.digests(tmp_path / "a") != wheelhouse.digests(tmp_path / "b")


def test_a_wheelhouse_without_farm_is_refused(tmp_path: Path) -> None:
    _wheel(tmp_path / "docker-7.1.0-py3-none-any.whl", {"docker/x.py": ""}, (2020, 1, 1, 0, 0, 0))
    with pytest.raises(ImageError, match="no farm wheel"):
        wheelhouse.digests(tmp_path)


def test_a_python_recipe_needs_a_wheelhouse_before_mmdebstrap_runs(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="give a wheelhouse"):
        build_rootfs(recipe("farm"), tmp_path / "rootfs.tar", log=lambda _: None)
    assert os.listdir(tmp_path) == []


def test_a_wheelhouse_for_an_image_without_python_is_bad_input(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(InputError, match="--wheelhouse is for the farm image"):
        build_image("rust", Settings(home=home), Store(home), None, wheels=tmp_path)  # type: ignore[arg-type]
    assert not (home / "images").exists()  # where a rootfs would have been made


def test_the_toolchain_images_come_in_each_suite_with_the_suite_in_the_tag() -> None:
    assert recipe("rust", "bookworm") == recipe("rust")
    trixie = recipe("rust", "trixie")
    assert (trixie.tag, trixie.suite, trixie.packages) == (
        "farm/rust:trixie",
        "trixie",
        recipe("rust").packages,
    )
    assert trixie.digest != RUST_DIGEST
    assert recipe("fetch", "trixie").tag == "farm/fetch:trixie"


@pytest.mark.parametrize(("name", "suite"), [("rust", "buster"), ("farm", "trixie")])
def test_a_suite_without_a_recipe_is_refused(name: str, suite: str) -> None:
    with pytest.raises(InputError, match=f"--suite {suite}: the {name} image is built from"):
        recipe(name, suite)
