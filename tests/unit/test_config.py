"""Settings: defaults, parsing, and one-line errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailish.config import load_settings
from mailish.domain.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MAILISH_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults() -> None:
    s = load_settings()
    assert (s.api_host, s.api_port, s.buckets) == ("127.0.0.1", 8080, 64)
    assert (s.log_level, s.log_format) == ("INFO", "json")
    assert s.database_dsn() is None
    assert not s.allow_plaintext and not s.allow_private_hosts
    assert s.tls_ca_file == ()


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca1, ca2 = tmp_path / "a.pem", tmp_path / "b.pem"
    ca1.write_text("x")
    ca2.write_text("y")
    monkeypatch.setenv("MAILISH_DATABASE_URL", "postgresql://u:pw@db.example/mail")
    monkeypatch.setenv("MAILISH_API_PORT", "9000")
    monkeypatch.setenv("MAILISH_BUCKETS", "128")
    monkeypatch.setenv("MAILISH_LOG_LEVEL", "debug")
    monkeypatch.setenv("MAILISH_LOG_FORMAT", "text")
    monkeypatch.setenv("MAILISH_TLS_CA_FILE", f"{ca1},{ca2}")
    monkeypatch.setenv("MAILISH_ALLOW_PLAINTEXT", "1")
    monkeypatch.setenv("MAILISH_ALLOW_PRIVATE_HOSTS", "true")
    s = load_settings()
    assert s.database_dsn() == "postgresql://u:pw@db.example/mail"
    assert "pw" not in repr(s)
    assert (s.api_port, s.buckets, s.log_level, s.log_format) == (9000, 128, "DEBUG", "text")
    assert s.tls_ca_file == (ca1, ca2)
    assert s.allow_plaintext and s.allow_private_hosts


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("MAILISH_DATABASE_URL", "mysql://x", "postgresql://"),
        ("MAILISH_API_PORT", "-1", "greater than or equal"),
        ("MAILISH_API_PORT", "http", "integer"),
        ("MAILISH_BUCKETS", "100000", "less than or equal"),
        ("MAILISH_LOG_FORMAT", "xml", "json"),
        ("MAILISH_TLS_CA_FILE", "/nope.pem", "does not exist"),
        ("MAILISH_ALLOW_PRIVATE_HOSTS", "sure", "boolean"),
    ],
)
def test_bad_values_give_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"invalid setting {variable}:")
    assert fragment in message
