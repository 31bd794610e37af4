"""helm lint / helm template with every CI values file, and offline schema validation."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import CHART, NAMESPACE, ROOT, VALUES, VENV_BIN, helm, template_args

# Kinds that no Kubernetes schema covers: ours are checked against their CRD below; the
# prometheus-operator ones are skipped explicitly (their CRDs are not part of this repo).
OWN_KINDS = {"MailishPool", "MailishBucket"}
SKIPPED_KINDS = {"ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("name", list(VALUES))
def test_helm_lint(tools: Path, name: str) -> None:
    args = ["lint", str(CHART), "--strict", "--namespace", NAMESPACE]
    if VALUES[name] is not None:
        args += ["-f", str(VALUES[name])]
    done = helm(*args)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", list(VALUES))
def test_rendered_manifests_are_valid_kubernetes(
    rendered: dict[str, list[dict]], tmp_path: Path, name: str
) -> None:
    docs = rendered[name]
    builtin = [d for d in docs if d["kind"] not in OWN_KINDS | SKIPPED_KINDS]
    assert builtin
    files = []
    for i, doc in enumerate(builtin):
        path = tmp_path / f"{i:03d}-{doc['kind']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    done = subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", "--quiet", *files],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _crd_schema(plural: str) -> dict:
    crd = yaml.safe_load((ROOT / "crds" / f"{plural}.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("name", list(VALUES))
def test_custom_resources_match_their_schemas(rendered: dict[str, list[dict]], name: str) -> None:
    pools = [d for d in rendered[name] if d["kind"] == "MailishPool"]
    assert len(pools) == 1, "one MailishPool per namespace"
    jsonschema.validate(pools[0], _crd_schema("mailishpools"))
    for doc in rendered[name]:
        if doc["kind"] in SKIPPED_KINDS:
            # Structural check only: no prometheus-operator schema is vendored here.
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert doc["spec"]


def test_pool_follows_values(tools: Path) -> None:
    from tests.deploy.conftest import render

    default = next(d for d in render(VALUES["default"]) if d["kind"] == "MailishPool")
    assert default["spec"]["canaryShare"] == 0
    canary = render(
        VALUES["canary"], "--set-json", "buckets=128", "--set-json", "canary.bucketShare=0.25"
    )
    pool = next(d for d in canary if d["kind"] == "MailishPool")
    assert pool["spec"]["buckets"] == 128
    assert pool["spec"]["canaryShare"] == 0.25
    config = next(d for d in canary if d["kind"] == "ConfigMap" and "MAILISH_BUCKETS" in d["data"])
    assert config["data"]["MAILISH_BUCKETS"] == "128", "workers and the pool agree on buckets"


def test_crds_are_installed_from_crds_folder_and_kept(rendered: dict[str, list[dict]]) -> None:
    assert not [d for d in rendered["default"] if d["kind"] == "CustomResourceDefinition"]
    crds = [d for d in rendered["minimal-production"] if d["kind"] == "CustomResourceDefinition"]
    assert {d["metadata"]["name"] for d in crds} == {
        "mailishbuckets.mailish.io",
        "mailishpools.mailish.io",
    }
    for crd in crds:
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        plural = crd["spec"]["names"]["plural"]
        source = yaml.safe_load((ROOT / "crds" / f"{plural}.yaml").read_text())
        assert crd["spec"] == source["spec"], f"helm/mailish/files/crds/{plural}.yaml drifted"


def test_chart_crd_copies_match_crds_folder() -> None:
    for copy in (CHART / "files" / "crds").glob("*.yaml"):
        assert copy.read_text() == (ROOT / "crds" / copy.name).read_text(), (
            f"copy crds/{copy.name} to helm/mailish/files/crds/"
        )


def test_values_schema_rejects_canary_without_tag(tools: Path) -> None:
    done = helm(*template_args(None, "--set", "canary.enabled=true"))
    assert done.returncode != 0
    assert "canary.image.tag" in done.stderr
    ok = helm(*template_args(None, "--set", "canary.enabled=true,canary.image.tag=1.2.3"))
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    "setting",
    [
        "secrets.create=true",  # no database URL or keys
        "secrets.create=true,secrets.databaseUrl=mysql://x,secrets.secretKeys=k:a",
        "config.extra.MAILISH_DATABASE_URL=postgresql://u:p@h/db",
        "securityContext.runAsNonRoot=false",
        "api.ingress.enabled=true",  # no host / TLS secret
        "unknownKey=1",
    ],
)
def test_values_schema_rejects(tools: Path, setting: str) -> None:
    done = helm(*template_args(None, "--set", setting))
    assert done.returncode != 0, f"{setting} was accepted"


def test_values_schema_is_valid_json_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(defaults)


def test_skaffold_yaml_matches_schema(tools: Path) -> None:
    done = subprocess.run(
        [
            str(VENV_BIN / "check-jsonschema"),
            "--schemafile",
            str(ROOT / "tests" / "deploy" / "schemas" / "skaffold-v4beta.schema.json"),
            str(ROOT / "skaffold.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert {p["name"] for p in config["profiles"]} >= {"dev", "canary"}
    assert config["deploy"]["helm"]["releases"][0]["chartPath"] == "helm/mailish"
    for profile in config["profiles"]:
        for patch in profile.get("patches", []):
            assert patch["path"].startswith("/deploy/helm/releases/0/")
