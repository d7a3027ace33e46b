"""A small client of the ``farm serve`` API, used by ``farm build`` when a server is set.

Callers: ``farm.cli``. HTTP failures become farm's own errors here, in one place, so
the CLI prints and exits the same way as for a local build: a rejected spec is a
SpecError (exit 2), a refused token an InputError (exit 2), an unreachable service an
InfrastructureError (exit 4).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from farm.errors import FarmError, InfrastructureError, InputError, NotFoundError, SpecError
from farm.records import BuildRecord


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> tuple[bytes, dict[str, str]]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raise _translate(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            raise InfrastructureError(
                f"cannot reach the farm service at {self.url} ({exc}); "
                "start `farm serve` or unset FARM_SERVER"
            ) from None

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return json.loads(self._call("POST", "/v1/builds", spec)[0])

    def status(self, build_id: str) -> dict[str, Any]:
        return json.loads(self._call("GET", f"/v1/builds/{build_id}")[0])

    def cancel(self, build_id: str) -> dict[str, Any]:
        return json.loads(self._call("POST", f"/v1/builds/{build_id}/cancel", {})[0])

    def report(self, build_id: str) -> BuildRecord:
        body, _ = self._call("GET", f"/v1/builds/{build_id}/report")
        return BuildRecord.model_validate_json(body)

    def logs(self, build_id: str, offset: int = 0) -> bytes:
        return self._call("GET", f"/v1/builds/{build_id}/logs?offset={offset}")[0]


def _translate(exc: urllib.error.HTTPError) -> FarmError:
    try:
        detail = json.loads(exc.read())
    except ValueError:
        detail = {}
    message = str(detail.get("error") or exc.reason)
    if exc.code == 400:
        return SpecError(detail.get("problems") or [message])
    if exc.code == 401:
        return InputError(f"the farm service refused the token: {message}; check FARM_TOKEN")
    if exc.code == 404:
        return NotFoundError(message)
    return InfrastructureError(f"the farm service answered {exc.code}: {message}")
