"""How many submitted trees ``farm serve`` reads at once, overall and per tenant.

Caller: ``farm.service.Service.admit``. Reading a submission (git history, Cargo.toml)
costs CPU the submitter chooses, within ``farm.gitread``'s caps. A global bound alone
lets one tenant keep every slot busy with crafted trees, so that every other tenant's
submission waits and then answers 503: a tenant may hold at most ``per_tenant`` slots.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from farm.errors import BusyError


class ReadSlots:
    def __init__(self, total: int, per_tenant: int) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self._busy: Counter[str] = Counter()
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, tenant: str, timeout: float) -> Iterator[None]:
        """One slot for ``tenant`` while the block runs. Raises BusyError after waiting
        ``timeout`` seconds, saying whose reads it waited for."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (reason := self._full(tenant)) is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BusyError(reason)
                self._changed.wait(left)
            self._busy[tenant] += 1
        try:
            yield
        finally:
            with self._changed:
                self._busy[tenant] -= 1
                self._busy += Counter()  # drop zero counts: the set of tenants stays small
                self._changed.notify_all()

    def _full(self, tenant: str) -> str | None:
        if self._busy[tenant] >= self.per_tenant:
            return (
                f"farm serve is still reading {self._busy[tenant]} earlier submission(s) of "
                f"tenant {tenant!r}; retry once they are queued"
            )
        if sum(self._busy.values()) >= self.total:
            return "farm serve is busy reading other submissions; retry shortly"
        return None
