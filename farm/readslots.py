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
        """One slot for ``tenant`` while the block runs. Raises BusyError at once when the
        tenant's own slots are taken (a waiting submission holds an HTTP thread, so one
        tenant's waiters could fill them all), else after waiting ``timeout`` seconds for
        another tenant's read to end."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if (own := self._own_full(tenant)) is not None:
                    raise BusyError(own)
                if sum(self._busy.values()) < self.total:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BusyError("farm serve is busy reading other submissions; retry shortly")
                self._changed.wait(left)
            self._busy[tenant] += 1
        try:
            yield
        finally:
            with self._changed:
                self._busy[tenant] -= 1
                self._busy += Counter()  # drop zero counts: the set of tenants stays small
                self._changed.notify_all()

    def _own_full(self, tenant: str) -> str | None:
        if self._busy[tenant] < self.per_tenant:
            return None
        return (
            f"farm serve is still reading {self._busy[tenant]} earlier submission(s) of "
            f"tenant {tenant!r}; retry once they are queued"
        )
