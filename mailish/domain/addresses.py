"""Email address syntax, checked without DNS.

Deliberately permissive about the local part (providers accept far more than RFC 5321's
"safe" subset) and strict about what would break a protocol line: no whitespace or control
characters, one ``@``, a domain of valid IDNA labels (or a bracketed address literal).
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f<>()\[\],;:\\\"@]")


class AddressError(ValueError):
    pass


def normalise_address(address: str) -> str:
    """The address with its domain lower-cased and IDNA-encoded; raises AddressError."""
    text = address.strip()
    local, sep, domain = text.rpartition("@")
    if not sep or not local or not domain:
        raise AddressError(f"{address!r} is not an email address")
    if (
        len(local) > 64
        or _FORBIDDEN.search(local)
        or ".." in local
        or local.startswith(".")
        or local.endswith(".")
    ):
        raise AddressError(f"{address!r} has an invalid local part")
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1].removeprefix("IPv6:")
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            raise AddressError(f"{address!r} has an invalid address literal") from None
        return f"{local}@{domain}"
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise AddressError(f"{address!r} has an invalid domain") from None
    labels = ascii_domain.rstrip(".").split(".")
    if len(ascii_domain) > 253 or not all(_LABEL.match(label) for label in labels):
        raise AddressError(f"{address!r} has an invalid domain")
    return f"{local}@{ascii_domain}"
