"""An in-process Kubernetes API server that is strict where the operator relies on it.

kmock serves discovery, errors and the HTTP server; this package replaces kmock's lenient object
store (no resourceVersion, watches that replay everything, no selectors, no subresources, no
conflicts) with one that behaves like kube-apiserver for what mailish uses. ``objects`` holds
the pure semantics (patches, selectors), ``store`` the state, this module the HTTP and watch
streams:

- every write bumps one global ``resourceVersion``; objects get ``uid``, ``generation`` and
  ``creationTimestamp``; a no-op patch changes nothing and emits no event;
- a ``metadata.resourceVersion`` in a merge patch is a precondition (409), a failed JSON-patch
  ``test`` is 422, creating an existing name is 409, DELETE honours preconditions (no PUT:
  nothing here uses it, and an unknown verb is a 405, not a silent success);
- ``/status`` is a separate subresource: a status write cannot change spec or metadata, a main
  write cannot change status; custom resources are validated against their CRD schema (422);
- list and watch take label selectors; a watch resumes from a ``resourceVersion`` by
  replaying history (410 Gone once ``compact()`` dropped it); objects leaving or entering a
  selector are seen as DELETED / ADDED, as in Kubernetes; ``timeoutSeconds`` ends a watch;
- finalizers delay deletion (``deletionTimestamp``); pods are deleted gracefully: they stay
  terminating until ``remove()`` (the kubelet's part);
- ``faults`` lets a test fail chosen requests (say, a worker's Lease renewals) with a status.

Tests change the cluster through the same code paths (``create``, ``patch``, ``delete``), so
every change they make reaches watchers exactly like an API write.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import aiohttp.web
import attrs
import jsonschema
import kmock

from tests.harness.kube_emulator.objects import ApiStatus, Kind, Obj, Res, resource, selector
from tests.harness.kube_emulator.store import Entry, ObjectStore

__all__ = ["ApiStatus", "KubeEmulator"]

PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>status))?$"
)
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
BUILT_IN = [
    ("v1/namespaces", "Namespace", False, True),
    ("v1/nodes", "Node", False, True),
    ("v1/pods", "Pod", True, True),
    ("v1/events", "Event", True, False),
    ("coordination.k8s.io/v1/leases", "Lease", True, False),
]


@attrs.define(kw_only=True, slots=False)
class KubeEmulator(ObjectStore, kmock.KubernetesScaffold):
    faults: list[Callable[[str, str], int | None]] = attrs.field(factory=list)
    failures: list[BaseException] = attrs.field(factory=list)
    _closing: bool = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._init_store()
        for ref, kind, namespaced, status in BUILT_IN:
            self.register(resource(ref), Kind(kind, namespaced, status))

    @property
    def api_url(self) -> str:
        """The base URL of the (first) running ``kmock.Server`` serving this emulator."""
        return str(self.url).rstrip("/")

    def register(self, res: Res, kind: Kind) -> None:
        super().register(res, kind)
        self.resources[kmock.resource(*res)] = kmock.ResourceInfo(
            kind=kind.kind,
            namespaced=kind.namespaced,
            verbs=VERBS,
            subresources={"status"} if kind.status else set(),
        )

    def register_crd(self, crd: Obj) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            self.register(
                (spec["group"], version["name"], spec["names"]["plural"]),
                Kind(
                    spec["names"]["kind"],
                    spec["scope"] == "Namespaced",
                    "status" in (version.get("subresources") or {}),
                    jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"]),
                ),
            )

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = PATH.match(raw.path)
        if match is None:
            return await super().__call__(raw)  # discovery, /version: kmock's scaffold
        try:
            for fault in self.faults:
                if code := fault(raw.method, raw.path):
                    raise ApiStatus(code, "InjectedFault", f"{raw.method} {raw.path}")
            return await self._serve(raw, match)
        except ApiStatus as exc:
            return aiohttp.web.json_response(exc.body(), status=exc.code)
        except Exception as exc:  # an emulator bug: report it to the test, not only the client
            self.failures.append(exc)
            return aiohttp.web.json_response(
                ApiStatus(500, "InternalError", repr(exc)).body(), status=500
            )

    async def _serve(
        self, raw: aiohttp.web.BaseRequest, m: re.Match[str]
    ) -> aiohttp.web.StreamResponse:
        res = (m["group"] or "", m["version"] or m["core"], m["plural"])
        ns, name, status, query = m["ns"], m["name"], bool(m["sub"]), raw.query
        body = await raw.json() if raw.can_read_body else None
        self._kind(res)
        if query.get("fieldSelector"):
            raise ApiStatus(400, "BadRequest", "field selectors are not emulated")
        if raw.method == "GET" and query.get("watch") in ("true", "1"):
            return await self._watch(raw, res, ns, query)
        if raw.method == "GET" and name is None:
            items = self.list(res, ns, query.get("labelSelector"))
            return aiohttp.web.json_response(
                {
                    "kind": f"{self.kinds[res].kind}List",
                    "apiVersion": f"{res[0]}/{res[1]}".lstrip("/"),
                    "metadata": {"resourceVersion": str(self._rv)},
                    "items": items,
                }
            )
        handlers: dict[str, Callable[[], Obj]] = {
            "GET": lambda: self.get(res, ns, name or ""),
            "POST": lambda: self.create(res, body, ns),
            "PATCH": lambda: self.patch(
                res, ns, name or "", body, status=status, content_type=raw.content_type
            ),
            "DELETE": lambda: self.delete(res, ns, name or "", (body or {}).get("preconditions")),
        }
        if raw.method not in handlers or (name is None) != (raw.method == "POST"):
            raise ApiStatus(405, "MethodNotAllowed", f"{raw.method} {raw.path}")
        return aiohttp.web.json_response(
            handlers[raw.method](), status=201 if raw.method == "POST" else 200
        )

    async def _watch(
        self, raw: aiohttp.web.BaseRequest, res: Res, ns: str | None, query: Any
    ) -> aiohttp.web.StreamResponse:
        match = selector(query.get("labelSelector"))
        queue, backlog = self.subscribe(res, ns, query.get("resourceVersion") or "0")
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        deadline = asyncio.get_running_loop().time() + float(query.get("timeoutSeconds") or 1800)
        try:
            for entry in backlog:
                await self._send(response, entry, res, ns, match)
                if entry[1] == "ERROR":
                    return response
            while not self._closing:
                remaining = max(0.0, deadline - asyncio.get_running_loop().time())
                try:
                    async with asyncio.timeout(remaining):
                        entry = await queue.get()
                except TimeoutError:
                    break
                if entry is None:  # close()
                    break
                await self._send(response, entry, res, ns, match)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self.unsubscribe(queue)
        return response

    @staticmethod
    async def _send(
        response: aiohttp.web.StreamResponse,
        entry: Entry,
        res: Res,
        ns: str | None,
        match: Callable[[Obj], bool],
    ) -> None:
        _, event, entry_res, obj, old = entry
        if event != "ERROR":
            if entry_res != res or ns not in (None, obj["metadata"].get("namespace")):
                return
            now, before = match(obj) and event != "DELETED", old is not None and match(old)
            if not now and not before:
                return
            event = "MODIFIED" if now and before else "ADDED" if now else "DELETED"
        await response.write(json.dumps({"type": event, "object": obj}).encode() + b"\n")

    async def close(self) -> None:
        """End every watch stream, so the server can shut down at once."""
        self._closing = True
        self.end_watches()
        await asyncio.sleep(0)
