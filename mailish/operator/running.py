"""Running kopf with our registry, settings, credentials and shared context.

``run`` is what ``mailish operator`` calls; tests call it too (in a thread with its own event
loop, as kopf assumes every task created after it starts is its own), passing the emulator's
connection and faster timings. kopf must own its event loop: at exit it cancels every task
that did not exist when it started.
"""

from __future__ import annotations

import threading

import kopf

from mailish.kube.connecting import KubeConnection, load_connection
from mailish.operator.handlers import OperatorContext, build_registry, operator_settings


async def run(
    *,
    namespace: str | None,
    connection: KubeConnection | None = None,
    context: OperatorContext | None = None,
    settings: kopf.OperatorSettings | None = None,
    stop_flag: threading.Event | None = None,
    ready_flag: threading.Event | None = None,
    liveness_endpoint: str | None = None,
) -> None:
    """Run until cancelled or ``stop_flag`` is set.

    ``liveness_endpoint`` (say ``http://0.0.0.0:8081/healthz``) makes kopf serve its own
    liveness probe; Prometheus metrics are on ``mailish.observability.metrics.REGISTRY`` and
    are served by whoever serves that registry in this process.
    """
    if context is None:
        context = OperatorContext(connection=connection or load_connection())
    await kopf.operator(
        registry=build_registry(),
        settings=settings or operator_settings(),
        memo=kopf.Memo(mailish=context),
        clusterwide=namespace is None,
        namespaces=[namespace] if namespace else [],
        standalone=True,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        liveness_endpoint=liveness_endpoint,
    )
