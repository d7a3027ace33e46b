"""Build the real Kubernetes custom-resource API server (apiextensions-apiserver) and
etcd from Debian's packages, for the tests under tests/k8s.

Callers: ``make apiserver`` (which ``make test`` runs) via ``python -m farm.devapiserver``,
and tests/k8s/realapi.py, which finds the binaries with :func:`binaries`. Nothing here
runs at import time.

The recipe (issue 13): Debian unstable packages Kubernetes 1.36's libraries with their
sources, so ``go build`` of ``k8s.io/apiextensions-apiserver`` in a sid chroot gives the
very server kube-apiserver embeds for custom resources, and the chroot's ``etcd`` is its
store. The chroot is made by ``mmdebstrap --variant=apt`` (apt checks every package
against the signed archive index), the build runs inside it with ``/proc`` mounted and
the network unused (``GO111MODULE=off``: every import comes from ``/usr/share/gocode``),
and only the two binaries and a record of the package versions are kept, in
``<repo>/.tools/apiserver`` (git-ignored) and in the machine's cache outside the clone
(:func:`shared_cache`). The chroot (about 4.3 GB) is removed.

Running it again is a no-op while both binaries match their recorded sha256 and the
recorded package pins equal :data:`PINS` (change a pin to rebuild); a fresh clone copies
a current machine cache instead of building.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from farm.digests import file_sha256
from farm.errors import InfrastructureError

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / ".tools" / "apiserver"
RECORD = "versions.json"
SUITE = "sid"
#: The packages the chroot is made of, pinned so the record says exactly which
#: Kubernetes the tests ran against. The archive here is a fixed snapshot; on a moving
#: sid, a vanished version fails mmdebstrap with apt's own "version not found".
PINS = {
    "golang-k8s-apiextensions-apiserver-dev": "0.36.4-1",
    "etcd-server": "3.5.30-2",
    "golang-go": "2:1.27~1",
}
EXTRA = ("ca-certificates",)
SERVER = "apiextensions-apiserver"
ETCD = "etcd"
#: The environment of ``go build`` inside the chroot: Debian's GOPATH layout, no module
#: downloads and no toolchain switch (both would need the network).
GO_ENV = {
    "PATH": "/usr/lib/go/bin:/usr/bin:/bin",
    "HOME": "/root",
    "GOROOT": "/usr/lib/go",
    "GOPATH": "/usr/share/gocode",
    "GO111MODULE": "off",
    "GOTOOLCHAIN": "local",
    "GOCACHE": "/tmp/gocache",
}


def shared_cache() -> Path:
    """The machine's copy outside any clone (``$XDG_CACHE_HOME/farm/apiserver``), so a
    fresh clone on the same machine (CI's) copies the binaries instead of rebuilding."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "farm" / "apiserver"


def binaries(dest: Path = DEST) -> tuple[Path, Path] | None:
    """(apiextensions-apiserver, etcd) if both are built, else None."""
    server, etcd = dest / SERVER, dest / ETCD
    return (server, etcd) if server.is_file() and etcd.is_file() else None


def current(dest: Path = DEST) -> bool:
    """Whether the cached binaries are complete, unmodified and built from :data:`PINS`."""
    record = dest / RECORD
    if binaries(dest) is None or not record.is_file():
        return False
    try:
        seen = json.loads(record.read_text())
    except json.JSONDecodeError:
        return False
    if seen.get("pins") != PINS:
        return False
    sums = seen.get("sha256", {})
    return all(sums.get(name) == file_sha256(dest / name) for name in (SERVER, ETCD))


def _run(argv: list[str], **kwargs: object) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        tail = (done.stderr or done.stdout)[-3000:]
        raise InfrastructureError(f"`{' '.join(argv[:4])} …` failed:\n{tail}")
    return done.stdout


def make_chroot(root: Path) -> None:
    """mmdebstrap a sid chroot with Go, the Kubernetes libraries and etcd into ``root``.
    The snapshot's sid Release file has expired, hence Check-Valid-Until."""
    include = ",".join([*(f"{p}={v}" for p, v in PINS.items()), *EXTRA])
    _run(
        [
            "mmdebstrap",
            "--variant=apt",
            "--quiet",
            '--aptopt=Acquire::Check-Valid-Until "false"',
            f"--include={include}",
            SUITE,
            str(root),
        ]
    )


@contextmanager
def proc_mounted(root: Path) -> Iterator[None]:
    """``/proc`` inside the chroot for the Go toolchain, unmounted afterwards, on
    failure too (a chroot left with a mount would make its removal reach the host)."""
    target = root / "proc"
    _run(["mount", "-t", "proc", "proc", str(target)])
    try:
        yield
    finally:
        _run(["umount", str(target)])


def go_build(root: Path) -> None:
    """``go build`` the server's ``main`` inside the chroot, offline."""
    argv = ["go", "build", "-o", f"/{SERVER}", f"k8s.io/{SERVER}"]
    _run(
        ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in GO_ENV.items()), *argv]
    )


