"""List, then watch from the list's resourceVersion; re-list when the watch expires.

Callers: ``farm.k8s.controller`` (one :class:`Informer` for Builds, one for the Jobs and
one for the pods it owns) and ``farm.k8s.nodemonitor`` (its node's build pods, by the
field selector ``spec.nodeName``). Each change calls ``on_change(obj)``; the controller
turns that into a queue key, so handlers never do work themselves (level-triggered: the
reconcile re-reads state).

The list is paged and bounded (``farm.k8s.paging``; with ``keep``, a list past the bound
keeps a fair share and the informer syncs on it, rather than failing and retrying
forever: the Build informer, so one tenant's flood of Builds cannot stop the controller
seeing every other namespace's); watches ask for bookmarks, so a
quiet selector's resourceVersion still moves on; a 410 (watch or list page too old)
re-lists at once; any other failure retries after a delay that doubles up to
``max_delay`` and resets once a list or watch succeeds, so a down API server is not
hammered, and a recovered one is caught up with quickly.

Why not ``kubernetes.informer.SharedInformer`` (new in client 37): its list step reads
``resp.items`` as an attribute, but ``CustomObjectsApi`` returns dicts, so for a custom
resource the initial list is silently empty; and it sleeps a fixed 5 s after errors.
This is the same algorithm (list → watch(rv) → on 410 re-list and diff) over dicts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import watch

from farm.errors import GoneError, KubernetesError
from farm.k8s import paging
from farm.k8s.kube import Obj, translate
from farm.metrics import Metrics

log = logging.getLogger(__name__)

ListFunc = Callable[..., Any]


def key_of(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


class Informer:
    """A cache of one resource kind kept current by list+watch."""

    def __init__(
        self,
        list_raw: ListFunc,
        on_change: Callable[[Obj], None],
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout: int = 60,
        retry_delay: float = 1.0,
        max_delay: float = 30.0,
        kind: str = "",
        page: int = paging.PAGE,
        max_items: int = paging.MAX_ITEMS,
        metrics: Metrics | None = None,
        keep: bool = False,
    ) -> None:
        #: A client list method that accepts ``watch=`` (e.g. ``list_cluster_custom_object``
        #: with its positional arguments bound by functools.partial).
        self.list_raw = list_raw
        self.on_change = on_change
        self.selector = label_selector
        self.fields = field_selector
        self.watch_timeout = watch_timeout
        #: Reconnect backoff: ``retry_delay`` doubling per failure in a row, at most
        #: ``max_delay``; ``failures`` counts the current run of them.
        self.retry_delay, self.max_delay = retry_delay, max_delay
        self.failures = 0
        #: 410s since a watch last delivered anything: a second in a row backs off
        #: (a server that expires every watch at once must not be listed in a loop).
        self.expired = 0
        self.kind, self.page, self.max_items, self.metrics = kind, page, max_items, metrics
        #: Past ``max_items``, keep a fair share and sync (paging.list_all) instead of
        #: failing: only for kinds whose handler re-reads state, so an object left out
        #: is merely not handled until its next change or the next list.
        self.keep = keep
        self.cache: dict[str, Obj] = {}
        self.resource_version: str | None = None
        self.relists = 0
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()

    def _kwargs(self) -> dict[str, Any]:
        selectors = {"label_selector": self.selector, "field_selector": self.fields}
        return {k: v for k, v in selectors.items() if v}

    def _page(self, **page: Any) -> Obj:
        with translate(f"list {self.kind}"):
            response = self.list_raw(_preload_content=False, **self._kwargs(), **page)
        return dict(json.loads(response.data))

    def relist(self) -> None:
        """Replace the cache from a fresh (paged) list; report additions, changes and
        deletions. Raises GoneError if the list's snapshot expired between pages,
        ListTooLargeError past the bound (unless ``keep``), KubernetesError."""
        what = f"list {self.kind or 'objects'}"
        items, version = paging.list_all(
            self._page,
            what,
            self.kind,
            page=self.page,
            max_items=self.max_items,
            metrics=self.metrics,
            keep=self.keep,
        )
        fresh = {key_of(o): o for o in items}
        gone = [self.cache[k] for k in self.cache.keys() - fresh.keys()]
        self.cache = fresh
        self.resource_version = version
        self.relists += 1
        for obj in [*gone, *fresh.values()]:
            self.on_change(obj)
        self.synced.set()

    def watch_once(self) -> None:
        """One watch request from ``resource_version`` until it times out or fails."""
        # return_type "object": events stay plain dicts (no model round-trip), and the
        # client still turns an ERROR event into ApiException (deserialize=False would
        # make it raise KeyError instead, in client 37).
        self._watch = watch.Watch(return_type="object")
        kwargs = {
            **self._kwargs(),
            "resource_version": self.resource_version,
            "timeout_seconds": self.watch_timeout,  # also turns off the client's own retry
            "allow_watch_bookmarks": True,
        }
        with translate("watch"):
            for event in self._watch.stream(self.list_raw, **kwargs):
                self.failures = self.expired = 0  # it answers: the next failure starts over
                if self._stop.is_set():
                    return
                self._apply(event["type"], event["raw_object"])

    def _apply(self, kind: str, obj: Obj) -> None:
        self.resource_version = obj.get("metadata", {}).get(
            "resourceVersion", self.resource_version
        )
        if kind == "BOOKMARK":
            return
        if kind == "DELETED":
            self.cache.pop(key_of(obj), None)
        else:
            self.cache[key_of(obj)] = obj
        self.on_change(obj)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self.relist()
                    self.failures = 0
                self.watch_once()
                self.failures = self.expired = 0
            except GoneError:
                log.info("%s: watch or list expired (410 Gone); re-listing", self.kind)
                self.resource_version = None
                self.expired += 1
                if self.expired > 1:
                    self._stop.wait(self.backoff())
            except (KubernetesError, OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
                # urllib3 errors are OSErrors; a garbled line is a ValueError.
                delay = self.backoff()
                log.warning("%s: list/watch failed (%s); retrying in %.1fs", self.kind, exc, delay)
                self._stop.wait(delay)

    def backoff(self) -> float:
        """The delay before the next try after one more failure in a row."""
        self.failures += 1
        return float(min(self.max_delay, self.retry_delay * 2 ** (self.failures - 1)))

    def start(self, name: str) -> Informer:
        self._thread = threading.Thread(target=self.run, name=f"informer-{name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop: closing the open watch response wakes the blocked read."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def request_stop(self) -> None:
        self._stop.set()
        current = self._watch
        if current is not None:
            current.stop()
            response = getattr(current, "_resp", None)
            if response is not None:
                with contextlib.suppress(Exception):  # racing the reader; any error is fine
                    response.shutdown() if hasattr(response, "shutdown") else response.close()
