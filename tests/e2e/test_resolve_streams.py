"""farm.fetch.resolve reads the lock from one ordered stream. trixie's cargo prints
progress on stderr while it resolves ("Locking 3 packages…", "Adding leaf v1.2.0
(available: v2.0.0)"); docker delivers stdout and stderr through separate pipes, so
before the script joined them those lines landed inside the lock now and then (hexyl on
farm/rust:trixie: 4 of 12 resolutions were "not valid TOML"). Resolved repeatedly here, in
real gVisor with trixie's cargo, every lock must parse."""

from __future__ import annotations

from pathlib import Path

from farm.mirror.store import Mirror
from farm.settings import Settings

from .test_resolve_lock import _crate, _project

RUNS = 12


def test_every_resolution_with_cargo_talking_on_stderr_parses(home: Path, tmp_path: Path) -> None:
    from farm.fetch.resolve import resolve_lock

    mirror = Mirror(tmp_path / "mirror").create()
    for version in ("1.0.0", "1.2.0", "2.0.0", "3.0.0"):
        mirror.add_crate(_crate("leaf", version), "file")
    for name in ("a", "b", "c", "d", "e", "f"):
        mirror.add_crate(_crate(name, "0.1.0", '[dependencies]\nleaf = "1.0"\n'), "file")
        mirror.add_crate(_crate(name, "0.2.0"), "file")
    deps = "".join(f'{n} = "0.1"\n' for n in "abcdef") + 'leaf = "1.0"\n'
    src = _project(tmp_path / "app", deps)
    settings = Settings.from_env({"FARM_HOME": str(home)})
    for _ in range(RUNS):
        done = resolve_lock(src, mirror.path, settings=settings, image="farm/rust:trixie")
        locked = {(p.name, p.version) for p in done.lockfile.packages}
        assert ("leaf", "1.2.0") in locked and ("a", "0.1.0") in locked
        assert "Adding" not in done.text and "Locking" not in done.text
