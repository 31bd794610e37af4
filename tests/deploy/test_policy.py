"""Policy over the rendered manifests: credentials, RBAC, pod security, canary labels."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.deploy.conftest import VALUES

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
SECRET_LOOKING = re.compile(
    r"(postgres(ql)?://|://[^/\s]*:[^@\s]*@|client_secret|-----BEGIN|^[\w-]+:[A-Za-z0-9+/]{40,}={0,2}$)",
    re.IGNORECASE,
)
SECRET_NAMES = (
    "DATABASE_URL", "SECRET_KEYS", "OAUTH_PROVIDERS", "REDIS_URL", "PASSWORD", "TOKEN",
)  # fmt: skip


def pod_specs(docs: list[dict]) -> Iterator[tuple[dict, dict]]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield doc, doc["spec"]["template"]["spec"]


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def component(doc: dict) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


@pytest.fixture(params=list(VALUES))
def docs(request: pytest.FixtureRequest, rendered: dict[str, list[dict]]) -> list[dict]:
    return rendered[request.param]


def test_credentials_come_only_from_secrets(docs: list[dict]) -> None:
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            for key, value in doc.get("data", {}).items():
                if key.endswith(".json"):
                    continue  # dashboards
                assert not any(n in key for n in SECRET_NAMES), f"{key} in a ConfigMap"
                assert not SECRET_LOOKING.search(value), f"{key}={value!r} in a ConfigMap"
    for doc, spec in pod_specs(docs):
        for container in containers(spec):
            for env in container.get("env", []):
                name = env["name"]
                if "value" in env:
                    assert not SECRET_LOOKING.search(env["value"]), f"{name} is a literal"
                    assert not name.endswith(SECRET_NAMES), f"{name} is a literal value"
                if name in ("MAILISH_DATABASE_URL", "MAILISH_SECRET_KEYS", "MAILISH_REDIS_URL"):
                    assert "secretKeyRef" in env["valueFrom"], name
            for source in container.get("envFrom", []):
                assert "secretRef" in source or "configMapRef" in source
        if component(doc) in ("api", "worker"):
            names = {e["name"] for c in containers(spec) for e in c.get("env", [])}
            assert {"MAILISH_DATABASE_URL", "MAILISH_SECRET_KEYS_FILE"} <= names
            if any(d["kind"] == "Secret" and "redis-url" in d.get("stringData", {}) for d in docs):
                assert "MAILISH_REDIS_URL" in names  # the shared token cache reaches every pod
            secret_volumes = [v for v in spec["volumes"] if "secret" in v]
            assert secret_volumes, "the key ring is mounted from a Secret"


def test_rbac_least_privilege(docs: list[dict]) -> None:
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Role", "ClusterRole")}
    for role in roles.values():
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"wildcard in {role['metadata']['name']}"
            assert "secrets" not in rule["resources"], role["metadata"]["name"]
            assert "pods/exec" not in rule["resources"]
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    bound: dict[str, set[str]] = {}
    for binding in bindings:
        for subject in binding["subjects"]:
            bound.setdefault(subject["name"], set()).add(binding["roleRef"]["name"])
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    api_sa = next(n for n, d in accounts.items() if component(d) == "api")
    assert api_sa not in bound, "the api has no Kubernetes API access"
    assert accounts[api_sa]["automountServiceAccountToken"] is False

    def grants(sa: str) -> set[tuple[str, str]]:
        return {
            (res, verb)
            for role in bound.get(sa, ())
            for rule in roles[role]["rules"]
            for res in rule["resources"]
            for verb in rule["verbs"]
        }

    worker_sa = next(n for n, d in accounts.items() if component(d) == "worker")
    assert grants(worker_sa) == {
        ("mailishbuckets", "get"),
        ("mailishbuckets", "list"),
        ("mailishbuckets", "watch"),
        ("leases", "get"),
        ("leases", "create"),
        ("leases", "update"),
        ("leases", "patch"),
    }
    operator_sa = next(n for n, d in accounts.items() if component(d) == "operator")
    operator = grants(operator_sa)
    assert ("mailishbuckets/status", "patch") in operator
    assert ("mailishpools/status", "patch") in operator
    assert ("nodes", "watch") in operator
    assert ("events", "create") in operator
    assert not {v for r, v in operator if r in ("pods", "leases", "nodes")} - {"list", "watch"}
    assert ("mailishbuckets", "delete") not in operator


def test_pods_are_locked_down(docs: list[dict]) -> None:
    for doc, spec in pod_specs(docs):
        name = doc["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        if component(doc) in ("api", "migrate"):
            assert spec["automountServiceAccountToken"] is False, name
        for container in containers(spec):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            limits = container["resources"]["limits"]
            assert {"cpu", "memory"} <= set(limits), name
            if doc["kind"] != "Job":
                assert "readinessProbe" in container, name
                assert "livenessProbe" in container, name


def test_workers_spread_and_roll_safely(docs: list[dict]) -> None:
    workers = [d for d in docs if d["kind"] == "Deployment" and component(d) == "worker"]
    assert workers
    for worker in workers:
        spec = worker["spec"]
        assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        pod = spec["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= 30
        keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        for var, field in (
            ("POD_NAME", "metadata.name"),
            ("POD_UID", "metadata.uid"),
            ("NODE_NAME", "spec.nodeName"),
            ("POD_NAMESPACE", "metadata.namespace"),
        ):
            assert env[var]["valueFrom"]["fieldRef"]["fieldPath"] == field
    operators = [d for d in docs if d["kind"] == "Deployment" and component(d) == "operator"]
    assert len(operators) == 1
    assert operators[0]["spec"]["replicas"] == 1
    assert operators[0]["spec"]["strategy"]["type"] == "Recreate"
    pdbs = {component(d) for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert {"api", "worker"} <= pdbs


def test_migrations_run_as_a_pre_install_hook(docs: list[dict]) -> None:
    jobs = [d for d in docs if d["kind"] == "Job"]
    assert len(jobs) == 1
    hooks = jobs[0]["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert set(hooks) == {"pre-install", "pre-upgrade"}
    assert jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_canary_and_stable_share_the_pool_but_not_the_track(
    rendered: dict[str, list[dict]],
) -> None:
    docs = rendered["canary"]
    workers = [d for d in docs if d["kind"] == "Deployment" and component(d) == "worker"]
    labels = [w["spec"]["template"]["metadata"]["labels"] for w in workers]
    assert sorted(lbl["track"] for lbl in labels) == ["canary", "stable"]
    assert len({lbl["mailish.io/pool"] for lbl in labels}) == 1
    images = {w["spec"]["template"]["spec"]["containers"][0]["image"] for w in workers}
    assert len(images) == 2, "the canary runs its own tag"
    for worker in workers:  # selectors must not overlap, or the Deployments fight
        assert worker["spec"]["selector"]["matchLabels"]["track"] in ("stable", "canary")
    pool = next(d for d in docs if d["kind"] == "MailishPool")
    assert pool["spec"]["canaryShare"] == 0.1
    ingresses = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Ingress"}
    canary = [i for i in ingresses.values() if i["metadata"]["labels"]["track"] == "canary"]
    stable = [i for i in ingresses.values() if i["metadata"]["labels"]["track"] == "stable"]
    assert len(canary) == len(stable) == 1
    annotations = canary[0]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/canary"] == "true"
    assert annotations["nginx.ingress.kubernetes.io/canary-weight"] == "10"
    assert "nginx.ingress.kubernetes.io/canary" not in stable[0]["metadata"].get("annotations", {})
    assert canary[0]["spec"]["rules"][0]["host"] == stable[0]["spec"]["rules"][0]["host"]
    for ingress in ingresses.values():
        assert ingress["spec"]["tls"][0]["secretName"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for ingress in ingresses.values():
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
        track = ingress["metadata"]["labels"]["track"]
        assert services[backend]["spec"]["selector"]["track"] == track


def test_default_install_has_no_canary(rendered: dict[str, list[dict]]) -> None:
    tracks = {
        d["spec"]["template"]["metadata"]["labels"].get("track")
        for d in rendered["default"]
        if d["kind"] == "Deployment" and component(d) in ("api", "worker")
    }
    assert tracks == {"stable"}
