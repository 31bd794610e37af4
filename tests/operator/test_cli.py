"""``mailish operator`` as deployed: its own process, credentials from a kubeconfig.

This is the production wiring (``load_connection`` → kopf login handler → default settings),
which the in-thread tests bypass by passing a connection directly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness.kube_emulator import KubeEmulator
from tests.operator.cluster import Cluster, balanced, eventually

pytestmark = pytest.mark.timeout(60)


async def test_operator_command_assigns_buckets_and_stops_on_sigterm(
    emulator: KubeEmulator, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "e", "cluster": {"server": emulator.api_url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "e", "context": {"cluster": "e", "user": "u"}}],
                "current-context": "e",
            }
        )
    )
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "MAILISH_LOG_FORMAT": "text"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    async with Cluster(emulator) as cluster:
        cluster.node("n1", "a")
        cluster.worker("w1", "n1")
        cluster.worker("w2", "n1")
        cluster.pool(8, leaseGraceSeconds=1, resyncSeconds=1)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailish", "operator", "--namespace", "default",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await eventually(lambda: balanced(cluster.loads(), {"w1", "w2"}, 8), timeout=30)
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert "plan default/mailish" in stderr.decode()
    assert cluster.loads() == {"w1": 4, "w2": 4}  # shutting down moved nothing
