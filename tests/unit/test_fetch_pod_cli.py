"""What the cluster's fetch pod needs from `farm fetch` (farm.k8s.objects.fetch_job):
the registry as inline JSON (FARM_REGISTRIES_JSON), and a vendor directory and cargo
config even for a project with nothing to fetch, since the build pod mounts both by
subPath (a missing one would be created by the kubelet as a directory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.errors import InputError
from farm.settings import Settings
from tests.unit.test_fetch_cli import farm

INDEX = "sparse+http://127.0.0.1:9/index/"


def test_always_vendor_writes_an_empty_vendor_dir_and_config(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    done = farm(
        tmp_path, "fetch", str(tmp_path / "plain"), "--dest", str(tmp_path / "d"), "--always-vendor"
    )
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "d" / "vendor").iterdir()) == []
    config = (tmp_path / "d" / "cargo-config.toml").read_text()
    assert 'replace-with = "farm-vendor"' in config and 'directory = "/vendor"' in config


def test_registries_json_names_the_registries_and_refuses_a_file_too(tmp_path: Path) -> None:
    entry = {"name": "corp", "index": INDEX, "token_file": "/var/run/farm/registry/token"}
    settings = Settings.from_env({"FARM_REGISTRIES_JSON": json.dumps([entry])})
    assert settings.registries["corp"].index == INDEX
    assert str(settings.registries["corp"].token_file) == entry["token_file"]
    with pytest.raises(InputError, match=r"FARM_REGISTRIES_JSON: entry 0: .*sparse index"):
        Settings.from_env({"FARM_REGISTRIES_JSON": json.dumps([{"name": "x", "index": "ftp:/"}])})
    with pytest.raises(InputError, match="not both"):
        Settings.from_env({"FARM_REGISTRIES_JSON": "[]", "FARM_REGISTRIES": str(tmp_path)})


def test_within_a_subdir_that_is_a_link_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    """The cluster's fetch pod runs `farm fetch /work/repo/<subdir> --within /work/repo`:
    the subdir is the tenant's, and a link there must not lead the fetch out of the tree
    (here to another project with a lock, which would otherwise be fetched)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "Cargo.toml").write_text('[package]\nname = "o"\nversion = "0.1.0"\n')
    (outside / "Cargo.lock").write_text('version = 3\n[[package]]\nname = "o"\nversion = "0.1.0"\n')
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "sub").symlink_to(outside)
    dest = tmp_path / "d"
    args = ["fetch", str(repo / "sub"), "--dest", str(dest), "--within", str(repo), "--json"]
    done = farm(tmp_path, *args)
    assert done.returncode != 0 and "cannot open" in done.stderr, done.stderr
    assert not dest.exists()
    # Without --within (an operator's own tree) the same link is followed.
    done = farm(tmp_path, *args[:-3], "--json")
    assert done.returncode == 0, done.stderr
