"""Bearer tokens of ``farm serve``: which tenant a request acts for.

Callers: ``farm.cli`` loads the file given to ``farm serve --tokens``; ``farm.api``
asks :meth:`Tokens.tenant` for each request. The file is JSON, one token per tenant or
a list of them::

    {"tenants": {"team-a": "long-random-token", "team-b": ["t1", "t2"]}}

It must not be readable by group or others, like an ssh key: a leaked token is a tenant.
"""

from __future__ import annotations

import hmac
import json
import stat
from dataclasses import dataclass
from pathlib import Path

from farm.errors import InputError
from farm.spec import TENANT_NAME

MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class Tokens:
    by_token: dict[str, str]

    def tenant(self, authorization: str | None) -> str | None:
        """The tenant of an ``Authorization: Bearer …`` header, or None if it is not one."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        found = None
        for known, tenant in self.by_token.items():
            # Compare every token in constant time, so timing does not reveal a prefix.
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                found = tenant
        return found


def load_tokens(path: Path) -> Tokens:
    """Raises InputError saying what to fix in the file."""
    where = f"--tokens {str(path)!r}"
    try:
        mode = path.stat().st_mode
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{where}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"{where}: readable by group or others; run `chmod 600 {path}`")
    tenants = data.get("tenants") if isinstance(data, dict) else None
    if not isinstance(tenants, dict) or not tenants:
        raise InputError(f'{where}: expected {{"tenants": {{"TENANT": "TOKEN", …}}}}')
    by_token: dict[str, str] = {}
    for tenant, value in tenants.items():
        if not TENANT_NAME.match(tenant):
            raise InputError(f"{where}: tenant {tenant!r}: use lowercase letters, digits, '-'")
        for token in [value] if isinstance(value, str) else value:
            if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
                raise InputError(
                    f"{where}: a token of {tenant!r} is shorter than {MIN_TOKEN_LENGTH} "
                    "characters; use e.g. `openssl rand -hex 32`"
                )
            if token in by_token:
                raise InputError(f"{where}: one token is given to two tenants")
            by_token[token] = tenant
    return Tokens(by_token)
