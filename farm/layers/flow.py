"""A build that starts from its project's dependency layer, making the layer first if
there is none.

Callers: ``farm.buildflow.run_build`` (``farm build --layer``), after the result cache
missed and only for a build that is neither ``--no-cache`` nor ``--check`` (check runs
are always cold). The rules (docs/layers.md):

- a layer comes only from a dependency build that succeeded, was observed completely
  and did nothing blocked (``farm.cache.uncacheable_reason``, plus "observed");
- its key names the tenant, the skeleton's files (Cargo.lock, the manifests' dependency
  sections, features and profiles, .cargo/config), the image id, runtime, profile,
  target, argv and environment (RUSTFLAGS among it), where the crates come from (the
  image or the spec's registry), and farm's version;
- the build that uses it records it, and provenance names it (farm.provenance);
- only a build command whose dependency build the ecosystem can reproduce gets one
  (``Ecosystem.layer_argv``: for cargo, the default command plus selection flags such
  as ``--no-default-features`` or ``--bin``, repeated in the dependency build); any
  other runs cold with a "layer: not used: ..." line. ``Ecosystem.check_layer_argv``
  refuses such a command from argv alone, before any skeleton is planned.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from farm import ecosystems
from farm.cache import BUILDER_VERSION, uncacheable_reason
from farm.ecosystems import NoLayer
from farm.layers.store import Layer, LayerStore, layer_key
from farm.policy import BuildDirs, baseline_env, sandbox_for
from farm.records import BuildRecord, LayerUse
from farm.runner import LayerPlan, Runner
from farm.snapshot import remove_tree
from farm.spec import BuildSpec


def build_with_layer(
    runner: Runner, spec: BuildSpec, build_id: str | None = None
) -> tuple[BuildRecord, list[str]]:
    """Build ``spec`` (resolved) from its layer; returns the record and lines for the user."""
    ecosystem = ecosystems.detect(spec.source, runner.within(spec))
    if ecosystem is None:
        return runner.build(spec, build_id), [
            "layer: not used: the source is no project of an ecosystem farm knows"
        ]
    try:
        ecosystem.check_layer_argv(spec.argv or [])  # a refused flag plans no skeleton
        files = ecosystem.layer_skeleton(spec.source, runner.within(spec))
        deps_argv = ecosystem.layer_argv(files, spec.argv or [])
    except NoLayer as exc:
        return runner.build(spec, build_id), [f"layer: not used: {exc}"]
    key = key_for(runner, spec, files)
    store = LayerStore(runner.settings.home)
    said = []
    layer = store.find(key, spec.tenant)
    if layer is None:
        layer, line = make_layer(runner, spec, files, key, deps_argv)
        said.append(line)
    record = runner.build(spec, build_id, layers=LayerPlan(use=layer))
    if record.layer:
        said.append(f"layer: started from {record.layer.id} (built by {record.layer.built_by})")
    return record, said


def key_for(runner: Runner, spec: BuildSpec, files: dict[str, bytes]) -> str:
    """The layer key of ``spec`` with skeleton ``files``. Raises as preflight does."""
    sandbox = sandbox_for(spec, "layer-key", BuildDirs(Path("/nonexistent")), runner.settings)
    env = {k: v for k, v in baseline_env(spec).items() if k != "SOURCE_DATE_EPOCH"}
    return layer_key(
        {
            "tenant": spec.tenant,
            "files": {p: hashlib.sha256(c).hexdigest() for p, c in sorted(files.items())},
            "image": runner.backend.preflight(sandbox),
            "runtime": runner.settings.effective_runtime,
            "argv": spec.argv,
            "profile": "release",
            "target": "host",
            "env": sorted({**spec.env, **env}.items()),
            "builder": BUILDER_VERSION,
            # Where the crate bytes come from: the image's vendored directory source, or
            # one of the operator's registries (fetched, checked against Cargo.lock). cargo
            # fingerprints a dependency by version, not source, so the two must not share.
            "source": f"registry:{spec.registry}" if spec.registry else "image",
        }
    )


def make_layer(
    runner: Runner, spec: BuildSpec, files: dict[str, bytes], key: str, deps_argv: list[str]
) -> tuple[Layer | None, str]:
    """Build the skeleton with ``deps_argv`` (``Ecosystem.layer_argv``) in its own
    sandbox and keep its target tree if the build was clean. Returns the layer (None if
    not kept) and a line saying what happened."""
    store = LayerStore(runner.settings.home)
    work = runner.settings.work_dir / f"skeleton-{secrets.token_hex(6)}"
    kept: list[Layer] = []

    def keep(record: BuildRecord, target: Path) -> None:
        layer = keep_if_clean(store, key, spec.tenant, record, target)
        kept.extend([layer] if layer else [])

    runner.settings.work_dir.mkdir(parents=True, exist_ok=True)
    write_files(files, work)
    try:
        deps_spec = spec.model_copy(
            update={"source": work, "argv": deps_argv, "outputs": ["out/**"]}
        )
        record = runner.build(deps_spec, layers=LayerPlan(keep=keep))
    finally:
        remove_tree(work)
    if kept:
        return kept[0], f"layer: built {kept[0].id} from dependency build {record.id}"
    return None, f"layer: dependency build {record.id} {record.status.value}; building cold"


def layer_refusal(record: BuildRecord) -> str | None:
    """Why ``record``'s target tree must not become a layer, or None: the cache's rule
    (succeeded, gVisor, nothing blocked, a complete record, not unreproducible), and
    observed at all."""
    reason = uncacheable_reason(record)
    if reason is None and record.observation is None:
        reason = "the build was not observed (--no-observe)"
    return reason


def keep_if_clean(
    store: LayerStore, key: str, tenant: str, record: BuildRecord, target: Path
) -> Layer | None:
    """Keep ``target`` as the layer ``key`` if ``record`` is clean; notes either way."""
    reason = layer_refusal(record)
    if reason:
        record.notes.append(f"dependency layer not kept: {reason}")
        return None
    layer = store.keep(key, tenant, target, record.id)
    record.layer_kept = LayerUse(
        id=layer.id, key=layer.key, digest=layer.digest, built_by=record.id
    )
    record.notes.append(f"kept as dependency layer {layer.id} ({layer.digest})")
    return layer


def write_files(files: dict[str, bytes], dest: Path) -> None:
    """Write a skeleton's files under ``dest`` (a new directory farm owns)."""
    dest.mkdir(mode=0o755)
    for rel, content in sorted(files.items()):
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
