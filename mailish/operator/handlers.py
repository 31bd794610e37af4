"""kopf handlers, registered on an explicit registry (never kopf's global one).

The operator keeps its bookkeeping under the ``mailish.io`` prefix and runs without kopf's
peering objects: correctness rests on resourceVersion-conditional status writes, not on a
single replica, so peering would add a CRD dependency and nothing else.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

GROUP = "mailish.io"
VERSION = "v1alpha1"
BUCKETS = "mailishbuckets"

log = logging.getLogger(__name__)


def build_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = f"{GROUP}/operator"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        settings.peering.standalone = True
        log.info("operator configured for %s/%s %s", GROUP, VERSION, BUCKETS)

    return registry
