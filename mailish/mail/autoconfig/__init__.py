"""Autoconfig discovery (issue 6): IMAP/SMTP settings for an address, and where they came from.

``discovering.discover`` is the entry point; the other modules are its parts (the provider
table, the SSRF-guarded DNS/HTTPS/probe helpers, and one function per source).
"""
