"""``farm verify ARTIFACT --provenance FILE``: is this the artifact farm attested, and
did its build meet the consumer's policy?

Callers: ``farm.cli``. Checks, in order: the DSSE signature against the installation's
public key (or ``--key``), the statement and predicate types, that the artifact's sha256
is one of the subjects, that the build ran in gVisor (the signed ``insecureRuntime``;
``--allow-insecure-runtime`` accepts a ``--insecure-runtime`` build), then each
``--require``. Any failure raises VerificationError (exit 1) naming what did not hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from farm.digests import file_sha256
from farm.errors import InputError, VerificationError
from farm.provenance import (
    BLOCKED_ACTIONS,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    REPRODUCIBILITY,
    STATEMENT_TYPE,
    byproduct,
)
from farm.signing import keyid, open_envelope

REQUIREMENTS = ("reproducible", "no-network", "cold")


def verify(
    artifact: Path,
    envelope_file: Path,
    key: Ed25519PublicKey,
    require: list[str],
    *,
    allow_insecure_runtime: bool = False,
) -> list[str]:
    """Lines saying what was verified. Raises VerificationError, or InputError for a
    missing file or an unknown requirement (before checking anything)."""
    unknown = sorted(set(require) - set(REQUIREMENTS))
    if unknown:
        raise InputError(f"--require {', '.join(unknown)}: choose from {', '.join(REQUIREMENTS)}")
    envelope = _read_json(envelope_file)
    statement = _statement(open_envelope(envelope, key, PAYLOAD_TYPE))
    sha = _sha256(artifact)
    subjects = statement.get("subject", [])
    names = [s.get("name") for s in subjects if s.get("digest", {}).get("sha256") == sha]
    if not names:
        raise VerificationError(f"{artifact}: sha256 {sha} is not a subject of this provenance")
    build = statement["predicate"].get("runDetails", {}).get("metadata", {}).get("invocationId")
    lines = [
        f"verified: {artifact} (sha256:{sha}) is {names[0]} of build {build}, "
        f"signed by {keyid(key)}"
    ]
    lines.append(_runtime(statement, allow_insecure_runtime))
    lines += [_require(statement, name) for name in require]
    return lines


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"--provenance {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise VerificationError(f"{path} is not JSON ({exc}); it is not a farm envelope") from None


def _statement(payload: bytes) -> dict[str, Any]:
    try:
        statement = json.loads(payload)
    except ValueError:
        raise VerificationError("the signed payload is not JSON") from None
    if statement.get("_type") != STATEMENT_TYPE:
        raise VerificationError(f"statement _type is {statement.get('_type')!r}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise VerificationError(f"predicateType is {statement.get('predicateType')!r}")
    return statement


def _sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise InputError(f"artifact {path}: {exc.strerror}") from None


def _runtime(statement: dict[str, Any], allow_insecure: bool) -> str:
    """The build ran in gVisor, as the signed statement says; else refuse unless allowed.

    Only an explicit ``insecureRuntime: false`` counts as gVisor: a statement without it
    (another signer's, or an older farm's) does not say, so it is refused the same way.
    """
    params = statement["predicate"].get("buildDefinition", {}).get("internalParameters", {})
    runtime = params.get("runtime")
    if params.get("insecureRuntime") is False:
        return f"runtime {runtime} (gVisor)"
    if params.get("insecureRuntime") is True:
        problem = f"the build ran with runtime {runtime!r}, not gVisor (--insecure-runtime)"
    else:
        problem = "the provenance does not say the build ran in gVisor (no insecureRuntime)"
    if allow_insecure:
        return f"WARNING: accepted WITHOUT gVisor ({problem}) because of --allow-insecure-runtime"
    raise VerificationError(
        f"{problem}: its code ran on the host kernel. Rebuild without --insecure-runtime, "
        "or pass --allow-insecure-runtime to accept it"
    )


def _cold(statement: dict[str, Any]) -> str:
    """Built from nothing but its source and image: no dependency layer (farm.layers).
    Only an explicit null counts: a statement without the field does not say."""
    params = statement["predicate"].get("buildDefinition", {}).get("internalParameters", {})
    if "dependencyLayer" not in params:
        raise VerificationError(
            "requirement cold not met: the provenance does not say whether the build used "
            "a dependency layer (made by an older farm); rebuild it"
        )
    layer = params["dependencyLayer"]
    if layer is not None:
        what = layer.get("id") if isinstance(layer, dict) else layer
        digest = layer.get("digest") if isinstance(layer, dict) else "?"
        raise VerificationError(
            f"requirement cold not met: the build started from dependency layer {what} "
            f"({digest}); rebuild without --layer (or with --check, which is always cold)"
        )
    return "requirement cold: built without a dependency layer"


def _require(statement: dict[str, Any], name: str) -> str:
    if name == "cold":
        return _cold(statement)
    if name == "reproducible":
        verdict = byproduct(statement, REPRODUCIBILITY) or {}
        if not verdict.get("reproducible") or verdict.get("runs", 0) < 2:
            raise VerificationError(
                f"requirement reproducible not met: the check said {verdict.get('result')!r} "
                "(build with `farm build --check 2`)"
            )
        return f"requirement reproducible: verified {verdict['runs']}x reproducible"
    report = byproduct(statement, BLOCKED_ACTIONS) or {}
    if not report.get("observed"):
        raise VerificationError(
            "requirement no-network not met: the build was not observed, so network "
            "attempts cannot be ruled out (build without `--no-observe`)"
        )
    if not report.get("complete", True):
        raise VerificationError(
            "requirement no-network not met: gVisor's record of the build lost events, "
            "so network attempts cannot be ruled out"
        )
    listed = len([a for a in report.get("actions", []) if a.get("kind") == "network"])
    counted = report.get("by_kind")
    if not isinstance(counted, dict) and report.get("unlisted"):
        raise VerificationError(
            "requirement no-network not met: the record does not list every action, "
            "so network attempts cannot be ruled out"
        )
    attempts = max(listed, int(counted.get("network", 0))) if isinstance(counted, dict) else listed
    if attempts:
        raise VerificationError(
            f"requirement no-network not met: {attempts} network attempts were blocked"
        )
    return "requirement no-network: observed, no network attempts"
