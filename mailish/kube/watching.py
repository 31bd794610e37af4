"""List-then-watch: a local mirror of a set of Kubernetes objects (an informer, minus caches).

Ordering and recovery, the parts that are easy to get wrong:

- The list's ``resourceVersion`` starts the watch, so no change between the two is lost.
- Each event's ``resourceVersion`` (and each BOOKMARK's) is remembered; a watch that the
  server ends normally (``timeoutSeconds``) resumes from there, not from the list.
- ``410 Gone`` (as an HTTP status or as an ERROR event) means the server no longer has that
  history: relist at once. Any other failure relists after a capped, jittered backoff.
- ``on_change`` runs after the relist and after every applied event; consumers read
  ``objects`` then. It must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

from mailish.domain.errors import MailishError
from mailish.kube.client import ApiError, Gone, Json, KubeClient

log = logging.getLogger(__name__)


class Mirror:
    def __init__(
        self,
        client: KubeClient,
        path: str,
        *,
        on_change: Callable[[], None],
        params: Mapping[str, str] | None = None,
        watch_timeout: float = 60.0,
        max_backoff: float = 10.0,
    ) -> None:
        self._client = client
        self._path = path
        self._params = dict(params or {})
        self._on_change = on_change
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self.objects: dict[str, Json] = {}
        self.synced = False

    async def run(self) -> None:
        """Mirror forever; returns only by cancellation."""
        failures = 0
        while True:
            try:
                version = await self._relist()
                failures = 0
                while True:
                    version = await self._follow(version)
            except Gone:
                log.info("watch %s: history expired, relisting", self._path)
            except (MailishError, ValueError) as exc:
                ceiling = min(self._max_backoff, 0.2 * 2**failures)
                delay = random.uniform(0, ceiling)  # noqa: S311 -- jitter, not secrecy
                failures += 1
                log.warning("watch %s failed (%s); relisting in %.1fs", self._path, exc, delay)
                await asyncio.sleep(delay)

    async def _relist(self) -> str:
        listing = await self._client.get(self._path, params=self._params)
        self.objects = {_name(item): item for item in listing.get("items") or ()}
        self.synced = True
        self._on_change()
        return str(listing.get("metadata", {}).get("resourceVersion", ""))

    async def _follow(self, version: str) -> str:
        """Apply one watch stream's events; the resourceVersion to resume from."""
        stream = self._client.watch(
            self._path,
            resource_version=version,
            params=self._params,
            server_timeout=self._watch_timeout,
        )
        async with contextlib.aclosing(stream):  # closes the HTTP stream when we raise
            async for event in stream:
                kind = event.get("type")
                obj: dict[str, Any] = event.get("object") or {}
                if kind == "ERROR":
                    code = int(obj.get("code") or 0)
                    error = Gone if code == 410 else ApiError
                    raise error(code, str(obj.get("reason")), str(obj.get("message")))
                version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED"):
                    self.objects[_name(obj)] = obj
                elif kind == "DELETED":
                    self.objects.pop(_name(obj), None)
                else:
                    continue  # BOOKMARK: only the version moves
                self._on_change()
        return version


def _name(obj: Json) -> str:
    return str(obj.get("metadata", {}).get("name", ""))
