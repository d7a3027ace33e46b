"""A cluster build's blocked actions, out of its Build's status and into the
controller's store.

Callers: ``farm.k8s.reconcile`` (:func:`stash` as soon as it accepts a run's
node-monitor record, :func:`stored` when it judges the run) and ``farm blocked`` in
``farm.cli`` (:func:`read`, on the controller's ``FARM_HOME``).

The node monitor can only reach the controller through the Build's status, so its
record arrives there with its actions listed. Left there, every action (paths, argv,
addresses of a tenant's build) is readable by anyone who may read Builds in that
namespace, and sits in etcd for the Build's life. So the controller moves the listing
into its content-addressed store under the sha256 of its canonical JSON, and the status
keeps that digest (``observation.actionsSha256``), how many it holds (``listed``) and
bounded counts (``blockedBySeverity``; the node monitor's ``blocked`` and
``blockedByKind`` stay). The verdict is then judged from the stored list; a digest
whose blob is missing or does not match makes the record incomplete (so enforce mode
quarantines) rather than clean.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable

from pydantic import TypeAdapter, ValidationError

from farm.errors import NotFoundError
from farm.k8s.resource import MAX_SEVERITIES, ObservationStatus, RunStatus
from farm.observe.classify import BlockedAction
from farm.store import Store

_ACTIONS = TypeAdapter(list[BlockedAction])
#: The severity key of an action that has none, and the key for those past the cap.
NORMAL, OTHER = "normal", "other"


def canonical(actions: Iterable[BlockedAction]) -> bytes:
    """The list as canonical JSON (sorted keys, no spaces, UTF-8): its sha256 is the
    digest the status names."""
    listed = [a.model_dump(mode="json") for a in actions]
    return json.dumps(listed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def by_severity(actions: Iterable[BlockedAction]) -> dict[str, int]:
    """Counts by severity: at most MAX_SEVERITIES keys of at most 32 characters, the
    rarest beyond the cap counted under ``other``."""
    counts = Counter((a.severity or NORMAL)[:32] for a in actions)
    if len(counts) <= MAX_SEVERITIES:
        return dict(counts)
    kept = dict(counts.most_common(MAX_SEVERITIES - 1))
    kept[OTHER] = kept.get(OTHER, 0) + sum(n for k, n in counts.items() if k not in kept)
    return kept


def stash(store: Store, state: RunStatus) -> None:
    """Move the run's listed actions from its status into ``store`` (idempotent: a
    record already moved, or one without actions, is left as it is)."""
    seen = state.observation
    if seen is None or not seen.actions:
        return
    sha, _ = store.put_bytes(canonical(seen.actions))
    state.blockedBySeverity = by_severity(seen.actions)
    seen.actionsSha256, seen.listed, seen.actions = sha, len(seen.actions), []


def stored(store: Store, seen: ObservationStatus) -> tuple[ObservationStatus, list[BlockedAction]]:
    """The record and its actions as judged: from the status if still listed there,
    else from the store by digest. A stored list that is missing or does not match
    its digest gives the record marked incomplete, never a clean one."""
    if seen.actions or not seen.actionsSha256:
        return seen, list(seen.actions)
    try:
        return seen, read(store, seen.actionsSha256)
    except NotFoundError as exc:
        problem = "; ".join(p for p in (seen.problem, str(exc)) if p)
        return seen.model_copy(update={"complete": False, "problem": problem}), []


def read(store: Store, digest: str) -> list[BlockedAction]:
    """The stored list named by ``digest`` (hex sha256, ``sha256:`` prefix allowed).
    Raises NotFoundError if it is not in the store or is not such a list."""
    sha = digest.removeprefix("sha256:").lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise NotFoundError(f"{digest!r} is not a sha256 digest (64 hex characters)")
    path = store.blob_path(sha)
    try:
        data = path.read_bytes()
    except OSError:
        raise NotFoundError(
            f"blocked actions {sha} are not in this store (run this on the controller's "
            "FARM_HOME, the farm-store volume; `farm gc` removes them with the Build's records)"
        ) from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise NotFoundError(f"blocked actions {sha}: the stored blob does not match its digest")
    try:
        return _ACTIONS.validate_json(data)
    except ValidationError:
        raise NotFoundError(f"blob {sha} is not a list of blocked actions") from None


def render(actions: list[BlockedAction]) -> str:
    """One line per action, for ``farm blocked`` (``--json`` gives every field)."""
    if not actions:
        return "no blocked actions"
    lines = []
    for a in actions:
        who = f"{a.package or 'unknown'}" + (f" {a.version}" if a.version else "")
        extra = f" [severity {a.severity}]" if a.severity else ""
        lines.append(f"{a.kind}: {a.operation} {a.target} by {who} ({a.role}){extra}")
    return "\n".join(lines)
