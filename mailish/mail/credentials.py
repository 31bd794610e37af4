"""Credentials at rest: AES-256-GCM with a key ring and the account id as associated data.

Blob layout: ``b"m1" | key id length (1 byte) | key id | 12-byte nonce | ciphertext+tag``.
The key id travels with the blob, so old blobs stay readable after a new key is added, and
``rotate`` re-encrypts under the newest. Binding the account id as associated data means a
blob copied into another account's row fails to decrypt instead of handing over a password.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mailish.domain.errors import ConfigError, PermanentError

MAGIC = b"m1"
KEY_BYTES = 32


class CredentialError(PermanentError):
    """A stored credential cannot be decrypted (wrong account, unknown key, tampering)."""


@dataclass(frozen=True)
class KeyRing:
    """Key id → 32-byte key; ``primary`` encrypts, every key decrypts."""

    keys: Mapping[str, bytes]
    primary: str

    def __post_init__(self) -> None:
        if self.primary not in self.keys:
            raise ConfigError("the primary secret key is not in the key ring")
        for kid, key in self.keys.items():
            if len(key) != KEY_BYTES:
                raise ConfigError(f"secret key {kid!r} must be {KEY_BYTES} bytes")
            if not kid or len(kid.encode()) > 64 or not kid.isascii():
                raise ConfigError(f"secret key id {kid!r} must be 1-64 ASCII characters")

    def __repr__(self) -> str:
        return f"KeyRing(primary={self.primary!r}, ids={sorted(self.keys)!r})"

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """``kid:base64key[,kid:base64key...]``; the first entry is the primary (newest)."""
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for item in text.replace("\n", ",").split(","):
            item = item.strip()
            if not item:
                continue
            kid, sep, b64 = item.partition(":")
            if not sep:
                raise ConfigError("MAILISH_SECRET_KEYS entries look like 'id:base64key'")
            try:
                keys[kid.strip()] = base64.b64decode(b64.strip(), validate=True)
            except ValueError:
                raise ConfigError(f"secret key {kid.strip()!r} is not valid base64") from None
            order.append(kid.strip())
        if not order:
            raise ConfigError("MAILISH_SECRET_KEYS is empty")
        return cls(keys, order[0])

    def encrypt(self, account_id: UUID, secret: Mapping[str, str]) -> bytes:
        kid = self.primary.encode()
        nonce = os.urandom(12)
        plaintext = json.dumps(dict(secret), separators=(",", ":")).encode()
        sealed = AESGCM(self.keys[self.primary]).encrypt(nonce, plaintext, account_id.bytes)
        return MAGIC + bytes([len(kid)]) + kid + nonce + sealed

    def key_id(self, blob: bytes) -> str:
        if not blob.startswith(MAGIC) or len(blob) < 3:
            raise CredentialError("not a mailish credential blob")
        n = blob[2]
        return blob[3 : 3 + n].decode("ascii", "replace")

    def decrypt(self, account_id: UUID, blob: bytes) -> dict[str, str]:
        kid = self.key_id(blob)
        key = self.keys.get(kid)
        if key is None:
            raise CredentialError(f"credential sealed with unknown key {kid!r}")
        start = 3 + blob[2]
        nonce, sealed = blob[start : start + 12], blob[start + 12 :]
        try:
            plaintext = AESGCM(key).decrypt(nonce, sealed, account_id.bytes)
        except InvalidTag:
            raise CredentialError(
                "credential does not belong to this account or was altered"
            ) from None
        value = json.loads(plaintext)
        if not isinstance(value, dict):
            raise CredentialError("credential payload is not an object")
        return {str(k): str(v) for k, v in value.items()}


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def format_key(kid: str, key: bytes) -> str:
    return f"{kid}:{base64.b64encode(key).decode()}"


def load_or_create_dev_keys(path: Path) -> tuple[KeyRing, bool]:
    """The local key file for `mailish up`; returns (ring, created). Mode 0600."""
    created = False
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(format_key("dev1", new_key()) + "\n")
        created = True
    return KeyRing.parse(path.read_text()), created
