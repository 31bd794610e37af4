"""The CRDs in crds/ are structural, match the code, and accept their own samples.

Checked offline with ``jsonschema`` (the same validation the emulator applies to writes):
samples validate, bad objects do not, every schema node is typed (a structural schema),
printer columns point at fields that exist, and the enums and defaults are the code's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mailish.domain.assignment import MOVE_REASONS
from mailish.kube import resources
from mailish.operator import facts
from tests.operator.conftest import CRDS, load_crds

SAMPLES = CRDS / "samples"


def crd_for(kind: str) -> dict[str, Any]:
    return next(c for c in load_crds() if c["spec"]["names"]["kind"] == kind)  # type: ignore[index]


def schema(kind: str) -> dict[str, Any]:
    version = crd_for(kind)["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from nodes(node["items"], f"{path}[]")


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_samples_validate_against_their_crd(sample: Path) -> None:
    body = yaml.safe_load(sample.read_text())
    assert body["apiVersion"] == resources.API_VERSION
    jsonschema.Draft7Validator(schema(body["kind"])).validate(body)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("MailishBucket", {"spec": {}}),
        ("MailishBucket", {"spec": {"bucket": 65536}}),
        ("MailishBucket", {"spec": {"bucket": 1}, "status": {"reason": "whim"}}),
        ("MailishBucket", {"spec": {"bucket": 1}, "status": {"epoch": -1}}),
        ("MailishPool", {"spec": {"buckets": 0}}),
        ("MailishPool", {"spec": {"buckets": 8, "canaryShare": 1.5}}),
    ],
)
def test_invalid_objects_are_rejected(kind: str, body: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema(kind)).validate(body)


@pytest.mark.parametrize("kind", ["MailishBucket", "MailishPool"])
def test_crds_are_structural_with_status_and_columns(kind: str) -> None:
    crd = crd_for(kind)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["spec"]["group"] == resources.GROUP
    (version,) = crd["spec"]["versions"]
    assert version["name"] == resources.VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    paths = set()
    for path, node in nodes(version["schema"]["openAPIV3Schema"]):
        assert "type" in node, f"{kind}{path}: untyped (not a structural schema)"
        assert not ("properties" in node and "additionalProperties" in node), path
        paths.add(path)
    for column in version["additionalPrinterColumns"]:
        if not column["jsonPath"].startswith(".metadata"):
            assert column["jsonPath"] in paths, column


def test_bucket_columns_and_status_match_the_code() -> None:
    version = crd_for("MailishBucket")["spec"]["versions"][0]
    columns = [
        c["name"].upper() for c in version["additionalPrinterColumns"] if not c.get("priority")
    ]
    assert columns == ["BUCKET", "OWNER", "EPOCH", "REASON", "AGE"]
    status = schema("MailishBucket")["properties"]["status"]["properties"]
    assert set(status) == {"owner", "ownerUid", "epoch", "assignedAt", "reason", "previousOwner"}
    assert set(status["reason"]["enum"]) == MOVE_REASONS


def test_pool_defaults_are_the_operators_defaults() -> None:
    spec = schema("MailishPool")["properties"]["spec"]["properties"]
    defaults = facts.PoolSettings(buckets=1)
    assert spec["resyncSeconds"]["default"] == defaults.resync
    assert spec["leaseGraceSeconds"]["default"] == defaults.lease_grace
    assert spec["maxMovesPerCycle"]["default"] == defaults.max_moves
    assert spec["canaryShare"]["default"] == defaults.canary_share
    status = schema("MailishPool")["properties"]["status"]["properties"]
    assert set(status) == {
        "buckets",
        "eligibleWorkers",
        "ineligibleWorkers",
        "unownedBuckets",
        "highestEpoch",
    }
