"""Pure logic with no I/O: ids, errors, buckets, folder names and roles, sync decisions, MIME.

Nothing here may import asyncio, a network library or the configuration; an import-linter
contract enforces that, so everything in this package is testable with plain values.
"""
