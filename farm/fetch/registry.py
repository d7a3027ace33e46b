"""A cargo registry as the operator configured it, and the one HTTP client that talks to it.

Callers: ``farm.fetch.phase`` (downloads each locked crate), ``farm.settings``/``farm.cli``
(the operator's registries). A registry is never named by URL in a build spec: farm
serve's tenants may only pick one of the operator's by name, so no tenant can point
farm's own process at an internal address (SSRF).

The client connects only to the index's host and the download host its ``config.json``
names; a redirect elsewhere (or from https down to http) is refused, every response is
capped in size and time, and no proxy variable of the environment is read. The token,
if any, comes from the operator's token file, is sent only to those hosts and never
appears in a message, a log or provenance.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from farm.errors import FetchError, InputError, PackageMissingError, RegistryUnreachableError

CRATES_IO = "crates-io"
CRATES_IO_INDEX = "sparse+https://index.crates.io/"
#: Status codes a sparse registry answers for a crate it does not have (cargo's list).
MISSING = (404, 410, 451)
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_MAX_TOKEN = 4096
_MAX_REDIRECTS = 5


class Registry(BaseModel):
    """``index`` in cargo's spelling, ``sparse+http(s)://host[:port]/path/``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = CRATES_IO
    index: str = CRATES_IO_INDEX
    token_file: Path | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"{value!r}: a registry name is lowercase letters, digits, - and _")
        return value

    @field_validator("index")
    @classmethod
    def _index(cls, value: str) -> str:
        url = value.removeprefix("sparse+")
        parts = urlsplit(url)
        if (
            not value.startswith("sparse+")
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.username
            or parts.password
            or parts.query
            or parts.fragment
        ):
            raise ValueError(
                f"{value!r} is not a sparse index URL such as {CRATES_IO_INDEX} "
                "(farm reads sparse indexes only; a farm mirror prints its own)"
            )
        return value if value.endswith("/") else value + "/"

    @property
    def index_url(self) -> str:
        return self.index.removeprefix("sparse+")


def registry_from_cli(value: str) -> Registry:
    """``--registry``: a sparse index URL (named after its host), raising InputError."""
    try:
        host = urlsplit(value.removeprefix("sparse+")).hostname or "registry"
        name = re.sub(r"[^a-z0-9_-]", "-", host.lower())[:63].strip("-") or "registry"
        return Registry(name=name, index=value)
    except ValueError as exc:
        raise InputError(f"--registry: {_first_error(exc)}") from None


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    return str(errors()[0]["msg"]).removeprefix("Value error, ") if errors else str(exc)


class HttpCaps(BaseModel):
    """Bounds on each response from a registry."""

    model_config = ConfigDict(frozen=True)

    #: Seconds per connect and per read.
    timeout_seconds: float = Field(30, gt=0)
    #: Seconds for one whole response (a registry that trickles bytes is cut off).
    deadline_seconds: float = Field(600, gt=0)
    max_config: int = 64 << 10
    max_crate: int = 64 << 20


def crate_url(template: str, name: str, version: str, checksum: str) -> str:
    """cargo's rule for ``config.json``'s ``dl``: markers, else ``/{crate}/{version}/download``."""
    markers = ("{crate}", "{version}", "{prefix}", "{lowerprefix}", "{sha256-checksum}")
    if not any(m in template for m in markers):
        return f"{template.rstrip('/')}/{name}/{version}/download"
    prefix = _prefix(name)
    return (
        template.replace("{crate}", name)
        .replace("{version}", version)
        .replace("{prefix}", prefix)
        .replace("{lowerprefix}", prefix.lower())
        .replace("{sha256-checksum}", checksum)
    )


def _prefix(name: str) -> str:
    if len(name) <= 2:
        return str(len(name))
    if len(name) == 3:
        return f"3/{name[0]}"
    return f"{name[:2]}/{name[2:4]}"


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> _Origin:
        parts = urlsplit(url)
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, (parts.hostname or "").lower(), parts.port or default)


