"""Download crates from an upstream sparse registry, for ``farm mirror add --lock``.

Callers: ``farm.mirror.fill``. TODO(lead): fold into ``farm.fetch.registry.RegistryClient``
(the fetch helper's client: same rules plus tokens) once both branches are merged; this
is the minimal version with the same rules, written while that one had not landed:

- ``{index}config.json`` gives ``dl``; the crate URL follows cargo's rule (markers
  ``{crate} {version} {prefix} {lowerprefix} {sha256-checksum}``, else
  ``/{crate}/{version}/download`` appended);
- connections go only to the index's host and the ``dl`` host (redirects within them);
- responses are capped (64 KiB config, 64 MiB crate), every socket op has a timeout;
- the caller verifies the bytes against Cargo.lock's checksum before adding them.
"""

from __future__ import annotations

import json

from farm.errors import MirrorError
from farm.mirror.download import http_get

MAX_CONFIG = 64 << 10
MAX_CRATE = 64 << 20


def crate_url(template: str, name: str, version: str, checksum: str) -> str:
    """cargo's rule for ``config.json``'s ``dl``."""
    markers = ("{crate}", "{version}", "{prefix}", "{lowerprefix}", "{sha256-checksum}")
    if not any(m in template for m in markers):
        return f"{template.rstrip('/')}/{name}/{version}/download"
    return (
        template.replace("{crate}", name)
        .replace("{version}", version)
        .replace("{prefix}", _prefix(name))
        .replace("{lowerprefix}", _prefix(name).lower())
        .replace("{sha256-checksum}", checksum)
    )


def _prefix(name: str) -> str:
    if len(name) <= 2:
        return str(len(name))
    if len(name) == 3:
        return f"3/{name[0]}"
    return f"{name[:2]}/{name[2:4]}"


class SparseRegistry:
    """One upstream registry, ``sparse+http(s)://host/path/``."""

    def __init__(self, index: str) -> None:
        if not index.startswith(("sparse+http://", "sparse+https://")):
            raise MirrorError(
                f"--registry {index!r}: give a sparse index URL like "
                "sparse+https://index.crates.io/ or sparse+http://127.0.0.1:8771/index/"
            )
        self.index = index
        self.index_url = index.removeprefix("sparse+").rstrip("/") + "/"
        self._dl: str | None = None

    def download(self, name: str, version: str, checksum: str) -> bytes | None:
        """The crate's bytes as served (not verified here), or None if missing."""
        return http_get(crate_url(self._template(), name, version, checksum), MAX_CRATE)

    def _template(self) -> str:
        if self._dl is None:
            url = self.index_url + "config.json"
            body = http_get(url, MAX_CONFIG)
            try:
                dl = json.loads(body or b"")["dl"]
            except (ValueError, KeyError, TypeError):
                raise MirrorError(f"{url}: not a registry config.json with a 'dl'") from None
            if not isinstance(dl, str) or not dl.startswith(("http://", "https://")):
                raise MirrorError(f"{url}: 'dl' must be an http(s) URL")
            self._dl = dl
        return self._dl
