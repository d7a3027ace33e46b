"""Signed SLSA v1 provenance of a build: an in-toto Statement in a DSSE envelope.

Callers: ``farm.buildflow`` attests every succeeded build (after its reproducibility
check, so the verdict is in it), ``farm.k8s.reconcile`` every succeeded cluster build;
``farm.verify`` reads what this writes; ``farm provenance ID`` prints it. Field
meanings: https://slsa.dev/spec/v1.0/provenance and docs/provenance.md (farm's buildType).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

from farm import __version__, tomlread
from farm.collect import open_no_follow
from farm.policy import HOSTNAME, baseline_env
from farm.records import BuildRecord, LockResolution
from farm.reprocheck import REPORT_PATH
from farm.signing import keyid, load_or_create_key, sign
from farm.snapshot import digest as source_digest
from farm.spec import BuildSpec
from farm.store import Store

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "urn:farm:buildtype:sandboxed-build:v1"
#: A Cargo.lock read from a source tree is cut here (as the runner keeps at most 16 MiB).
MAX_LOCK_TEXT = 16 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Names of farm's byproducts; ``farm verify --require`` reads them.
BLOCKED_ACTIONS = "farm/blocked-actions"
REPRODUCIBILITY = "farm/reproducibility"


def attest(
    record: BuildRecord, spec: BuildSpec, store: Store, home: Path, builder_kind: str = "local"
) -> str:
    """Sign ``record``'s provenance, store the envelope; return and record its sha256.

    ``builder_kind`` names the kind of installation in the builder id ("local", or
    "kubernetes" for the controller); the key is the one in ``home``.
    """
    key = load_or_create_key(home)
    short = keyid(key.public_key()).removeprefix("sha256:")[:16]
    builder = f"urn:farm:builder:{builder_kind}:{short}"
    lock = lockfile(record, spec, store)
    body = json.dumps(statement(record, spec, builder, lock), sort_keys=True).encode()
    envelope = sign(PAYLOAD_TYPE, body, key)
    sha, _ = store.put_bytes(json.dumps(envelope, indent=2).encode() + b"\n")
    record.provenance_sha256 = sha
    store.save(record)
    return sha


def statement(
    record: BuildRecord, spec: BuildSpec, builder_id: str, lock: str | None = None
) -> dict[str, Any]:
    """``lock`` is the text of the Cargo.lock that was built (``lockfile``), if any."""
    subjects = [a for a in record.artifacts if a.path != REPORT_PATH]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": a.path, "digest": {"sha256": a.sha256}} for a in subjects],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": record.spec,
                "internalParameters": {
                    "runtime": record.runtime,
                    # Signed, so `farm verify` can refuse a build that ran without gVisor.
                    "insecureRuntime": record.insecure_runtime,
                    "network": "none",
                    "hostname": HOSTNAME,
                    "environment": baseline_env(spec),
                    # Signed, so `farm verify --require cold` can refuse a build that
                    # started from a dependency layer (null: a cold build).
                    "dependencyLayer": _layer(record),
                },
                "resolvedDependencies": _dependencies(record, spec, lock),
            },
            "runDetails": {
                "builder": {"id": builder_id, "version": {"farm": __version__}},
                "metadata": {
                    "invocationId": record.id,
                    "startedOn": _time(record.created_at),
                    "finishedOn": _time(record.finished_at or record.created_at),
                },
                "byproducts": _byproducts(record),
            },
        },
    }


def _layer(record: BuildRecord) -> dict[str, str] | None:
    if record.layer is None:
        return None
    return {
        "id": record.layer.id,
        "digest": record.layer.digest,
        "builtBy": record.layer.built_by,
    }


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _hex(digest: str | None) -> str:
    return (digest or "").removeprefix("sha256:")


def _dependencies(record: BuildRecord, spec: BuildSpec, lock: str | None) -> list[dict[str, Any]]:
    deps: list[dict[str, Any]] = [
        _source(record, spec),
        {
            "name": f"image:{record.image}",
            "uri": f"docker-image:{record.image}",
            "digest": {"sha256": _hex(record.image_id)},
        },
    ]
    if record.lock_resolution is not None:
        deps.append(resolved_lock(record.lock_resolution))
    if record.fetched is not None:
        return deps + fetched(record)
    return deps + (crates(lock) if lock else [])


def resolved_lock(resolution: LockResolution) -> dict[str, Any]:
    """The Cargo.lock farm wrote (``--resolve-lock``): by whom, against which mirror."""
    return {
        "name": "Cargo.lock",
        "digest": {"sha256": resolution.lock_sha256},
        "annotations": {
            "resolvedBy": resolution.resolved_by,
            "mirror": resolution.mirror,
            "image": resolution.image,
            "note": resolution.describe(),
        },
    }


def fetched(record: BuildRecord) -> list[dict[str, Any]]:
    """Each package the fetch phase downloaded: its checksum is the lock's, which the
    bytes were verified against, and the registry is where they came from."""
    return [
        {
            "name": p.name,
            "uri": f"pkg:{p.ecosystem}/{p.name}@{p.version}",
            "digest": {"sha256": p.sha256} if p.sha256 else {"gitCommit": p.commit or ""},
            "annotations": {
                "source": p.source,
                "registry": p.registry,
                "registryIndex": p.index,
                "fetchedBy": "farm fetch phase (verified against the lockfile)",
            },
        }
        for p in record.fetched or []
    ]


def lockfile(record: BuildRecord, spec: BuildSpec, store: Store) -> str | None:
    """The Cargo.lock that was built, from the store: a cluster build's as its collector
    uploaded it, a local build's as the runner kept it from the snapshot. A record made
    before the runner kept it falls back to the source, only if that is still what was
    built and never through a link."""
    if record.lockfile_sha256:
        return store.blob_path(record.lockfile_sha256).read_text(errors="replace")
    if not isinstance(spec.source, Path):
        return None
    # A record from before the runner kept the snapshot's: read the tree, never through
    # a link (a tenant's Cargo.lock may point at a file only root can read).
    if source_digest(spec.source) != record.source_digest:
        return None
    try:
        with open_no_follow(spec.source / "Cargo.lock") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            return fh.read(MAX_LOCK_TEXT).decode(errors="replace")
    except OSError:
        return None


def _source(record: BuildRecord, spec: BuildSpec) -> dict[str, Any]:
    """The source as the spec names it: a local tree by farm's snapshot digest, or a
    source that describes itself (a cluster build's git URL and full commit id,
    ``farm.k8s.resource.GitSource``), so no host path is read for it."""
    if not isinstance(spec.source, Path):
        return dict(spec.source.descriptor())
    return {
        "name": "source",
        "uri": spec.source.as_uri(),
        "digest": {"sha256": _hex(record.source_digest)},
        "annotations": {"digestOf": "farm snapshot manifest (docs/reproducibility.md)"},
    }


def crates(lock: str) -> list[dict[str, Any]]:
    """Each registry or git package in Cargo.lock's text; local packages are part of the
    source. A lockfile that is not TOML lists none (it did not build with cargo anyway)."""
    try:
        packages = tomlread.loads(lock).get("package", [])
    except tomllib.TOMLDecodeError:
        return []
    out = []
    for p in packages if isinstance(packages, list) else []:
        if not _registry_package(p):
            continue
        entry: dict[str, Any] = {
            "name": p["name"],
            "uri": f"pkg:cargo/{p['name']}@{p['version']}",
            "annotations": {"source": p["source"]},
        }
        checksum = str(p.get("checksum", ""))
        if _SHA256.fullmatch(checksum):
            entry["digest"] = {"sha256": checksum}
        elif checksum:  # Debian's vendored crates say "Could not get crate checksum"
            entry["annotations"]["checksum"] = checksum
        out.append(entry)
    return out


def _registry_package(entry: object) -> bool:
    """A well-formed ``[[package]]`` with a source. A cluster build's lockfile comes from
    the repository: a malformed entry is skipped rather than stop the controller signing."""
    keys = ("name", "version", "source")
    return isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in keys)


def _byproducts(record: BuildRecord) -> list[dict[str, Any]]:
    obs = record.observation
    blocked = {
        "observed": obs is not None,
        # A record with lost events cannot prove the absence of an attempt (audit mode
        # signs such a build; enforce mode quarantines it).
        "complete": obs is not None and obs.complete and obs.lost == 0,
        "mode": obs.mode if obs else None,
        "actions": record.blocked_actions,
        # The listing is capped (farm.observe.verdict); these count every action.
        "unlisted": obs.unlisted if obs else 0,
        "by_kind": obs.by_kind if obs else {},
    }
    repro = (
        record.reproducibility.model_dump(mode="json")
        if record.reproducibility
        else {"reproducible": False, "result": "not checked", "runs": 1}
    )
    out = [_json_descriptor(BLOCKED_ACTIONS, blocked), _json_descriptor(REPRODUCIBILITY, repro)]
    if record.log_sha256:
        out.append({"name": "build.log", "digest": {"sha256": record.log_sha256}})
    verdict = record.reproducibility
    if verdict and verdict.diffoscope_sha256:
        report = {"sha256": verdict.diffoscope_sha256}
        out.append({"name": REPORT_PATH, "digest": report, "mediaType": "text/plain"})
    return out


def _json_descriptor(name: str, value: Any) -> dict[str, Any]:
    data = json.dumps(value, sort_keys=True).encode()
    return {
        "name": name,
        "mediaType": "application/json",
        "digest": {"sha256": hashlib.sha256(data).hexdigest()},
        "content": base64.b64encode(data).decode(),
    }


def byproduct(statement_: dict[str, Any], name: str) -> Any:
    """The decoded JSON content of byproduct ``name``, or None if absent."""
    for item in statement_.get("predicate", {}).get("runDetails", {}).get("byproducts", []):
        if item.get("name") == name and "content" in item:
            return json.loads(base64.b64decode(item["content"]))
    return None
