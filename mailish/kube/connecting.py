"""Where the Kubernetes API is and how to authenticate, for our own httpx client and for kopf.

Why the official client's loaders: kubeconfig has many authentication forms (tokens, client
certificates, exec plugins, auth providers) and the in-cluster service-account token is
rotated by the kubelet. ``kubernetes.config`` already handles all of them; we load it into a
private ``Configuration`` (never the process-wide default) and read the server, TLS files and
a *fresh* Authorization header from it on every request, so a rotated token is picked up
without a restart. kopf gets the same values through ``mailish.operator``'s login handler.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailish.domain.errors import ConfigError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _no_authorization() -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class KubeConnection:
    server: str
    ca_file: str | None = None
    verify: bool = True
    cert_file: str | None = None
    key_file: str | None = None
    namespace: str | None = None
    authorization: Callable[[], str | None] = field(default=_no_authorization, repr=False)

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What httpx's ``verify=`` takes: a context with our CA and client cert, or False."""
        if not self.server.startswith("https://"):
            return True
        if not self.verify:
            return False
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def load_connection(*, kubeconfig: str | None = None) -> KubeConnection:
    """In-cluster service account if we run in a pod, else the kubeconfig file.

    Raises ``ConfigError`` when neither is usable, naming both attempts.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            namespace_file = SERVICE_ACCOUNT / "namespace"
            namespace = namespace_file.read_text().strip() if namespace_file.exists() else None
            return _from_configuration(configuration, namespace)
        except config.ConfigException as exc:
            in_cluster_error = str(exc)
    else:
        in_cluster_error = "not in a pod (KUBERNETES_SERVICE_HOST unset)"
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration, persist_config=False
        )
    except (config.ConfigException, OSError) as exc:
        raise ConfigError(
            f"no Kubernetes credentials: in-cluster: {in_cluster_error}; kubeconfig: {exc}"
        ) from exc
    return _from_configuration(configuration, None)


def _from_configuration(configuration: Any, namespace: str | None) -> KubeConnection:
    def authorization() -> str | None:
        hook = getattr(configuration, "refresh_api_key_hook", None)
        if hook is not None:
            hook(configuration)
        header = configuration.get_api_key_with_prefix(
            "BearerToken"
        ) or configuration.get_api_key_with_prefix("authorization")
        if not header:
            basic = configuration.get_basic_auth_token()
            return str(basic) if basic else None
        scheme, _, token = str(header).partition(" ")
        return f"Bearer {scheme}" if not token else f"{scheme.capitalize()} {token}"

    return KubeConnection(
        server=str(configuration.host).rstrip("/"),
        ca_file=configuration.ssl_ca_cert or None,
        verify=bool(configuration.verify_ssl),
        cert_file=configuration.cert_file or None,
        key_file=configuration.key_file or None,
        namespace=namespace,
        authorization=authorization,
    )
