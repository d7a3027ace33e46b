"""Signed provenance: schema-valid SLSA v1, a per-installation key, and `verify` refusing
anything tampered with or short of the consumer's policy."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from farm.errors import InfrastructureError, InputError, VerificationError
from farm.provenance import PREDICATE_TYPE, attest, crates
from farm.records import Artifact, BuildRecord, ObservationSummary, ReproVerdict, Status
from farm.signing import load_or_create_key, load_public_key, public_key_path
from farm.snapshot import digest
from farm.spec import build_spec
from farm.store import Store
from farm.verify import verify

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "tests" / "schemas" / "slsa-provenance-v1.schema.json").read_text())
HELLO = ROOT / "examples" / "hello-serde"


def payload(envelope: dict) -> dict:
    return json.loads(base64.b64decode(envelope["payload"]))


@pytest.fixture
def attested(tmp_path: Path) -> tuple[Path, Path, dict, Path]:
    """A build record of hello-serde with one artifact, attested; (home, artifact, envelope
    file, statement)."""
    home = tmp_path / "home"
    store = Store(home)
    artifact = tmp_path / "hello-serde"
    artifact.write_bytes(b"\x7fELF pretend binary")
    sha, size = store.put_file(artifact)
    spec = build_spec({"source": str(HELLO), "source_date_epoch": 1_700_000_000})
    record = BuildRecord(
        id="20261129-000000-abcdef",
        status=Status.SUCCEEDED,
        exit_code=0,
        tenant="default",
        image="farm/rust:bookworm",
        image_id="sha256:" + "ab" * 32,
        runtime="runsc-observed",
        observation=ObservationSummary(mode="enforce", events=1200),
        spec=spec.model_dump(mode="json"),
        source_digest=digest(HELLO),
        created_at=datetime.now(UTC),
        finished_at=datetime.now(UTC),
        artifacts=[Artifact(path="target/release/hello-serde", sha256=sha, size=size)],
        reproducibility=ReproVerdict(
            reproducible=True,
            result="reproducible",
            runs=2,
            builds=["a", "b"],
            variations=["hostname"],
            checked_at=datetime.now(UTC),
        ),
    )
    store.save(record)
    sha = attest(record, spec, store, home)
    envelope_file = tmp_path / "prov.json"
    envelope_file.write_bytes(store.blob_path(sha).read_bytes())
    return home, artifact, envelope_file, json.loads(envelope_file.read_text())


def test_statement_is_slsa_v1_with_the_crates_and_verdict(attested) -> None:
    envelope = attested[3]
    statement = payload(envelope)
    jsonschema.validate(statement, SCHEMA)
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert statement["predicateType"] == PREDICATE_TYPE
    deps = {d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps["source"]["digest"]["sha256"] == digest(HELLO).removeprefix("sha256:")
    assert deps["image:farm/rust:bookworm"]["digest"]["sha256"] == "ab" * 32
    lock = {c["name"]: c for c in crates((HELLO / "Cargo.lock").read_text())}
    assert deps["serde"] == lock["serde"] and deps["serde"]["uri"].startswith("pkg:cargo/serde@")
    with_sum = [c for c in lock.values() if "digest" in c]
    assert with_sum and all(deps[c["name"]]["digest"] == c["digest"] for c in with_sum)
    params = statement["predicate"]["buildDefinition"]["externalParameters"]
    assert params["source_date_epoch"] == 1_700_000_000


def test_the_schema_rejects_what_slsa_requires(attested) -> None:
    statement = payload(attested[3])
    del statement["predicate"]["buildDefinition"]["buildType"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(statement, SCHEMA)


def test_verify_accepts_the_artifact_and_checks_policy(attested) -> None:
    home, artifact, envelope_file, _ = attested
    key = load_public_key(public_key_path(home))
    said = verify(artifact, envelope_file, key, ["reproducible", "no-network"])
    assert said[0].startswith(f"verified: {artifact}")
    assert said[1] == "runtime runsc-observed (gVisor)"
    assert "verified 2x reproducible" in said[2]
    assert "no network attempts" in said[3]


def test_a_tampered_artifact_fails(attested, tmp_path: Path) -> None:
    home, artifact, envelope_file, _ = attested
    artifact.write_bytes(artifact.read_bytes() + b"\x00")
    with pytest.raises(VerificationError, match="is not a subject"):
        verify(artifact, envelope_file, load_public_key(public_key_path(home)), [])


def test_a_tampered_envelope_fails(attested) -> None:
    home, artifact, envelope_file, envelope = attested
    statement = payload(envelope)
    statement["predicate"]["runDetails"]["byproducts"] = []  # hide what was observed
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    envelope_file.write_text(json.dumps(envelope))
    with pytest.raises(VerificationError, match="no signature"):
        verify(artifact, envelope_file, load_public_key(public_key_path(home)), [])
    envelope_file.write_text("{not json")
    with pytest.raises(VerificationError, match="not JSON"):
        verify(artifact, envelope_file, load_public_key(public_key_path(home)), [])


def test_another_installations_key_does_not_verify(attested, tmp_path: Path) -> None:
    _, artifact, envelope_file, _ = attested
    other = tmp_path / "other-home"
    load_or_create_key(other)
    with pytest.raises(VerificationError, match="no signature"):
        verify(artifact, envelope_file, load_public_key(public_key_path(other)), [])


def test_unmet_requirements_name_what_to_do(tmp_path: Path, attested) -> None:
    home, artifact, _, envelope = attested
    key = load_or_create_key(home)
    statement = payload(envelope)
    byproducts = statement["predicate"]["runDetails"]["byproducts"]
    blocked = {"observed": True, "actions": [{"kind": "network", "target": "127.0.0.1:9"}]}
    repro = {"reproducible": False, "result": "unreproducible", "runs": 2}
    for item, value in zip(byproducts, (blocked, repro), strict=False):
        item["content"] = base64.b64encode(json.dumps(value).encode()).decode()
    from farm.signing import sign

    resigned = tmp_path / "resigned.json"
    body = json.dumps(statement).encode()
    resigned.write_text(json.dumps(sign("application/vnd.in-toto+json", body, key)))
    public = key.public_key()
    assert verify(artifact, resigned, public, [])  # signature and subject still hold
    with pytest.raises(VerificationError, match="said 'unreproducible'"):
        verify(artifact, resigned, public, ["reproducible"])
    with pytest.raises(VerificationError, match="1 network attempts"):
        verify(artifact, resigned, public, ["no-network"])
    with pytest.raises(InputError, match="choose from"):
        verify(artifact, resigned, public, ["no-bugs"])


def test_no_network_needs_a_complete_record(tmp_path: Path, attested) -> None:
    home, artifact, _, envelope = attested
    key = load_or_create_key(home)
    statement = payload(envelope)
    lossy = {"observed": True, "complete": False, "mode": "enforce", "actions": []}
    statement["predicate"]["runDetails"]["byproducts"][0]["content"] = base64.b64encode(
        json.dumps(lossy).encode()
    ).decode()
    from farm.signing import sign

    resigned = tmp_path / "resigned.json"
    body = json.dumps(statement).encode()
    resigned.write_text(json.dumps(sign("application/vnd.in-toto+json", body, key)))
    with pytest.raises(VerificationError, match="lost events"):
        verify(artifact, resigned, key.public_key(), ["no-network"])


def test_a_record_that_lost_events_is_signed_as_incomplete(tmp_path: Path, attested) -> None:
    """An audit-mode build whose record lost events is signed, but cannot claim
    no-network: the lost events may have been the attempt."""
    home, artifact, _, envelope = attested
    store = Store(home)
    record = store.get(payload(envelope)["predicate"]["runDetails"]["metadata"]["invocationId"])
    record.observation = ObservationSummary(mode="audit", events=10, dropped=3)
    spec = build_spec({"source": str(HELLO), "source_date_epoch": 1_700_000_000})
    lossy = tmp_path / "lossy.json"
    lossy.write_bytes(store.blob_path(attest(record, spec, store, home)).read_bytes())
    with pytest.raises(VerificationError, match="lost events"):
        verify(artifact, lossy, load_public_key(public_key_path(home)), ["no-network"])


def test_the_key_is_private_created_once_and_guarded(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = load_or_create_key(home)
    path = home / "keys" / "provenance-ed25519.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (home / "keys").stat().st_mode & 0o777 == 0o700
    (home / "keys" / "provenance-ed25519.pub.pem").unlink()
    again = load_or_create_key(home)
    assert again.public_key().public_bytes_raw() == first.public_key().public_bytes_raw()
    public = load_public_key(public_key_path(home))  # rewritten from the private key
    assert public.public_bytes_raw() == first.public_key().public_bytes_raw()
    path.chmod(0o644)
    with pytest.raises(InfrastructureError, match="chmod 600"):
        load_or_create_key(home)


def test_a_hostile_lockfile_lists_no_crates_and_raises_nothing() -> None:
    """A cluster build's Cargo.lock comes from the repository: deep nesting (tomllib
    recurses) or malformed entries must not stop the controller from signing."""
    assert crates("a = " + "[" * 5000) == []
    assert crates("not toml") == []
    odd = """
package = "x"
[[x]]
"""
    assert crates(odd) == []
    mixed = """
[[package]]
name = 3
version = "1"
source = "registry+x"

[[package]]
name = "ok"
version = "1.0.0"
source = "registry+x"
"""
    assert [c["name"] for c in crates(mixed)] == ["ok"]