def installed_versions(root: Path) -> dict[str, str]:
    """The chroot's versions of Go, etcd and every Kubernetes library package."""
    out = _run(["chroot", str(root), "dpkg-query", "-W", "-f", "${Package}\t${Version}\n"])
    rows = (line.split("\t") for line in out.splitlines() if "\t" in line)
    return {
        name: version
        for name, version in rows
        if name.startswith(("golang-k8s-", "golang-1.")) or name in ("golang-go", "etcd-server")
    }


def _place(root: Path, dest: Path, versions: dict[str, str]) -> None:
    sums = {}
    for name, src in ((SERVER, root / SERVER), (ETCD, root / "usr" / "bin" / ETCD)):
        _copy(src, dest / name)
        sums[name] = file_sha256(dest / name)
    record = {"suite": SUITE, "pins": PINS, "installed": versions, "sha256": sums}
    (dest / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp"
    shutil.copyfile(src, tmp)
    tmp.chmod(0o755 if dst.name != RECORD else 0o644)
    os.replace(tmp, dst)  # atomic: a test never sees half a binary


def _copy_all(src: Path, dst: Path) -> None:
    for name in (SERVER, ETCD, RECORD):  # the record last: it is what makes dst current
        _copy(src / name, dst / name)


def _drop(root: Path) -> None:
    if (root / "proc").is_mount():
        raise InfrastructureError(f"{root}/proc is still mounted; unmount it, then remove {root}")
    shutil.rmtree(root, ignore_errors=True)


def build(dest: Path = DEST, log: Callable[[str], None] = print) -> None:
    """Build both binaries into ``dest`` unless :func:`current`. Raises
    InfrastructureError naming the failed step."""
    cache = shared_cache()
    if current(dest):
        if cache != dest and not current(cache):
            _copy_all(dest, cache)
        return
    if cache != dest and current(cache):
        log(f"farm: copying {SERVER} and {ETCD} from {cache}")
        _copy_all(cache, dest)
        return
    for tool in ("mmdebstrap", "chroot", "mount"):
        if shutil.which(tool) is None:
            raise InfrastructureError(f"{tool} is missing; `apt-get install mmdebstrap` first")
    work = Path(tempfile.mkdtemp(prefix="farm-apiserver-"))
    root = work / "root"
    try:
        started = time.monotonic()
        log(f"farm: mmdebstrap {SUITE} with {', '.join(PINS)} into {root}")
        make_chroot(root)
        log(f"farm: chroot ready in {time.monotonic() - started:.0f} s; go build {SERVER}")
        started = time.monotonic()
        with proc_mounted(root):
            go_build(root)
        log(f"farm: built in {time.monotonic() - started:.0f} s; keeping it and etcd in {dest}")
        _place(root, dest, installed_versions(root))
    finally:
        _drop(work)
    if cache != dest:
        _copy_all(dest, cache)


if __name__ == "__main__":
    try:
        build()
    except InfrastructureError as exc:
        sys.exit(f"farm: {exc}")
