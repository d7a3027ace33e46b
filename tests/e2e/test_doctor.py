"""`farm doctor` on the real host: everything set up by `make setup` is reported ok, and a
missing piece is reported with the command that fixes it."""

from __future__ import annotations

import json
from pathlib import Path

from farm.host import diagnose
from farm.settings import Settings

from .conftest import farm


def test_doctor_is_green_after_setup(home: Path) -> None:
    done = farm(home, "doctor", "--json")
    checks = json.loads(done.stdout)
    assert done.returncode == 0, [c for c in checks if not c["ok"]]
    names = {c["name"] for c in checks}
    assert {"runsc (gVisor)", "dockerd running", "dockerd knows runsc", "builder image"} <= names


def test_doctor_names_the_fix_for_a_missing_image(tmp_path: Path) -> None:
    checks = {c.name: c for c in diagnose(Settings(home=tmp_path, default_image="farm/none:0"))}
    image = checks["builder image"]
    assert not image.ok and image.fix == "farm image build rust"
    assert all(c.ok for name, c in checks.items() if name != "builder image")
