"""One bounded HTTP GET for ``farm mirror``'s upstreams (Debian's archive).

Callers: ``farm.mirror.debian``. The body is capped, every socket operation has a
timeout, and a redirect is followed only to the same scheme, host and port, at most
three times: an archive URL is the operator's choice, and a redirect must not widen it.
"""

from __future__ import annotations

import http.client
import urllib.parse

from farm.errors import MirrorError, MirrorSourceError

#: Statuses that mean "not there", as opposed to "could not ask".
MISSING = (404, 410)
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 3


def http_get(url: str, max_bytes: int, timeout: float = 60) -> bytes | None:
    """The body of ``url``, or None if it answers 404/410. Raises MirrorSourceError when
    the server cannot be reached or answers anything else, MirrorError for a body over
    ``max_bytes`` or a redirect elsewhere."""
    origin = _origin(url)
    for _ in range(_MAX_REDIRECTS + 1):
        status, location, body = _get_once(url, max_bytes, timeout)
        if status not in _REDIRECTS:
            break
        target = urllib.parse.urljoin(url, location or "")
        if _origin(target) != origin:
            raise MirrorError(f"{url}: redirected to another host ({target}); refusing")
        url = target
    else:
        raise MirrorSourceError(f"{url}: more than {_MAX_REDIRECTS} redirects")
    if status in MISSING:
        return None
    if status != 200:
        raise MirrorSourceError(f"{url}: HTTP {status}")
    return body


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MirrorError(f"{url!r}: only http:// and https:// URLs")
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _get_once(url: str, max_bytes: int, timeout: float) -> tuple[int, str | None, bytes]:
    scheme, host, port = _origin(url)
    parts = urllib.parse.urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = kind(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "farm-mirror"})
        resp = conn.getresponse()
        if resp.status != 200:
            return resp.status, resp.getheader("Location"), b""
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise MirrorError(f"{url}: {declared} bytes is over the cap of {max_bytes}")
        body = resp.read(max_bytes + 1)
        if len(body) > max_bytes:
            raise MirrorError(f"{url}: over the cap of {max_bytes} bytes")
        return resp.status, None, body
    except (OSError, http.client.HTTPException) as exc:
        raise MirrorSourceError(f"{url}: cannot download ({exc})") from None
    finally:
        conn.close()
