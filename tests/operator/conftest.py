"""Fixtures for operator tests: a strict Kubernetes API emulator with mailish's CRDs loaded.

The emulator runs in pytest's event loop; kopf runs in its own thread (``OperatorThread``).
Teardown ends every watch stream before the server closes, and fails the test if the
emulator itself hit an internal error while serving it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest
import yaml

from tests.harness.kube_emulator import KubeEmulator

CRDS = Path(__file__).resolve().parents[2] / "crds"


def load_crds() -> list[dict[str, object]]:
    return [yaml.safe_load(path.read_text()) for path in sorted(CRDS.glob("*.yaml"))]


@pytest.fixture
async def emulator() -> AsyncIterator[KubeEmulator]:
    emu = KubeEmulator()
    for crd in load_crds():
        emu.register_crd(crd)
    async with emu, kmock.Server(emu):
        try:
            yield emu
        finally:
            await emu.close()
    assert not emu.failures, f"the emulator failed internally: {emu.failures!r}"
