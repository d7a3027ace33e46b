"""BuildSpec: what a user asks farm to build, validated before anything is created.

Callers: ``farm.cli`` (flags and spec files) and the build runner. Every later stage
(policy, backends, cache, provenance) reads this model and nothing else.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from farm.errors import SpecError
from farm.settings import DEFAULT_IMAGE

#: Validation context key: the spec came to farm serve (see ``build_spec``).
SERVICE_SOURCE = "service_source"

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TENANT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: Output globs must start with one of these: the only dirs a build can write and keep.
OUTPUT_ROOTS = ("out", "target")
#: Names the policy sets itself; a spec may not override them (see farm.policy).
RESERVED_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TZ",
        "SOURCE_DATE_EPOCH",
        "CARGO_TARGET_DIR",
        "CARGO_HOME",
        "CARGO_INCREMENTAL",
        "TMPDIR",
        "USER",
        "FARM_OUT",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
    }
)

#: Read by glibc's loader and libc in every process that did not gain privilege by exec
#: (glibc's UNSECURE_ENVVARS). The sandbox's pid 1 (``timeout``, ``setpriv``: root in
#: gVisor, farm.backends.local.backstop) inherits the spec's environment, so one of
#: these would run or steer the tenant's code there (``LD_AUDIT=/src/x.so``); every
#: other ``LD_*`` name too, for what glibc adds later.
LOADER_ENV = frozenset(
    {
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_TRACE",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TZDIR",
    }
)


def parse_size(value: Any) -> int:
    """Turn ``512m``, ``2GiB`` or a plain integer into bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512m or 2g")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size; use bytes or a suffix k, m, g, t (e.g. 2g)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def format_size(value: int) -> str:
    """The shortest exact spelling ``parse_size`` reads back: ``64m``, ``10g``, ``4097``."""
    for suffix in "tgmk":
        if value and value % _UNITS[suffix] == 0:
            return f"{value // _UNITS[suffix]}{suffix}"
    return str(value)


Size = Annotated[int, BeforeValidator(parse_size)]
#: Default of resources.disk: hello-serde's release target/ is 159 MiB, a mid-size
#: workspace's debug target/ a few GiB (docs/sandbox.md, "Disk exhaustion").
DEFAULT_DISK = 10 << 30


class Resources(BaseModel):
    """Limits enforced by the sandbox. Under runsc ``pids`` counts host threads, so it
    must stay well above 64 (a single gcc needs more); memory contains a memory bomb."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float = Field(2.0, gt=0, le=64)
    memory: Size = Field(4 << 30, ge=256 << 20, le=256 << 30)
    pids: int = Field(512, ge=128, le=32768)
    scratch: Size = Field(1 << 30, ge=16 << 20, le=64 << 30, description="/tmp size")
    disk: Size = Field(
        DEFAULT_DISK,
        ge=64 << 20,
        le=1 << 40,
        description="what target/ and /out may hold together (one filesystem of this size)",
    )


class OutputLimits(BaseModel):
    """Caps on what a build may hand back, so a hostile build cannot fill the host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_file: Size = Field(512 << 20, ge=1, description="largest single artifact")
    max_total: Size = Field(2 << 30, ge=1, description="all artifacts together")
    max_files: int = Field(10_000, ge=1)
    log: Size = Field(4 << 20, ge=4096, description="stored log; the rest is cut and noted")


ActionKind = Literal["network", "fs_write_denied", "privilege", "sensitive_read", "persistence"]
Role = Literal["build script", "proc macro", "rustc", "other"]


class AllowRule(BaseModel):
    """Blocked actions this rule matches are recorded but never quarantine the build.

    Every field that is set must match (``fnmatch`` globs on strings), for example
    ``{package = "*-sys", role = "build script", executable = "*/cc"}``: the build
    scripts of ``-sys`` crates may run ``cc``, whatever cc then tries.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    package: str | None = None
    version: str | None = None
    role: Role | None = None
    kind: ActionKind | None = None
    operation: str | None = None
    target: str | None = None
    executable: str | None = None

    @model_validator(mode="after")
    def _not_everything(self) -> AllowRule:
        if not self.model_dump(exclude_none=True):
            fields = ", ".join(type(self).model_fields)
            raise ValueError(
                f"an allow rule needs at least one of {fields}; "
                'to record without quarantine use mode = "audit"'
            )
        return self


class ObservePolicy(BaseModel):
    """What an observed build's blocked actions mean (docs/observer.md, "Modes").

    ``enforce`` (the default): any blocked action no rule allows, or an incomplete
    record, quarantines the build: exit code 3, artifacts withheld. ``audit``: record
    everything, the build's own result stands.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["audit", "enforce"] = "enforce"
    allow: list[AllowRule] = Field(default_factory=list, max_length=256)


