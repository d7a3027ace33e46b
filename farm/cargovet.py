"""Evidence for cargo-vet's ``safe-to-run`` criterion from one observed build.

Callers: ``farm report ID --cargo-vet`` (farm.cli). For each registry or git package of
the build's Cargo.lock that gVisor's complete record shows doing nothing blocked or
suspicious, it writes a note an auditor may quote in their own audit's ``notes``. It is
evidence, never a certification: farm writes no ``[[audits]]`` entry and no ``who``;
a person decides. The wording and its limits are in docs/observer.md ("cargo-vet
evidence"); :data:`NOTE` is the exact text.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from farm.observe.classify import BlockedAction
from farm.provenance import crates
from farm.records import BuildRecord, Status

CRITERION = "safe-to-run"
#: The note, per package version. Every field is from the build's record.
NOTE = (
    "Evidence for {criterion} (not an audit): farm build {build_id} ran `{argv}` "
    "in gVisor with no network, image {image} ({image_id}), Cargo.lock sha256:{lock}, "
    "on {date}. gVisor's record of that build is complete (no event lost), and it "
    "shows no blocked or suspicious action by {name} {version}: while its build script "
    "or proc macro ran (if it ran in this build), no open of a secret path (farm had "
    "planted fake credentials), no write outside target/ and /out, no network attempt "
    "or name lookup, no privileged operation, no process left behind. Limits: this "
    "build's features, target, profile and toolchain only; not the crate's behaviour at "
    "run time in a program; not what gVisor does not record (its own memory, its "
    "environment, CPU, the contents of what it writes); farm does not record whether "
    "the build script ran."
)


class PackageEvidence(BaseModel):
    name: str
    version: str
    source: str
    note: str


class VetEvidence(BaseModel):
    build_id: str
    criterion: str = CRITERION
    #: Why no package can be vouched for by this build ([] when some can).
    refused: list[str] = Field(default_factory=list)
    packages: list[PackageEvidence] = Field(default_factory=list)
    #: "name version" of lockfile packages with an action: no evidence for them.
    not_clean: list[str] = Field(default_factory=list)


def refusals(record: BuildRecord, lock: str | None) -> list[str]:
    """Why this build's record cannot speak for any package."""
    obs, why = record.observation, []
    if obs is None:
        why.append("the build was not observed (--no-observe)")
    elif not obs.complete or obs.lost:
        why.append(f"gVisor's record is incomplete ({obs.problem or f'{obs.lost} events lost'})")
    elif obs.unlisted:
        why.append(f"{obs.unlisted} actions are not listed in the record (over its cap)")
    if record.exit_code != 0 or record.status not in (Status.SUCCEEDED, Status.QUARANTINED):
        why.append(f"the build command did not finish ({record.status.value})")
    if record.insecure_runtime:
        why.append("the build ran without gVisor (--insecure-runtime)")
    if lock is None:
        why.append("the build has no Cargo.lock in the store")
    actions = [BlockedAction.model_validate(a) for a in record.blocked_actions]
    anonymous = [a for a in actions if not a.package]
    if anonymous:
        # Any package's process may have made an action farm could not attribute.
        why.append(f"{len(anonymous)} actions are attributed to no package")
    return why


def evidence(record: BuildRecord, lock: str | None) -> VetEvidence:
    """One note per lockfile package with no action, if the record can vouch at all."""
    result = VetEvidence(build_id=record.id, refused=refusals(record, lock))
    if result.refused or lock is None:
        return result
    actions = [BlockedAction.model_validate(a) for a in record.blocked_actions]
    # A macro's action may be by any macro its rustc had loaded: all are suspects.
    tried = {(a.package, a.version) for a in actions} | {
        (s, None) for a in actions for s in a.suspects
    }
    for entry in crates(lock):
        name, version = entry["name"], entry["uri"].rsplit("@", 1)[1]
        if (name, version) in tried or (name, None) in tried:
            result.not_clean.append(f"{name} {version}")
            continue
        note = NOTE.format(
            criterion=CRITERION,
            build_id=record.id,
            argv=" ".join(record.spec.get("argv") or []),
            image=record.image,
            image_id=record.image_id or "?",
            lock=record.lockfile_sha256 or "?",
            date=f"{record.created_at:%Y-%m-%d}",
            name=name,
            version=version,
        )
        source = entry["annotations"]["source"]
        result.packages.append(
            PackageEvidence(name=name, version=version, source=source, note=note)
        )
    return result


def render(ev: VetEvidence) -> str:
    """The human form: one block per package, its note quotable as is."""
    head = f"# farm build {ev.build_id}: evidence for cargo-vet's {ev.criterion} criterion"
    lines = [head, "# evidence for a person's audit, never an audit itself"]
    if ev.refused:
        lines += [f"# no evidence: {why}" for why in ev.refused]
        return "\n".join(lines)
    for p in ev.packages:
        lines += ["", f"{p.name} {p.version} ({p.source})", f"  notes = {_quoted(p.note)}"]
    if ev.not_clean:
        lines += ["", f"# no evidence (actions recorded): {', '.join(ev.not_clean)}"]
    if not ev.packages and not ev.not_clean:
        lines.append("# the Cargo.lock names no registry or git package")
    return "\n".join(lines)


def _quoted(text: str) -> str:
    """A TOML basic string, so the note pastes into audits.toml unchanged."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
