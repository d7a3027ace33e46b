"""`farm controller` on the command line: the CRD it prints and its input errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_print_crd_prints_the_committed_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["controller", "--print-crd"]) == 0
    assert capsys.readouterr().out == (ROOT / "manifests/crd/builds.farm.dev.yaml").read_text()


def test_a_bad_controller_config_is_exit_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("mirrors:\n  - {cidr: 10.0.0.1/8}\n")
    assert main(["controller", "--config", str(config), "--kubeconfig", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "controller config" in err and "mirror cidr '10.0.0.1/8'" in err
