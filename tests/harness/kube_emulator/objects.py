"""Pure Kubernetes object semantics for the emulator: patches, selectors, errors, paths.

No state and no I/O: RFC 7386 merge patches, RFC 6902 JSON patches (the ops kopf sends),
label selectors as predicates, and the ``Status`` error body the API server returns.
"""

from __future__ import annotations

import copy
import datetime
import re
from collections.abc import Callable
from typing import Any

import attrs
import jsonschema

Obj = dict[str, Any]
Res = tuple[str, str, str]  # group, version, plural
TERM = re.compile(r"\s*(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


class ApiStatus(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message

    def body(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": self.code,
            "reason": self.reason,
            "message": self.message,
            "metadata": {},
        }


@attrs.frozen
class Kind:
    """How the emulator serves one resource (what discovery and a CRD say about it)."""

    kind: str
    namespaced: bool
    status: bool
    validator: jsonschema.Draft7Validator | None = None


def resource(ref: str) -> Res:
    parts = ref.split("/")
    return ("", parts[0], parts[1]) if len(parts) == 2 else (parts[0], parts[1], parts[2])


def now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def json_patch(doc: Obj, ops: list[Obj]) -> Obj:
    """RFC 6902 add / remove / replace / test; a failed test or a bad path is a 422."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]
        ]
        node: Any = doc
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if isinstance(node, list):
                index = len(node) if last == "-" else int(last)
            if op["op"] == "test":
                current = node[index] if isinstance(node, list) else node.get(last)
                if current != op.get("value"):
                    raise ApiStatus(422, "Invalid", f"test failed at {op['path']}")
            elif op["op"] == "remove":
                del node[index if isinstance(node, list) else last]
            elif op["op"] == "add" and isinstance(node, list):
                node.insert(index, op["value"])
            elif op["op"] == "replace" and isinstance(node, list):
                node[index] = op["value"]
            elif op["op"] in ("add", "replace"):
                node[last] = op["value"]
            else:
                raise ApiStatus(422, "Invalid", f"unsupported op {op['op']}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiStatus(422, "Invalid", f"bad path {op['path']}: {exc!r}") from exc
    return doc


def selector(text: str | None) -> Callable[[Obj], bool]:
    """A label selector (``a=b,c!=d,e in (f,g),!h``) as a predicate over objects."""
    terms = []
    for raw in re.split(r",(?![^(]*\))", text or ""):
        if not raw.strip():
            continue
        match = TERM.match(raw)
        if match is None:
            raise ApiStatus(400, "BadRequest", f"unparseable label selector {raw!r}")
        terms.append(match.groups())

    def matches(obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        for negate, key, op, value, set_op, values in terms:
            if set_op:
                inside = labels.get(key) in {v.strip() for v in values.split(",")}
                ok = inside if set_op == "in" else not inside
            elif op:
                ok = (labels.get(key) == value) == (op != "!=")
            else:
                ok = (key in labels) != bool(negate)
            if not ok:
                return False
        return True

    return matches
