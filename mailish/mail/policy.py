"""How we may connect to users' mail servers: trusted CAs, timeouts and the dev allowances.

Built once from the settings and handed to every adapter that opens a connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    ca_files: tuple[Path, ...] = ()
    allow_plaintext: bool = False
    allow_private_hosts: bool = False
    timeout: float = 30.0
