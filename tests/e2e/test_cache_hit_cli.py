"""A cache hit as a whole `farm build` process (issue 14: under 1 s): real dockerd, real
runsc for the cold build, then the hit in a fresh interpreter whose dockerd requests are
recorded on their way to the real socket (nothing is answered for dockerd).

The hit asks dockerd for the image's id and nothing else (no info, no container list,
no ping), loads none of the sandbox machinery, and still verifies everything it did:
a tampered artifact blob is a miss that builds again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from farm.store import Store
from tests.e2e.conftest import farm_env, farm_json
from tests.unit.test_cli_imports import NOT_ON_A_HIT, heavy

ARGV = ["--output", "out/app", "--", "sh", "-c", "echo hit > /out/app"]

#: Runs `farm build` in-process, recording each HTTP request docker-py sends to dockerd,
#: then writes what it saw to the file named by argv[1].
PROBE = """
import json, sys
import docker.api.client as api
calls = []
send = api.APIClient.send
def recorded(self, request, **kw):
    calls.append(request.method + " " + request.path_url)
    return send(self, request, **kw)
api.APIClient.send = recorded
from farm.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "calls": calls, "modules": sorted(sys.modules)}, out)
sys.exit(code)
"""


def probed(home: Path, tmp_path: Path, *args: str) -> tuple[dict, dict]:
    seen = tmp_path / "probe.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(seen), "build", "--json", *args],
        capture_output=True,
        text=True,
        env=farm_env(home),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), json.loads(seen.read_text())


def test_a_hit_asks_dockerd_only_for_the_image_and_loads_no_sandbox_code(
    home: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "README").write_text("a hit\n")
    code, cold = farm_json(home, "build", str(tree), *ARGV)
    assert code == 0 and not cold["cached"], cold
    record, seen = probed(home, tmp_path, str(tree), *ARGV)
    assert record["cached"] and record["id"] == cold["id"], record
    # docker-py's own version negotiation when it connects, then one image lookup.
    paths = [c.split("?")[0] for c in seen["calls"]]
    assert paths[0] == "GET /version", paths
    assert len(paths) == 2 and paths[1].endswith("/images/farm/rust:bookworm/json"), paths
    assert heavy(set(seen["modules"])) == [], NOT_ON_A_HIT


def test_a_hit_still_re_hashes_the_artifact(home: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "README").write_text("a tampered hit\n")
    code, cold = farm_json(home, "build", str(tree), *ARGV)
    assert code == 0, cold
    blob = Store(home).blob_path(Store(home).get(cold["id"]).artifacts[0].sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"not what was built\n")
    record, seen = probed(home, tmp_path, str(tree), *ARGV)
    assert not record["cached"] and record["id"] != cold["id"], record
    assert "farm.runner" in seen["modules"]  # a miss builds, through the runner
