"""Settings, read once from ``MAILISH_*`` environment variables (and an optional ``.env``).

Built in ``main()`` and passed down; nothing reads the environment later. Invalid values fail
at start-up with a one-line message naming the variable (see ``load_settings``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mailish.domain.buckets import MAX_BUCKETS
from mailish.domain.errors import ConfigError

ENV_PREFIX = "MAILISH_"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["json", "text"]


def _default_worker_id() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL DSN; unset means `mailish up` runs an embedded PostgreSQL.",
    )
    data_dir: Path = Field(
        default=Path(".mailish"), description="Local state for `mailish up` (embedded database)."
    )
    pg_bin_dir: Path | None = Field(
        default=None, description="Folder with PostgreSQL's initdb/pg_ctl; found automatically."
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Workers and the operator serve /healthz, /readyz, /metrics here.",
    )
    buckets: int = Field(default=64, ge=1, le=MAX_BUCKETS)
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "json"
    tls_ca_file: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(), description="Extra CA bundle(s) to trust besides the system store."
    )
    allow_private_hosts: bool = Field(
        default=False, description="Dev only: mail hosts on loopback or private addresses."
    )
    allow_plaintext: bool = Field(default=False, description="Dev only: IMAP/SMTP without TLS.")
    secret_keys: SecretStr | None = Field(
        default=None,
        description="Credential encryption keys 'id:base64key,...'; the first encrypts.",
    )
    secret_keys_file: Path | None = Field(
        default=None, description="A file holding MAILISH_SECRET_KEYS' value (a mounted Secret)."
    )
    oauth_providers: SecretStr | None = Field(
        default=None,
        description='OAuth2 clients as JSON: {"google": {"client_id": ..., "client_secret": ...}}.',
    )
    oauth_providers_file: Path | None = Field(
        default=None, description="A file holding MAILISH_OAUTH_PROVIDERS' JSON (a Secret)."
    )
    ispdb_url: str = Field(
        default="https://autoconfig.thunderbird.net/v1.1/",
        pattern=r"^https://.+/$",
        description="Mozilla ISPDB base URL used by autoconfig discovery.",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="Shared OAuth2 access-token cache (redis://, rediss:// or unix://); unset "
        "means each process caches its own.",
    )
    oauth_token_margin: float = Field(
        default=60.0, ge=0, le=3600, description="Refresh access tokens this early (seconds)."
    )
    lease_duration: float = Field(
        default=15.0,
        ge=2,
        le=300,
        description="Seconds a worker's Kubernetes Lease lasts; renewed every third, the worker "
        "fences itself after three quarters. Keep MailishPool leaseGraceSeconds >= this.",
    )
    worker_id: str = Field(default_factory=_default_worker_id, min_length=1, max_length=253)
    worker_audit_interval: float = Field(
        default=2.0, ge=0.05, le=300,
        description="Seconds between a worker's audits (claims still held, accounts to start "
        "or stop, due sends).",
    )  # fmt: skip
    sync_batch: int = Field(default=100, ge=1, le=1000, description="Messages per FETCH.")
    sync_poll_interval: float = Field(
        default=60.0, gt=0, le=3600, description="Seconds between polls of non-pushed folders."
    )
    sync_notify_poll_interval: float = Field(
        default=300.0, gt=0, le=3600,
        description="Seconds between safety polls of accounts whose server pushes changes to "
        "every folder (NOTIFY).",
    )  # fmt: skip
    imap_timeout: float = Field(default=30.0, gt=0, le=600)
    changes_retention_days: float = Field(
        default=30.0, gt=0, description="How long /v1/changes can look back."
    )
    api_max_body: int = Field(
        default=1 << 20, ge=1024, le=1 << 30, description="Largest request body, in bytes."
    )
    max_message_size: int = Field(
        default=25 * 1024 * 1024,
        ge=1024,
        le=1 << 30,
        description="Largest message (and upload) mailish composes or accepts, in bytes.",
    )
    max_recipients: int = Field(default=100, ge=1, le=10_000)
    presend_check_url: str | None = Field(
        default=None, description="Optional HTTP service asked to approve each send."
    )
    api_rate: float = Field(default=20.0, gt=0, description="Requests per second per token.")
    api_burst: int = Field(default=100, ge=1, description="Requests a token may burst.")
    db_pool_min: int = Field(default=1, ge=0, le=100)
    db_pool_max: int = Field(default=10, ge=1, le=1000)
    db_connect_timeout: float = Field(default=10.0, gt=0, le=300)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("tls_ca_file", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(
                Path(p.strip()) for p in value.replace(os.pathsep, ",").split(",") if p.strip()
            )
        return value

    @field_validator("tls_ca_file")
    @classmethod
    def _ca_files_exist(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        for path in value:
            if not path.is_file():
                raise ValueError(f"CA file {str(path)!r} does not exist")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        dsn = value.get_secret_value()
        if not dsn:
            return None
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        if not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("secret_keys_file", "oauth_providers_file")
    @classmethod
    def _keys_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {str(value)!r} does not exist")
        return value

    def database_dsn(self) -> str | None:
        return self.database_url.get_secret_value() if self.database_url else None


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + str(loc[0]).upper() if loc else ENV_PREFIX + "?"


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning the first validation error into one ``ConfigError`` line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {_env_name(first['loc'])}: {message}") from None
