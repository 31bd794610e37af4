"""How we may connect to users' mail servers: trusted CAs, timeouts and the dev allowances.

Built once from the settings and handed to every adapter that opens a connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailish.config import Settings
from mailish.domain.endpoints import Endpoint
from mailish.mail.imap.connection import ImapSettings
from mailish.mail.smtp import SmtpSettings


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    ca_files: tuple[Path, ...] = ()
    allow_plaintext: bool = False
    allow_private_hosts: bool = False
    timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionPolicy:
        return cls(
            ca_files=settings.tls_ca_file,
            allow_plaintext=settings.allow_plaintext,
            allow_private_hosts=settings.allow_private_hosts,
            timeout=settings.imap_timeout,
        )

    def imap(self, endpoint: Endpoint) -> ImapSettings:
        return ImapSettings(
            endpoint, ca_files=self.ca_files, allow_plaintext=self.allow_plaintext,
            allow_private_hosts=self.allow_private_hosts, timeout=self.timeout,
        )  # fmt: skip

    def smtp(self, endpoint: Endpoint) -> SmtpSettings:
        return SmtpSettings(
            endpoint, ca_files=self.ca_files, allow_plaintext=self.allow_plaintext,
            allow_private_hosts=self.allow_private_hosts, timeout=self.timeout,
        )  # fmt: skip
