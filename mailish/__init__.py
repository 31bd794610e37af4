"""mailish: external IMAP/SMTP mailboxes behind one mobile mail API."""

__version__ = "0.1.0"
