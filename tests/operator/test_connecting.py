"""Credentials: a kubeconfig becomes our connection, and the same values reach kopf."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mailish.domain.errors import ConfigError
from mailish.kube.connecting import KubeConnection, load_connection
from mailish.operator.handlers import connection_info


def kubeconfig(path: Path, user: dict[str, object]) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": "https://10.0.0.1:6443", "insecure-skip-tls-verify": True},
            }
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_kubeconfig_token_reaches_our_client_and_kopf(tmp_path: Path) -> None:
    connection = load_connection(kubeconfig=str(kubeconfig(tmp_path / "k", {"token": "s3cr3t"})))
    assert connection.server == "https://10.0.0.1:6443" and connection.verify is False
    assert connection.ssl_context() is False
    assert connection.authorization() == "Bearer s3cr3t"
    info = connection_info(connection)
    assert (info.server, info.scheme, info.token, info.insecure) == (
        "https://10.0.0.1:6443",
        "Bearer",
        "s3cr3t",
        True,
    )
    assert "s3cr3t" not in repr(connection)


def test_plain_http_needs_no_tls_and_no_credentials() -> None:
    connection = KubeConnection(server="http://127.0.0.1:8001")
    assert connection.ssl_context() is True and connection.authorization() is None
    assert connection_info(connection).token is None


def test_no_credentials_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="no Kubernetes credentials"):
        load_connection(kubeconfig=str(tmp_path / "missing"))
