"""Running kopf inside our event loop, with our registry and logging."""

from __future__ import annotations

import kopf

from mailish.operator.handlers import build_registry


async def run(*, namespace: str | None) -> None:
    await kopf.operator(
        registry=build_registry(),
        clusterwide=namespace is None,
        namespaces=[namespace] if namespace else [],
        standalone=True,
    )
