"""Admission: what an operator lets a BuildSpec ask for, decided in one place.

Callers: ``farm.buildflow`` and ``farm.runner`` (every local build: the image
allowlist), ``farm.service``/``farm.api`` (``farm serve``: ceilings and images, 400 on
submit) and ``farm.k8s.reconcile`` (the controller: ceilings and images, a Failed
Build). Each asks :meth:`Admission.check` before anything is created.

A BuildSpec bounds its fields only by what the sandbox can enforce at all (memory up to
256g, any ``max_total``); a tenant or a Build author chooses freely within that. The
operator's :class:`Ceilings` bound them by what the installation can afford, and the
:class:`ImageAllowlist` says which images builds may run (farm.imageref has the matching
rule). A local ``farm build`` has no operator and no ceilings; its allowlist comes from
``FARM_ALLOWED_IMAGES`` (``farm.settings``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from farm import imageref
from farm.errors import InputError, NotAdmittedError
from farm.settings import DEFAULT_IMAGE, Settings
from farm.spec import BuildSpec, Size, parse_size

#: Where an operator changes the allowlist of a local ``farm build``.
LOCAL_IMAGES_HINT = (
    "an operator can change the allowed images with FARM_ALLOWED_IMAGES "
    "(comma-separated patterns, docs/sandbox.md)"
)


class Ceilings(BaseModel):
    """The most a spec may ask for, keyed by the name of the spec field each one bounds
    (in ``resources``, ``limits`` or the spec itself). A ceiling whose field the spec
    does not have is ignored, so one named for a newer field is harmless. The defaults
    admit the default BuildSpec with room to spare and keep one build within a
    16 GiB / 8-core share of a host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float = Field(8.0, gt=0)
    memory: Size = Field(16 << 30, ge=1)
    pids: int = Field(4096, ge=1)
    scratch: Size = Field(4 << 30, ge=1, description="resources.scratch: /tmp")
    disk: Size = Field(32 << 30, ge=1, description="resources.disk: all a build writes")
    timeout_seconds: int = Field(7200, ge=1)
    max_file: Size = Field(1 << 30, ge=1)
    max_total: Size = Field(4 << 30, ge=1)
    max_files: int = Field(20_000, ge=1)
    log: Size = Field(16 << 20, ge=1)
    #: Runs of a reproducibility check: each is a whole build, so N runs cost N builds.
    check_runs: int = Field(3, ge=0, description="check: runs of a reproducibility check")

    def check(self, spec: BuildSpec, check_runs: int | None = None) -> list[str]:
        """One line per field of ``spec`` above its ceiling, naming value and ceiling.
        ``check_runs``: the runs asked for beside the spec (``farm serve``'s ``check``
        option); else the spec's own ``check`` field (a cluster Build's)."""
        runs = check_runs if check_runs is not None else getattr(spec, "check", 0)
        problems = []
        if runs > self.check_runs:
            problems.append(
                f"check: {runs} runs is above this installation's ceiling of "
                f"{self.check_runs}; ask for at most {self.check_runs}"
            )
        for where, values in (("resources.", spec.resources), ("limits.", spec.limits), ("", spec)):
            for name in type(values).model_fields:
                if name not in type(self).model_fields:
                    continue
                value, ceiling = getattr(values, name), getattr(self, name)
                if value > ceiling:
                    shown, most = self._show(name, value), self._show(name, ceiling)
                    problems.append(
                        f"{where}{name}: {shown} is above this installation's ceiling of "
                        f"{most}; ask for at most {most}"
                    )
        return problems

    def _show(self, name: str, value: Any) -> str:
        info = type(self).model_fields[name]
        sized = any(getattr(m, "func", None) is parse_size for m in info.metadata)
        return format_size(value) if sized else str(value)

    @classmethod
    def parse_items(cls, items: list[str], flag: str) -> Ceilings:
        """``["memory=16g", "cpus=4"]`` from the command line; raises InputError."""
        data: dict[str, str] = {}
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or not name or not value:
                raise InputError(f"{flag} {item!r}: use NAME=VALUE, e.g. memory=16g")
            data[name.strip()] = value.strip()
        try:
            return cls.model_validate(data)
        except ValueError as exc:
            raise InputError(f"{flag}: {_first_error(exc)}") from None


