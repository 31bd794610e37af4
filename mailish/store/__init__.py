"""PostgreSQL adapter: the only package that contains SQL.

One module per aggregate (``accounts``, ``claims``, ...) with the SQL as module constants;
functions take a connection and keyword-only arguments and return domain values.
"""
