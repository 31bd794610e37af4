"""External mail protocols: IMAP and SMTP clients, TLS policy, discovery, OAuth2, credentials.

Everything here verifies TLS: certificates are checked against the system store plus
``MAILISH_TLS_CA_FILE``, STARTTLS is never skipped when it was asked for, and foreign
exceptions are translated into ``mailish.domain.errors`` at this boundary.
"""
