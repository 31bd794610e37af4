"""Who this worker is, from the downward API environment the Helm chart injects.

``POD_UID`` matters as much as the name: a StatefulSet-style restart reuses the name, and the
operator's ``status.ownerUid`` makes sure a new pod does not inherit its predecessor's
buckets by accident.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from mailish.domain.errors import ConfigError

REQUIRED = ("POD_NAME", "POD_UID", "NODE_NAME")


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    pod_name: str
    pod_uid: str
    node_name: str
    namespace: str | None = None

    @property
    def lease_name(self) -> str:
        return f"mailish-worker-{self.pod_name}"


def from_environment(env: Mapping[str, str] | None = None) -> WorkerIdentity:
    source = os.environ if env is None else env
    missing = [name for name in REQUIRED if not source.get(name)]
    if missing:
        raise ConfigError(
            f"worker identity: {', '.join(missing)} not set (inject them with the downward API)"
        )
    return WorkerIdentity(
        pod_name=source["POD_NAME"],
        pod_uid=source["POD_UID"],
        node_name=source["NODE_NAME"],
        namespace=source.get("POD_NAMESPACE") or None,
    )
