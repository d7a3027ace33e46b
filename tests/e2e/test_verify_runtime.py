"""`farm verify` and the runtime a build ran in: provenance of a `--insecure-runtime=runc`
build is refused unless the consumer accepts it, and the runtime is part of what is signed."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from .conftest import farm, farm_json


def test_provenance_of_an_insecure_build_is_refused_unless_accepted(
    home: Path, tmp_path: Path
) -> None:
    src = tmp_path / "proj"
    src.mkdir()
    (src / "input.txt").write_text("data\n")
    argv = ["--", "cp", "input.txt", "/out/c"]
    code, out = farm_json(home, "build", str(src), "--insecure-runtime=runc", *argv)
    assert code == 0, out
    envelope_file = tmp_path / "c.prov.json"
    assert farm(home, "provenance", out["id"], "--out", str(envelope_file)).returncode == 0
    assert farm(home, "artifacts", out["id"], "--dest", str(tmp_path / "a")).returncode == 0
    prov = [str(tmp_path / "a" / "out" / "c"), "--provenance", str(envelope_file)]

    refused = farm(home, "verify", *prov)
    assert refused.returncode == 1, refused.stdout
    assert "ran with runtime 'runc', not gVisor" in refused.stderr
    assert "--allow-insecure-runtime" in refused.stderr
    accepted = farm(home, "verify", *prov, "--allow-insecure-runtime")
    assert accepted.returncode == 0, accepted.stderr
    assert "WITHOUT gVisor" in accepted.stdout

    # Claiming gVisor after the fact breaks the signature, whichever field is edited.
    envelope = json.loads(envelope_file.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    params = statement["predicate"]["buildDefinition"]["internalParameters"]
    assert params["runtime"] == "runc" and params["insecureRuntime"] is True
    for edit in ({"insecureRuntime": False}, {"runtime": "runsc-observed"}):
        forged = {**statement}
        forged["predicate"]["buildDefinition"]["internalParameters"] = {**params, **edit}
        envelope["payload"] = base64.b64encode(json.dumps(forged).encode()).decode()
        tampered = tmp_path / "tampered.json"
        tampered.write_text(json.dumps(envelope))
        done = farm(home, "verify", prov[0], "--provenance", str(tampered))
        assert done.returncode == 1 and "no signature" in done.stderr, done.stderr


def test_provenance_of_a_gvisor_build_verifies_without_the_flag(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "proj"
    src.mkdir()
    (src / "input.txt").write_text("data\n")
    code, out = farm_json(home, "build", str(src), "--", "cp", "input.txt", "/out/c")
    assert code == 0, out
    envelope_file = tmp_path / "c.prov.json"
    assert farm(home, "provenance", out["id"], "--out", str(envelope_file)).returncode == 0
    assert farm(home, "artifacts", out["id"], "--dest", str(tmp_path / "a")).returncode == 0
    artifact = str(tmp_path / "a" / "out" / "c")
    done = farm(home, "verify", artifact, "--provenance", str(envelope_file))
    assert done.returncode == 0, done.stderr
    assert "runtime runsc-observed (gVisor)" in done.stdout
