"""`farm verify` refuses provenance of a build that ran without gVisor unless the consumer
passes --allow-insecure-runtime, reading the runtime only from the signed statement."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from farm.errors import VerificationError
from farm.provenance import PAYLOAD_TYPE, attest
from farm.records import Artifact, BuildRecord, Status
from farm.signing import load_or_create_key, load_public_key, public_key_path, sign
from farm.spec import build_spec
from farm.store import Store
from farm.verify import verify


def attested(tmp_path: Path, **fields: object) -> tuple[Path, Path, Store]:
    """(artifact, envelope file, store) of a real record signed by a real key."""
    home = tmp_path / "home"
    store = Store(home)
    artifact = tmp_path / "artifact"
    artifact.write_bytes(b"built")
    sha, size = store.put_file(artifact)
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    spec = build_spec({"source": str(src), "argv": ["true"]})
    record = BuildRecord(
        id="b1",
        status=Status.SUCCEEDED,
        exit_code=0,
        tenant="default",
        image="farm/rust:bookworm",
        spec=spec.model_dump(mode="json"),
        created_at=datetime.now(UTC),
        artifacts=[Artifact(path="out/a", sha256=sha, size=size)],
        **{"runtime": "runsc-observed", **fields},
    )
    store.save(record)
    envelope = tmp_path / "prov.json"
    envelope.write_bytes(store.blob_path(attest(record, spec, store, home)).read_bytes())
    return artifact, envelope, store


def test_the_runtime_is_signed_and_an_insecure_build_is_refused(tmp_path: Path) -> None:
    artifact, envelope, store = attested(tmp_path, runtime="runc", insecure_runtime=True)
    key = load_public_key(public_key_path(store.home))
    statement = json.loads(base64.b64decode(json.loads(envelope.read_text())["payload"]))
    params = statement["predicate"]["buildDefinition"]["internalParameters"]
    assert params["runtime"] == "runc" and params["insecureRuntime"] is True
    with pytest.raises(VerificationError, match=r"runtime 'runc', not gVisor.*--allow-insecure"):
        verify(artifact, envelope, key, [])
    said = verify(artifact, envelope, key, [], allow_insecure_runtime=True)
    assert said[1].startswith("WARNING: accepted WITHOUT gVisor")


def test_a_gvisor_build_verifies_and_says_so(tmp_path: Path) -> None:
    artifact, envelope, store = attested(tmp_path)
    said = verify(artifact, envelope, load_public_key(public_key_path(store.home)), [])
    assert said[1] == "runtime runsc-observed (gVisor)"


@pytest.mark.parametrize("value", ["absent", None, "false", 0, "no"])
def test_only_an_explicit_signed_false_counts_as_gvisor(tmp_path: Path, value: object) -> None:
    """A statement that does not say (an older farm, another signer) or says it in another
    type is refused too, even when signed by the right key."""
    artifact, envelope, store = attested(tmp_path)
    statement = json.loads(base64.b64decode(json.loads(envelope.read_text())["payload"]))
    params = statement["predicate"]["buildDefinition"]["internalParameters"]
    if value == "absent":
        del params["insecureRuntime"]
    else:
        params["insecureRuntime"] = value
    key = load_or_create_key(store.home)
    resigned = tmp_path / "resigned.json"
    resigned.write_text(json.dumps(sign(PAYLOAD_TYPE, json.dumps(statement).encode(), key)))
    with pytest.raises(VerificationError, match=r"not gVisor|does not say the build ran in gVisor"):
        verify(artifact, resigned, key.public_key(), [])
    assert (
        "WITHOUT gVisor"
        in verify(artifact, resigned, key.public_key(), [], allow_insecure_runtime=True)[1]
    )


def test_editing_the_signed_runtime_breaks_the_signature(tmp_path: Path) -> None:
    artifact, envelope_file, store = attested(tmp_path, runtime="runc", insecure_runtime=True)
    envelope = json.loads(envelope_file.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["buildDefinition"]["internalParameters"]["insecureRuntime"] = False
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    envelope_file.write_text(json.dumps(envelope))
    with pytest.raises(VerificationError, match="no signature"):
        verify(artifact, envelope_file, load_public_key(public_key_path(store.home)), [])
