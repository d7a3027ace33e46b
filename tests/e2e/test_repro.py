"""Reproducibility checks, the verified cache and signed provenance, for real: runsc
builds, docker's own event stream as the witness of what was (not) created, and
`farm verify` on the artifacts the store hands back."""

from __future__ import annotations

import base64
import gc
import json
import time
from pathlib import Path

import jsonschema
import pytest
from prometheus_client import CollectorRegistry

from farm.backends.local import LocalBackend
from farm.buildflow import run_build
from farm.metrics import Metrics
from farm.runner import Runner
from farm.settings import Settings
from farm.spec import build_spec
from farm.store import Store

from .conftest import EXAMPLES, created, farm, farm_json

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "tests" / "schemas" / "slsa-provenance-v1.schema.json").read_text())
#: Writes the time with nanoseconds: two runs can never agree.
STAMP = ["sh", "-c", "cp input.txt /out/copy && date +%s%N > /out/stamp"]


def project(tmp_path: Path) -> Path:
    p = tmp_path / "proj"
    p.mkdir()
    (p / "input.txt").write_text("data\n")
    return p


def test_hello_serde_is_reproducible_then_cached_then_verified(
    home: Path, client, tmp_path: Path
) -> None:
    source = str(EXAMPLES / "hello-serde")
    code, out = farm_json(home, "build", source, "--check", "2")
    assert code == 0, out
    verdict = out["reproducibility"]
    assert verdict["reproducible"] and verdict["runs"] == 2 and verdict["differing"] == []
    first, second = (Store(home).get(b) for b in verdict["builds"])
    assert [a.sha256 for a in first.artifacts] == [a.sha256 for a in second.artifacts]

    since = time.time()
    hit = farm(home, "build", source, "--json")
    assert hit.returncode == 0, hit.stderr
    assert "cached: verified 2\u00d7 reproducible on" in hit.stderr
    assert json.loads(hit.stdout)["id"] == out["id"] and json.loads(hit.stdout)["cached"]
    assert created(client, home, since) == []  # the hit started no sandbox at all

    envelope_file, dest = tmp_path / "hello.prov.json", tmp_path / "art"
    assert farm(home, "provenance", out["id"], "--out", str(envelope_file)).returncode == 0
    assert farm(home, "artifacts", out["id"], "--dest", str(dest)).returncode == 0
    binary = dest / "target" / "release" / "hello-serde"
    prov = ["--provenance", str(envelope_file)]
    requires = ["--require", "reproducible", "--require", "no-network"]  # observed by default
    ok = farm(home, "verify", str(binary), *prov, *requires)
    assert ok.returncode == 0, ok.stderr
    assert "is target/release/hello-serde of build" in ok.stdout
    assert "requirement no-network: observed, no network attempts" in ok.stdout

    envelope = json.loads(envelope_file.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    jsonschema.validate(statement, SCHEMA)
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {"source", "image:farm/rust:bookworm", "serde", "serde_json", "regex"} <= {
        d["name"] for d in deps
    }

    tampered = tmp_path / "tampered-binary"
    data = bytearray(binary.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the middle of the code
    tampered.write_bytes(bytes(data))
    bad = farm(home, "verify", str(tampered), "--provenance", str(envelope_file))
    assert bad.returncode == 1 and "is not a subject" in bad.stderr

    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    forged = tmp_path / "forged.prov.json"
    forged.write_text(json.dumps(envelope))
    bad = farm(home, "verify", str(binary), "--provenance", str(forged))
    assert bad.returncode == 1 and "no signature in the envelope verifies" in bad.stderr


def test_malicious_dep_is_reproducible_too(home: Path) -> None:
    # Its build script's attacks fail the same way in both sandboxes; the binary agrees.
    # Audit mode: enforce would quarantine it (exit 3) and withhold the binary.
    source = str(EXAMPLES / "malicious-dep")
    done = farm(home, "build", source, "--check", "2", "--mode", "audit", "--json")
    out = json.loads(done.stdout)
    assert done.returncode == 0, out
    assert out["reproducibility"]["result"] == "reproducible"
    builds = [Store(home).get(b) for b in out["reproducibility"]["builds"]]
    assert len({tuple(a.sha256 for a in b.artifacts) for b in builds}) == 1
    # Reproducible, but its dependency tried blocked things: never served from the cache.
    assert "blocked or suspicious actions were observed" in done.stderr


#: Behaves only when the hostname is a check run's (farm-check-N): reads a secret there.
SLEEPER = [
    "sh",
    "-c",
    'echo x > /out/x; case "$(hostname)" in farm-check-*) cat /root/.ssh/id_rsa;; esac',
]


def test_a_check_run_that_misbehaves_quarantines_the_whole_build(
    home: Path, tmp_path: Path
) -> None:
    """Run 0 is clean, run 1 reads a secret: run 0's artifacts must not get out."""
    src = project(tmp_path)
    code, out = farm_json(home, "build", str(src), "--check", "2", "--", *SLEEPER)
    assert (code, out["status"], out["artifacts"]) == (3, "quarantined", []), out
    assert out["reproducibility"]["result"] == "error"
    run1 = Store(home).get(out["reproducibility"]["builds"][1])
    assert run1.status.value == "quarantined"
    assert [a["kind"] for a in run1.blocked_actions] == ["sensitive_read"]
    assert out["provenance_sha256"] is None  # nothing is signed for a quarantined build
    assert farm(home, "artifacts", out["id"], "--dest", str(tmp_path / "a")).returncode == 0
    assert not [f for f in (tmp_path / "a").rglob("*") if f.is_file()]


def test_time_in_the_output_is_caught_with_a_diffoscope_report(
    home: Path, client, tmp_path: Path
) -> None:
    src = project(tmp_path)
    code, out = farm_json(home, "build", str(src), "--check", "2", "--", *STAMP)
    assert code == 1, out
    verdict = out["reproducibility"]
    assert verdict["result"] == "unreproducible" and verdict["differing"] == ["out/stamp"]
    report = next(a for a in out["artifacts"] if a["path"] == "check/diffoscope.txt")
    assert report["sha256"] == verdict["diffoscope_sha256"]
    dest = tmp_path / "art"
    assert farm(home, "artifacts", out["id"], "--dest", str(dest)).returncode == 0
    text = (dest / "check" / "diffoscope.txt").read_text()
    stamps = [(dest / "out" / "stamp").read_text().strip()]
    assert f"{verdict['builds'][0]}/out/stamp" in text and f"-{stamps[0]}" in text

    # Never cached: the same build again runs a sandbox.
    since = time.time()
    again = farm(home, "build", str(src), "--", *STAMP)
    assert again.returncode == 0 and "cached:" not in again.stderr
    assert len(created(client, home, since)) == 1


# In-process builds expose a socket LocalBackend leaks per build (docker-py's attach
# stream keeps its response's socket; reported to the integrator): not this test's subject.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_cache_hits_skip_the_sandbox_and_changes_miss(home: Path, client, tmp_path: Path) -> None:
    src = project(tmp_path)
    settings = Settings(home=home)
    metrics = Metrics(CollectorRegistry())
    backend = LocalBackend(settings)
    runner = Runner(settings, backend, Store(home))
    try:
        _cache_sequence(runner, client, home, src, metrics)
    finally:
        backend.client.close()
        gc.collect()  # so the leak surfaces inside this test, where it is filtered


def _cache_sequence(runner: Runner, client, home: Path, src: Path, metrics: Metrics) -> None:
    spec = build_spec({"source": str(src), "argv": ["cp", "input.txt", "/out/copy"]})

    cold = run_build(runner, spec, metrics=metrics)
    assert not cold.cached and cold.record.status.value == "succeeded"
    since = time.time()
    hit = run_build(runner, spec, metrics=metrics)
    assert hit.cached and hit.record.id == cold.record.id
    assert hit.said[0].startswith(f"cached: build {cold.record.id} of ")
    assert created(client, home, since) == []

    (src / "input.txt").write_text("changed\n")
    since = time.time()
    changed = run_build(runner, spec, metrics=metrics)
    assert not changed.cached and len(created(client, home, since)) == 1
    bypass = run_build(runner, spec, use_cache=False, metrics=metrics)
    assert not bypass.cached and bypass.record.id != changed.record.id
    value = metrics.registry.get_sample_value
    assert value("farm_cache_requests_total", {"result": "hit"}) == 1
    assert value("farm_cache_requests_total", {"result": "miss"}) == 2
    assert value("farm_cache_requests_total", {"result": "bypass"}) == 1

    checked = run_build(runner, spec, check_runs=2, metrics=metrics)  # needs 2 runs: a miss
    assert not checked.cached and checked.record.reproducibility.reproducible
    labels = {"tenant": "default", "result": "reproducible"}
    assert value("farm_reproducibility_checks_total", labels) == 1
    assert run_build(runner, spec, check_runs=2).said[0].startswith("cached: verified 2")


def test_an_unobserved_build_cannot_claim_no_network(home: Path, tmp_path: Path) -> None:
    src = project(tmp_path)
    copy = ["cp", "input.txt", "/out/c"]
    code, out = farm_json(home, "build", str(src), "--no-observe", "--", *copy)
    assert code == 0, out
    envelope = tmp_path / "c.prov.json"
    assert farm(home, "provenance", out["id"], "--out", str(envelope)).returncode == 0
    assert farm(home, "artifacts", out["id"], "--dest", str(tmp_path / "a")).returncode == 0
    prov = [str(tmp_path / "a" / "out" / "c"), "--provenance", str(envelope)]
    assert farm(home, "verify", *prov).returncode == 0
    refused = farm(home, "verify", *prov, "--require", "no-network")
    assert refused.returncode == 1 and "was not observed" in refused.stderr


def test_a_failed_build_is_never_served(home: Path, client, tmp_path: Path) -> None:
    src = project(tmp_path)
    argv = ["sh", "-c", "cp input.txt /out/copy; exit 1"]
    since = time.time()
    for _ in range(2):
        done = farm(home, "build", str(src), "--", *argv)
        assert done.returncode == 1 and "not cached: the build failed (exit 1)" in done.stderr
    assert len(created(client, home, since)) == 2


def test_bad_check_count_fails_before_any_sandbox(home: Path, client, tmp_path: Path) -> None:
    since = time.time()
    done = farm(home, "build", str(project(tmp_path)), "--check", "1", "--", "true")
    assert done.returncode == 2 and "--check 1: give between 2 and 10 runs" in done.stderr
    assert created(client, home, since) == []
