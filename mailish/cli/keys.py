"""Where the credential key ring comes from: the environment, a mounted file, or (local runs
only) a key file that ``mailish up`` creates in the data folder, with a warning."""

from __future__ import annotations

import logging

from mailish.config import Settings
from mailish.domain.errors import ConfigError
from mailish.mail.credentials import KeyRing, load_or_create_dev_keys

log = logging.getLogger(__name__)
DEV_KEY_FILE = "secret.keys"


def keyring(settings: Settings, *, local: bool) -> KeyRing:
    if settings.secret_keys is not None:
        return KeyRing.parse(settings.secret_keys.get_secret_value())
    if settings.secret_keys_file is not None:
        return KeyRing.parse(settings.secret_keys_file.read_text())
    if not local:
        raise ConfigError(
            "MAILISH_SECRET_KEYS (or MAILISH_SECRET_KEYS_FILE) is required to encrypt "
            "credentials; generate one with `mailish keys new`"
        )
    ring, created = load_or_create_dev_keys(settings.data_dir / DEV_KEY_FILE)
    if created:
        log.warning(
            "created a development key file %s; set MAILISH_SECRET_KEYS outside development",
            settings.data_dir / DEV_KEY_FILE,
        )
    return ring
