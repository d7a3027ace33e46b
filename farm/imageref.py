"""Image references in their one canonical spelling, and the operator's allowlist of them.

Callers: ``farm.admission`` (``farm build``, ``farm serve`` and the controller ask it
whether a spec's image is allowed). An allowlist compared with what a tenant typed is
bypassed by another spelling of the same image, so both sides are parsed with the
grammar dockerd and containerd use (distribution/reference) and compared canonically:

- the registry defaults to ``docker.io`` (``index.docker.io`` is the same), and a
  one-component repository there gets ``library/``;
- a reference without tag or digest means the tag ``latest``;
- a reference with a digest runs *that* content whatever its tag says, so
  ``name:tag@sha256:…`` is canonically ``name@sha256:…``: its tag is never compared;
- anything outside the grammar is refused, never repaired: upper case, whitespace, a
  digest other than sha256, and a bare hex string with or without ``sha256:`` (dockerd
  looks a name it does not know up as an image id or an id's prefix).

A pattern is a reference in the same grammar where ``*`` stands for any run of
characters inside one part: one path component, the registry, or the tag. It cannot
cross ``/``, ``:`` or ``@``. A pattern with a tag matches only references by tag; a
pattern with a digest matches only that exact digest (no ``*`` there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
_DOCKER_DOMAINS = ("docker.io", "index.docker.io")
_MAX_NAME = 255

# distribution/reference's grammar; ``{w}`` is where a pattern may also have ``*``.
_COMPONENT = r"(?:[a-z0-9{w}]+(?:(?:[._]|__|-+)[a-z0-9{w}]+)*)"
_DOMAIN_PART = r"(?:[a-z0-9{w}](?:[a-z0-9{w}-]*[a-z0-9{w}])?)"
_DOMAIN = r"(?:{part}(?:\.{part})*|\[[0-9a-f:]+\])(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_{w}][A-Za-z0-9_.{w}-]{{0,127}}"
_DIGEST = r"sha256:[a-f0-9]{64}"
#: dockerd looks up what is not a known name as an image id or an id's prefix, with or
#: without ``sha256:``; such a string never names an image here.
_IMAGE_ID = re.compile(r"(?:sha256:)?[a-f0-9]{1,64}")


def _grammar(wild: str) -> re.Pattern[str]:
    component = _COMPONENT.format(w=wild)
    domain = _DOMAIN.format(part=_DOMAIN_PART.format(w=wild))
    return re.compile(
        rf"(?:(?P<domain>{domain})/)?(?P<path>{component}(?:/{component})*)"
        rf"(?::(?P<tag>{_TAG.format(w=wild)}))?(?:@(?P<digest>{_DIGEST}))?"
    )


_REFERENCE = _grammar("")
_PATTERN = _grammar(r"*")


class ImageRefError(ValueError):
    """Not an image reference (or pattern) farm accepts; the message says why."""


@dataclass(frozen=True)
class ImageRef:
    """A parsed, canonical reference: ``tag`` is None exactly when ``digest`` is set."""

    domain: str
    path: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        name = f"{self.domain}/{self.path}"
        return f"{name}@{self.digest}" if self.digest else f"{name}:{self.tag}"


def parse(text: str, *, pattern: bool = False) -> ImageRef:
    """The canonical form of ``text`` (see the module docstring); raises ImageRefError."""
    if _IMAGE_ID.fullmatch(text):
        raise ImageRefError(
            f"{text!r} could be an image id; name the image by repository and tag, "
            "e.g. farm/rust:bookworm"
        )
    match = (_PATTERN if pattern else _REFERENCE).fullmatch(text)
    if match is None:
        raise ImageRefError(
            f"{text!r} is not an image reference: use lower-case REPOSITORY[:TAG][@sha256:DIGEST] "
            "with no spaces, e.g. farm/rust:bookworm"
        )
    domain, path = match["domain"], match["path"]
    if domain is None or not _looks_like_domain(domain):
        # As docker: `farm/rust` is a path on docker.io, `localhost/x` and `a.b/x` are not.
        domain, path = DEFAULT_DOMAIN, path if domain is None else f"{domain}/{path}"
    if domain in _DOCKER_DOMAINS:
        domain = DEFAULT_DOMAIN
        path = path if "/" in path else f"library/{path}"
    if len(f"{domain}/{path}") > _MAX_NAME:
        raise ImageRefError(f"{text!r}: the repository name is longer than {_MAX_NAME}")
    digest = match["digest"]
    tag = None if digest else (match["tag"] or "latest")
    return ImageRef(domain, path, tag, digest)


def _looks_like_domain(first: str) -> bool:
    """distribution/reference's rule for the first component of a name."""
    return "." in first or ":" in first or first == "localhost" or first.startswith("[")


def matches(ref: ImageRef, pattern: ImageRef) -> bool:
    """Part by part, so ``*`` never crosses ``/``, ``:`` or ``@``."""
    if ref.digest != pattern.digest:  # both None (by tag), or the same exact digest
        return False
    if not _glob(pattern.domain, ref.domain):
        return False
    ref_parts, pattern_parts = ref.path.split("/"), pattern.path.split("/")
    if len(ref_parts) != len(pattern_parts):
        return False
    if not all(_glob(p, r) for p, r in zip(pattern_parts, ref_parts, strict=True)):
        return False
    if ref.tag is None or pattern.tag is None:  # by digest: the digests were equal
        return True
    return _glob(pattern.tag, ref.tag)


def _glob(pattern: str, text: str) -> bool:
    regex = ".*".join(re.escape(piece) for piece in pattern.split("*"))
    return re.fullmatch(regex, text) is not None
