"""The emulator's object store: resourceVersions, subresources, finalizers, watch history.

Every change goes through ``_emit``, which validates custom resources against their CRD
schema, bumps the one global resourceVersion, records the change in a bounded history (the
source of watch resumption) and hands it to every open watch. Methods are synchronous: tests
call them directly from pytest's loop and watchers still see each change as an API write.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import secrets
import uuid
from typing import Any

import jsonschema

from tests.harness.kube_emulator.objects import (
    ApiStatus,
    Kind,
    Obj,
    Res,
    json_patch,
    merge,
    now_text,
    resource,
    selector,
)

Entry = tuple[int, str, Res, Obj, Obj | None]  # resourceVersion, event type, resource, new, old
IMMUTABLE = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "resourceVersion",
    "generation",
    "deletionTimestamp",
)


class ObjectStore:
    """A mixin holding the cluster state; ``_init_store`` must run before any call."""

    kinds: dict[Res, Kind]
    _store: dict[tuple[Res, str | None, str], Obj]
    _history: collections.deque[Entry]
    _watchers: set[asyncio.Queue[Entry | None]]
    _rv: int
    _compacted: int

    def _init_store(self, history: int = 20000) -> None:
        self.kinds = {}
        self._store = {}
        self._history = collections.deque(maxlen=history)
        self._watchers = set()
        self._rv = 1
        self._compacted = 0

    def register(self, res: Res, kind: Kind) -> None:
        self.kinds[res] = kind

    def get(self, ref: str | Res, namespace: str | None, name: str) -> Obj:
        res = resource(ref) if isinstance(ref, str) else ref
        obj = self._store.get((res, namespace, name))
        if obj is None:
            raise ApiStatus(404, "NotFound", f"{res[2]} {name!r} not found")
        return copy.deepcopy(obj)

    def list(
        self,
        ref: str | Res,
        namespace: str | None = None,
        labels: str | None = None,
        *,
        copied: bool = True,
    ) -> list[Obj]:
        """Matching objects by namespace and name; ``copied=False`` for read-only looks."""
        res, match = resource(ref) if isinstance(ref, str) else ref, selector(labels)
        return [
            copy.deepcopy(o) if copied else o
            for (r, ns, _), o in sorted(self._store.items(), key=lambda i: (i[0][1] or "", i[0][2]))
            if r == res and namespace in (None, ns) and match(o)
        ]

    def create(self, ref: str | Res, obj: Obj, namespace: str | None = None) -> Obj:
        res = resource(ref) if isinstance(ref, str) else ref
        kind, obj = self._kind(res), copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        namespace = namespace or meta.get("namespace")
        if (
            kind.namespaced != (namespace is not None)
            or meta.get("namespace", namespace) != namespace
        ):
            raise ApiStatus(400, "BadRequest", "namespace missing or not matching the URL")
        name = meta.get("name") or (meta.get("generateName", "") + secrets.token_hex(3))
        if (res, namespace, name) in self._store:
            raise ApiStatus(409, "AlreadyExists", f"{res[2]} {name!r} already exists")
        if kind.status:
            obj.pop("status", None)
        meta.update(name=name, uid=str(uuid.uuid4()), generation=1, creationTimestamp=now_text())
        meta.pop("resourceVersion", None)
        if namespace:
            meta["namespace"] = namespace
        obj["apiVersion"] = f"{res[0]}/{res[1]}".lstrip("/")
        obj["kind"] = kind.kind
        return self._emit("ADDED", res, obj, None)

    def patch(
        self,
        ref: str | Res,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        status: bool = False,
        content_type: str = "application/merge-patch+json",
    ) -> Obj:
        res = resource(ref) if isinstance(ref, str) else ref
        old = self.get(res, namespace, name)
        if "json-patch" in content_type:
            new = json_patch(old, patch)
        elif "merge-patch" in content_type:
            expected = (patch.get("metadata") or {}).get("resourceVersion")
            if expected is not None and expected != old["metadata"]["resourceVersion"]:
                raise ApiStatus(409, "Conflict", f"{name}: resourceVersion {expected} is stale")
            new = merge(old, patch)
        else:
            raise ApiStatus(415, "UnsupportedMediaType", content_type)
        return self._update(res, old, new, status=status)

    def delete(
        self, ref: str | Res, namespace: str | None, name: str, preconditions: Obj | None = None
    ) -> Obj:
        res = resource(ref) if isinstance(ref, str) else ref
        old = self.get(res, namespace, name)
        for field, value in (preconditions or {}).items():
            if value is not None and old["metadata"].get(field) != value:
                raise ApiStatus(409, "Conflict", f"precondition {field} failed for {name}")
        if old["metadata"].get("finalizers") or res[2] == "pods":
            if old["metadata"].get("deletionTimestamp"):
                return old
            new = merge(old, {"metadata": {"deletionTimestamp": now_text()}})
            return self._emit("MODIFIED", res, new, old)
        return self.remove(res, namespace, name)

    def remove(self, ref: str | Res, namespace: str | None, name: str) -> Obj:
        """Delete at once, ignoring finalizers and grace (a kubelet confirming a pod is gone)."""
        res = resource(ref) if isinstance(ref, str) else ref
        old = self.get(res, namespace, name)
        return self._emit("DELETED", res, old, old)

    def compact(self) -> None:
        """Forget the watch history, as etcd compaction does: older resumes get 410 Gone."""
        self._compacted = self._rv
        self._history.clear()

    def _kind(self, res: Res) -> Kind:
        if res not in self.kinds:
            raise ApiStatus(404, "NotFound", f"the server could not find resource {res}")
        return self.kinds[res]

    def _update(self, res: Res, old: Obj, new: Obj, *, status: bool) -> Obj:
        kind = self._kind(res)
        if status and not kind.status:
            raise ApiStatus(404, "NotFound", f"{res[2]} has no status subresource")
        if status:
            new = {**old, "status": new.get("status", {})}
        elif kind.status:
            new = (
                {**new, "status": old.get("status")}
                if "status" in old
                else {k: v for k, v in new.items() if k != "status"}
            )
        kept = {k: v for k, v in new.get("metadata", {}).items() if k not in IMMUTABLE}
        new["metadata"] = kept | {k: v for k, v in old["metadata"].items() if k in IMMUTABLE}
        if new == old:
            return old
        spec_of = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
        if spec_of(new) != spec_of(old):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if (
            new["metadata"].get("deletionTimestamp")
            and not new["metadata"].get("finalizers")
            and res[2] != "pods"
        ):
            return self._emit("DELETED", res, new, old)
        return self._emit("MODIFIED", res, new, old)

    def _emit(self, kind_of_event: str, res: Res, obj: Obj, old: Obj | None) -> Obj:
        validator = self.kinds[res].validator
        if validator is not None and kind_of_event != "DELETED":
            try:
                validator.validate(obj)
            except jsonschema.ValidationError as exc:
                raise ApiStatus(
                    422, "Invalid", f"{res[2]}: {exc.message} at {list(exc.path)}"
                ) from exc
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (res, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if kind_of_event == "DELETED":
            self._store.pop(key, None)
        else:
            self._store[key] = obj
        entry = (self._rv, kind_of_event, res, copy.deepcopy(obj), old)
        if len(self._history) == self._history.maxlen:
            self._compacted = self._history[0][0]  # about to drop the oldest entry
        self._history.append(entry)
        for queue in self._watchers:
            queue.put_nowait(entry)
        return copy.deepcopy(obj)

    def subscribe(
        self, res: Res, namespace: str | None, since: str
    ) -> tuple[asyncio.Queue[Entry | None], list[Entry]]:
        """A queue of future changes, and the backlog a watch from ``since`` must replay first.

        The queue is registered before the backlog is computed, with no await in between, so
        no change can fall into the gap or arrive twice.
        """
        queue: asyncio.Queue[Entry | None] = asyncio.Queue()
        self._watchers.add(queue)
        if since == "0":
            backlog = [(self._rv, "ADDED", res, o, None) for o in self.list(res, namespace)]
        elif int(since) < self._compacted:
            gone = ApiStatus(410, "Expired", f"too old resource version: {since}").body()
            backlog = [(0, "ERROR", res, gone, None)]
        else:
            backlog = [entry for entry in self._history if entry[0] > int(since)]
        return queue, backlog

    def unsubscribe(self, queue: asyncio.Queue[Entry | None]) -> None:
        self._watchers.discard(queue)

    def end_watches(self) -> None:
        for queue in self._watchers:
            queue.put_nowait(None)