class BuildSpec(BaseModel):
    """One build. ``argv`` and ``outputs`` default from Cargo.toml for cargo projects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Path
    image: str = DEFAULT_IMAGE
    argv: list[str] | None = Field(None, min_length=1)
    env: dict[str, str] = Field(default_factory=dict, max_length=256)
    outputs: list[str] | None = Field(None, max_length=256)
    resources: Resources = Field(default_factory=Resources)
    limits: OutputLimits = Field(default_factory=OutputLimits)
    timeout_seconds: int = Field(1800, ge=1, le=86_400)
    tenant: str = "default"
    source_date_epoch: int | None = Field(None, ge=0)
    observe: ObservePolicy = Field(default_factory=ObservePolicy)
    #: The NAME of one of the operator's registries (farm.fetch.registry): its packages
    #: are fetched before the build. Never a URL: a spec must not aim farm's own
    #: process at an address (SSRF). None: no fetch phase (the image's crates only).
    registry: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")

    @field_validator("source")
    @classmethod
    def _source_is_dir(cls, value: Path, info: ValidationInfo) -> Path:
        if (info.context or {}).get(SERVICE_SOURCE):
            # farm serve: the tree is a tenant's. It is not looked at here (that would
            # follow its symlinks and tell apart what exists outside the tenant's
            # directory); farm.confine.SourcePolicy opens it, following nothing.
            if not value.is_absolute():
                raise ValueError(f"{str(value)!r} is not an absolute path")
            return value
        path = value.expanduser().resolve()
        if not path.is_dir():
            raise ValueError(f"{str(value)!r} is not a directory; pass the project's root")
        return path

    @field_validator("image")
    @classmethod
    def _image_ref(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]{0,254}", value):
            raise ValueError(f"{value!r} is not an image reference such as {DEFAULT_IMAGE}")
        return value

    @field_validator("argv")
    @classmethod
    def _argv_words(cls, value: list[str] | None) -> list[str] | None:
        for i, word in enumerate(value or []):
            if not word or "\0" in word:
                raise ValueError(f"argv[{i}] is empty or contains NUL")
        return value

    @field_validator("env")
    @classmethod
    def _env_allowlist(cls, value: dict[str, str]) -> dict[str, str]:
        for name, val in value.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid variable name")
            if name in RESERVED_ENV:
                raise ValueError(f"{name} is set by farm's sandbox policy; remove it")
            if name in LOADER_ENV or name.startswith("LD_"):
                raise ValueError(
                    f"{name} steers the C library of the sandbox's root pid 1; remove it"
                )
            if "\0" in val:
                raise ValueError(f"{name} contains NUL")
        return value

    @field_validator("outputs")
    @classmethod
    def _outputs_confined(cls, value: list[str] | None) -> list[str] | None:
        problems = [p for p in (_glob_problem(i, g) for i, g in enumerate(value or [])) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("tenant")
    @classmethod
    def _tenant_name(cls, value: str) -> str:
        if not TENANT_NAME.match(value):
            raise ValueError(f"{value!r}: use 1-63 lowercase letters, digits and '-'")
        return value


def _glob_problem(index: int, pattern: str) -> str | None:
    where = f"outputs[{index}]: {pattern!r}"
    if not pattern or "\0" in pattern or "\\" in pattern:
        return f"{where} is empty or has NUL or backslash"
    path = PurePosixPath(pattern)
    if path.is_absolute() or ".." in path.parts:
        return f"{where} escapes the output directory; use a path under out/ or target/"
    if path.parts[0] not in OUTPUT_ROOTS or len(path.parts) < 2:
        return f"{where} must start with out/ or target/ (e.g. target/release/app)"
    return None


def build_spec(data: dict[str, Any], *, service: bool = False) -> BuildSpec:
    """Validate ``data`` into a BuildSpec. Raises SpecError naming each bad field.

    ``service``: the spec came to ``farm serve``; its source is taken as spelled, not
    resolved or checked here (``farm.confine.SourcePolicy.check`` does that).
    """
    try:
        return BuildSpec.model_validate(data, context={SERVICE_SOURCE: service})
    except ValidationError as exc:
        raise SpecError([_describe(err) for err in exc.errors()]) from None


#: Size fields whose bound errors are worded in sizes rather than in bytes.
_SIZE_FIELDS = frozenset({"memory", "scratch", "disk", "max_file", "max_total", "log"})
_BOUNDS = {
    "greater_than_equal": ("below the minimum", "ge"),
    "less_than_equal": ("above the maximum", "le"),
}


def _describe(err: Any) -> str:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field; check the spelling against `farm build --help`"
    if err["loc"][-1] in _SIZE_FIELDS and err["type"] in _BOUNDS:
        side, key = _BOUNDS[err["type"]]
        bound = format_size(int(err["ctx"][key]))
        msg = f"{format_size(int(err['input']))} is {side} {bound}"
    # Output problems already start with their own "outputs[i]:" location.
    return msg if msg.startswith(f"{loc}[") else f"{loc or 'spec'}: {msg}"


def load_spec_file(path: Path) -> dict[str, Any]:
    """Read a JSON or TOML spec file; a relative ``source`` is taken from its directory.

    Raises SpecError when the file cannot be read or parsed.
    """
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise SpecError([f"spec file {str(path)!r}: {exc}"]) from None
    if not isinstance(data, dict):
        raise SpecError([f"spec file {str(path)!r}: expected an object at the top level"])
    if "source" in data and not Path(str(data["source"])).is_absolute():
        data["source"] = str(path.parent / str(data["source"]))
    return data
