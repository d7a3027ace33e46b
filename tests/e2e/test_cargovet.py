"""`farm report ID --cargo-vet` on a real observed build of examples/hello-serde: a
safe-to-run note for each registry crate of its Cargo.lock, and nothing that reads as
an audit entry."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from .conftest import EXAMPLES, farm, farm_json


def test_hello_serde_gives_evidence_for_each_registry_crate(home: Path, client) -> None:
    code, out = farm_json(home, "build", str(EXAMPLES / "hello-serde"))
    assert (code, out["blocked_actions"]) == (0, []), out
    done = farm(home, "report", out["id"], "--cargo-vet", "--json")
    assert done.returncode == 0, done.stderr
    ev = json.loads(done.stdout)
    lock = tomllib.loads((EXAMPLES / "hello-serde" / "Cargo.lock").read_text())
    registry = {(p["name"], p["version"]) for p in lock["package"] if "source" in p}
    assert registry and ev["refused"] == [] and ev["not_clean"] == []
    assert {(p["name"], p["version"]) for p in ev["packages"]} == registry
    serde = next(p for p in ev["packages"] if p["name"] == "serde")
    assert f"farm build {out['id']} ran `cargo build --release --locked --offline`" in serde["note"]
    human = farm(home, "report", out["id"], "--cargo-vet").stdout
    assert human.startswith(f"# farm build {out['id']}: evidence for cargo-vet's safe-to-run")
    assert "[[audits" not in human


def test_an_unobserved_build_gives_none(home: Path, client, tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    code, out = farm_json(home, "build", str(tmp_path / "p"), "--no-observe", "--", "true")
    assert code == 0, out
    human = farm(home, "report", out["id"], "--cargo-vet").stdout
    assert "# no evidence: the build was not observed (--no-observe)" in human
