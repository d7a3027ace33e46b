"""Host-level settings of one farm installation.

Callers: ``farm.cli`` builds one ``Settings`` from the environment and passes it down;
nothing reads the environment anywhere else, so tests make their own ``Settings``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from farm.errors import InputError

if TYPE_CHECKING:  # read only when the operator configured registries (not on a cache hit)
    from farm.fetch.registry import Registry

#: Label put on every container, volume and image farm creates; cleanup selects on it.
MANAGED_LABEL = "io.farm.managed"
BUILD_LABEL = "io.farm.build"
#: A per-installation value, so two FARM_HOMEs on one host never reap each other's work.
HOME_LABEL = "io.farm.home"

DEFAULT_IMAGE = "farm/rust:bookworm"
#: farm's own builder images (farm.images: ``farm image build rust --suite S``); a local
#: build may use any of them unless FARM_ALLOWED_IMAGES says otherwise.
TOOLCHAIN_IMAGES = (DEFAULT_IMAGE, "farm/rust:trixie")
#: The uid/gid builds run as: not root, and not an id that exists on the host.
SANDBOX_UID = 10001


@dataclass(frozen=True)
class Settings:
    home: Path
    runtime: str = "runsc"
    #: Set only by ``--insecure-runtime``; the build record keeps it.
    insecure_runtime: str | None = None
    #: Record what gVisor saw (runtime ``runsc-observed``, see farm.observe). On by
    #: default: its measured cost is within noise (docs/performance.md).
    observe: bool = True
    docker_url: str | None = None
    default_image: str = DEFAULT_IMAGE
    log_cap_bytes: int = 4 * 1024 * 1024
    labels: dict[str, str] = field(default_factory=dict)
    #: A ``farm serve`` URL (FARM_SERVER): ``farm build`` submits there instead of
    #: building in-process. FARM_TOKEN is its bearer token, if it needs one.
    server: str | None = None
    token: str | None = None
    #: The images builds may run (farm.admission, farm.imageref patterns), from
    #: FARM_ALLOWED_IMAGES (comma- or space-separated); default farm's builder images.
    allowed_images: tuple[str, ...] = TOOLCHAIN_IMAGES
    #: The operator's registries by name (FARM_REGISTRIES: a JSON file, see
    #: farm.fetch.registry.load_registries; or FARM_REGISTRIES_JSON: the same list
    #: inline, as the cluster's fetch pod gets it); a spec may only name one of them.
    registries: dict[str, Registry] = field(default_factory=dict)
    #: ``farm build --resolve-lock DIR``: a farm mirror directory the snapshot's
    #: Cargo.lock is resolved against before the fetch phase (farm.fetch.resolve).
    resolve_mirror: Path | None = None
    #: Hosts git dependencies may be fetched from (FARM_GIT_HOSTS, comma- or
    #: space-separated; ``--git-host``). Empty: a lockfile's git dependency is refused.
    git_hosts: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        default_home = Path.home() / ".local" / "share" / "farm"
        home = Path(env.get("FARM_HOME") or default_home).expanduser().resolve()
        kwargs: dict[str, object] = {
            "home": home,
            "docker_url": env.get("DOCKER_HOST"),
            "server": env.get("FARM_SERVER") or None,
            "token": env.get("FARM_TOKEN") or None,
            "allowed_images": _words(env.get("FARM_ALLOWED_IMAGES")),
            "git_hosts": tuple(h.lower() for h in _words(env.get("FARM_GIT_HOSTS")) or ()) or None,
            "registries": _registries(env),
        }
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return cls(**kwargs)  # type: ignore[arg-type]

    @property
    def observing(self) -> bool:
        """Observation is asked for and possible: gVisor's trace needs gVisor."""
        return self.observe and not self.insecure_runtime

    @property
    def effective_runtime(self) -> str:
        if self.insecure_runtime:
            return self.insecure_runtime
        return f"{self.runtime}-observed" if self.observe else self.runtime

    @property
    def crate_cache(self) -> Path:
        """The shared, content-addressed cache of verified crates (farm.fetch.cache)."""
        return self.home / "crates"

    @property
    def work_dir(self) -> Path:
        return self.home / "work"

    @property
    def base_labels(self) -> dict[str, str]:
        return {MANAGED_LABEL: "true", HOME_LABEL: str(self.home), **self.labels}


def _words(value: str | None) -> tuple[str, ...] | None:
    """The operator's list; None (the default) when unset or empty."""
    words = tuple(w for w in re.split(r"[\s,]+", value or "") if w)
    return words or None


def _registries(env: Mapping[str, str]) -> dict[str, Registry] | None:
    if env.get("FARM_REGISTRIES") and env.get("FARM_REGISTRIES_JSON"):
        raise InputError("set FARM_REGISTRIES (a file) or FARM_REGISTRIES_JSON, not both")
    if not (env.get("FARM_REGISTRIES_JSON") or env.get("FARM_REGISTRIES")):
        return None
    from farm.fetch.registry import load_registries, parse_registries

    if env.get("FARM_REGISTRIES_JSON"):
        return parse_registries(env["FARM_REGISTRIES_JSON"], "FARM_REGISTRIES_JSON")
    return load_registries(Path(env["FARM_REGISTRIES"]))