class RegistryClient:
    """Downloads from one ``Registry``. Not thread-safe; one per fetch."""

    def __init__(self, registry: Registry, caps: HttpCaps | None = None) -> None:
        self.registry = registry
        self.caps = caps or HttpCaps()
        self._token = _read_token(registry)
        self._origins = {_Origin.of(registry.index_url)}
        self._dl: str | None = None

    def download(self, name: str, version: str, checksum: str) -> bytes:
        """The ``.crate`` bytes as the registry serves them (not yet verified).

        Raises PackageMissingError, RegistryUnreachableError or FetchError, each naming
        the crate, the URL and what to do.
        """
        url = crate_url(self._template(), name, version, checksum)
        what = f"{name} {version}"
        status, body = self._get(url, self.caps.max_crate, what)
        if status in MISSING:
            raise PackageMissingError(
                f"{what}: not in registry {self.registry.name} ({self.registry.index}): "
                f"GET {url} answered {status}; add it to the mirror (`farm mirror`), or "
                "point --registry at a registry that has it"
            )
        self._check(status, url, what)
        return body

    def _template(self) -> str:
        if self._dl is None:
            url = self.registry.index_url + "config.json"
            status, body = self._get(url, self.caps.max_config, "config.json")
            if status in MISSING:
                raise FetchError(
                    f"registry {self.registry.name}: {url} answered {status}; "
                    f"is {self.registry.index} a cargo sparse index?"
                )
            self._check(status, url, "config.json")
            self._dl = self._parse_config(url, body)
            self._origins.add(_Origin.of(self._dl))
        return self._dl

    def _parse_config(self, url: str, body: bytes) -> str:
        try:
            dl = json.loads(body)["dl"]
        except (ValueError, KeyError, TypeError):
            dl = None
        scheme = urlsplit(dl).scheme if isinstance(dl, str) else ""
        if not isinstance(dl, str) or scheme not in ("http", "https") or not urlsplit(dl).hostname:
            raise FetchError(
                f"registry {self.registry.name}: {url} has no http(s) `dl` download URL"
            )
        if scheme == "http" and urlsplit(self.registry.index_url).scheme == "https":
            raise FetchError(
                f"registry {self.registry.name}: {url} sends downloads to plain http ({dl})"
            )
        return dl

    def _check(self, status: int, url: str, what: str) -> None:
        if status == 200:
            return
        if status in (401, 403):
            hint = "check its token file" if self._token else "it needs a token_file"
            raise FetchError(
                f"{what}: registry {self.registry.name} refused GET {url} ({status}); {hint}"
            )
        raise RegistryUnreachableError(
            f"{what}: registry {self.registry.name} answered {status} for GET {url}; "
            "try again later or check the registry"
        )

    def _get(self, url: str, cap: int, what: str) -> tuple[int, bytes]:
        """GET ``url``, following redirects only among this registry's own origins."""
        for _ in range(_MAX_REDIRECTS + 1):
            origin = _Origin.of(url)
            if origin not in self._origins:
                raise FetchError(
                    f"{what}: registry {self.registry.name} redirected to {url}, outside "
                    "its own hosts; refusing (configure that host as the registry instead)"
                )
            status, location, body = self._request(origin, url, cap, what)
            if location is None:
                return status, body
            url = urljoin(url, location)
        raise FetchError(f"{what}: registry {self.registry.name}: too many redirects at {url}")

    def _request(
        self, origin: _Origin, url: str, cap: int, what: str
    ) -> tuple[int, str | None, bytes]:
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn = _connection(origin, self.caps.timeout_seconds)
        headers = {"User-Agent": "farm-fetch", "Accept-Encoding": "identity"}
        if self._token:
            headers["Authorization"] = self._token
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                if not location:
                    raise FetchError(f"{what}: {url} redirected without a Location")
                return resp.status, location, b""
            if resp.status != 200:
                return resp.status, None, b""
            return 200, None, self._read(resp, url, cap, what)
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryUnreachableError(
                f"{what}: cannot reach registry {self.registry.name} at {url}: {exc}; "
                "check the URL and that this host can reach it"
            ) from None
        finally:
            conn.close()

    def _read(self, resp: http.client.HTTPResponse, url: str, cap: int, what: str) -> bytes:
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > cap:
            raise FetchError(f"{what}: {url} is {length} bytes, above the {cap} cap; refusing")
        deadline = time.monotonic() + self.caps.deadline_seconds
        chunks, total = [], 0
        while chunk := resp.read(min(1 << 20, cap + 1 - total) or 1):
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise FetchError(f"{what}: {url} sent more than {cap} bytes; refusing")
            if time.monotonic() > deadline:
                raise RegistryUnreachableError(
                    f"{what}: {url} took longer than {self.caps.deadline_seconds:.0f} s"
                )
        return b"".join(chunks)


def _connection(origin: _Origin, timeout: float) -> http.client.HTTPConnection:
    if origin.scheme == "https":
        context = ssl.create_default_context()
        return http.client.HTTPSConnection(
            origin.host, origin.port, timeout=timeout, context=context
        )
    return http.client.HTTPConnection(origin.host, origin.port, timeout=timeout)


def _read_token(registry: Registry) -> str | None:
    """The operator's token file: one line of printable ASCII (never echoed back)."""
    if registry.token_file is None:
        return None
    where = f"registry {registry.name}: token file {registry.token_file}"
    try:
        with registry.token_file.open("rb") as fh:
            raw = fh.read(_MAX_TOKEN + 1)
    except OSError as exc:
        raise InputError(f"{where}: {exc.strerror}") from None
    token = raw.strip()
    if not token or len(raw) > _MAX_TOKEN or not all(0x20 <= b < 0x7F for b in token):
        raise InputError(f"{where}: must hold one line of printable ASCII (at most 4 KiB)")
    return token.decode()


def load_registries(path: Path) -> dict[str, Registry]:
    """The operator's registries file (``FARM_REGISTRIES``, ``farm serve --registries``):
    a JSON list of ``{"name", "index", "token_file"?}``. Raises InputError naming the
    file and the entry."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(1 << 20)
        entries = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise InputError(f"registries file {path}: {exc}") from None
    if not isinstance(entries, list):
        raise InputError(f"registries file {path}: must be a JSON list of registries")
    out: dict[str, Registry] = {}
    for i, entry in enumerate(entries):
        try:
            registry = Registry.model_validate(entry)
        except ValueError as exc:
            raise InputError(f"registries file {path}: entry {i}: {_first_error(exc)}") from None
        if registry.name in out:
            raise InputError(f"registries file {path}: {registry.name!r} is named twice")
        out[registry.name] = registry
    return out