def format_size(size: int) -> str:
    """The shortest exact spelling parse_size reads back: ``16g``, ``512m``, ``1000``."""
    for suffix, unit in (("t", 1 << 40), ("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _pattern(value: str) -> str:
    try:
        imageref.parse(value, pattern=True)
    except imageref.ImageRefError as exc:
        raise ValueError(f"allowed image pattern: {exc}") from None
    return value


class ImageAllowlist(RootModel[list[str]]):
    """Patterns of the images builds may run (farm.imageref: canonical references,
    ``*`` inside one part). The default allows only farm's own builder image."""

    root: list[str] = Field(default_factory=lambda: [DEFAULT_IMAGE])

    @field_validator("root")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _pattern(pattern)
        return value

    def check(self, image: str) -> str | None:
        """None if ``image`` is allowed, else a line naming it and the allowed list."""
        allowed = ", ".join(self.root) or "(none)"
        try:
            ref = imageref.parse(image)
        except imageref.ImageRefError as exc:
            return f"image: {exc}; allowed: {allowed}"
        if any(imageref.matches(ref, imageref.parse(p, pattern=True)) for p in self.root):
            return None
        return f"image: {image!r} ({ref}) is not an allowed image here; allowed: {allowed}"

    @classmethod
    def parse(cls, patterns: tuple[str, ...], origin: str) -> ImageAllowlist:
        """Raises InputError naming ``origin`` (a flag or variable) for a bad pattern."""
        try:
            return cls.model_validate(list(patterns))
        except ValueError as exc:
            raise InputError(f"{origin}: {_first_error(exc)}") from None

    @classmethod
    def of_settings(cls, settings: Settings) -> ImageAllowlist:
        """The host's list (FARM_ALLOWED_IMAGES); raises InputError for a bad pattern."""
        return cls.parse(settings.allowed_images, "FARM_ALLOWED_IMAGES")


class Admission(BaseModel):
    """Ceilings (None: no operator, as for a local ``farm build``) and allowed images."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ceilings: Ceilings | None = Field(default_factory=Ceilings)
    allowed_images: ImageAllowlist = Field(default_factory=ImageAllowlist)
    #: Names of the operator's registries a spec may pick (farm serve --registries);
    #: None: not checked here (a local build's runner checks its own settings).
    registries: frozenset[str] | None = None

    def check(self, spec: BuildSpec, check_runs: int | None = None) -> list[str]:
        """Every reason to refuse ``spec``, one line each; empty if it is admitted."""
        problems = self.ceilings.check(spec, check_runs) if self.ceilings else []
        image = self.allowed_images.check(spec.image)
        problems = [*problems, image] if image else problems
        registries = self.registries
        if spec.registry is not None and registries is not None and spec.registry not in registries:
            known = ", ".join(sorted(registries)) or "none"
            problems.append(
                f"registry: {spec.registry!r} is not one of this installation's registries "
                f"(configured: {known})"
            )
        return problems

    def enforce(self, spec: BuildSpec, hint: str, check_runs: int | None = None) -> None:
        """Raises NotAdmittedError listing every problem; ``hint`` says who changes what."""
        problems = self.check(spec, check_runs)
        if problems:
            raise NotAdmittedError(problems, hint)


def check_local_image(settings: Settings, spec: BuildSpec) -> None:
    """The host's allowlist for a local build; raises NotAdmittedError (exit 2)."""
    Admission(ceilings=None, allowed_images=ImageAllowlist.of_settings(settings)).enforce(
        spec, LOCAL_IMAGES_HINT
    )


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    err = errors()[0]
    where = ".".join(str(p) for p in err["loc"] if p != "root")
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
