"""Opening pools and connections, with failures translated into one-line errors.

A DSN that points nowhere, a wrong password or a missing database must stop ``mailish up``
with a sentence, not an asyncpg traceback; ``connect_pool`` is where that translation lives.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from mailish.domain.errors import ConfigError, TransientError

# Re-exported for the layers above, which never import asyncpg themselves. ``Conn`` is what
# store functions accept: a plain connection or one borrowed from a pool.
if TYPE_CHECKING:
    Pool: TypeAlias = asyncpg.Pool[Any]
    Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Pool = asyncpg.Pool
    Conn = asyncpg.Connection | PoolConnectionProxy


# What a lost, restarted or failed-over database looks like to a caller: the socket failed,
# the server ended the session (pg_terminate_backend, shutdown), asyncpg found the connection
# closed, or, right after a termination, still busy with the aborted operation
# (InternalClientError "another operation is in progress"; the pool replaces it on release).
# Long-lived loops catch these and retry instead of ending the process.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


# A process that stops in the middle of a transaction (SIGSTOP, a long GC pause, a partition)
# keeps its row locks, and a fenced transaction holds FOR SHARE on its bucket's claim row: the
# successor's claim would wait for it forever. PostgreSQL ends such transactions after this
# long, so a takeover waits at most this much (longer than any transaction we keep open
# across I/O: the OAuth refresh's 15 s HTTP timeout).
IDLE_IN_TRANSACTION_TIMEOUT_MS = 20_000
SESSION_SETTINGS = {"idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS)}


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, safe to print."""
    try:
        from urllib.parse import urlsplit

        parts = urlsplit(dsn)
        host = parts.hostname or "local socket"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.username or ''}@{host}{port}{parts.path}"
    except ValueError:
        return "<unparseable DSN>"


def _translate(exc: BaseException, dsn: str) -> Exception:
    where = describe_dsn(dsn)
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return ConfigError(f"database {where}: login refused ({exc})")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return ConfigError(f"database {where}: {exc}")
    if isinstance(exc, socket.gaierror):
        return ConfigError(f"database {where}: cannot resolve host ({exc.strerror})")
    if isinstance(exc, ssl.SSLError):
        return ConfigError(f"database {where}: TLS failed ({exc.reason})")
    if isinstance(exc, OSError | asyncio.TimeoutError | asyncpg.CannotConnectNowError):
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        return TransientError(f"database {where}: cannot connect ({reason})", delay=1.0)
    if isinstance(exc, ValueError | asyncpg.ClientConfigurationError):
        return ConfigError(f"database {where}: invalid DSN ({exc})")
    return ConfigError(f"database {where}: {type(exc).__name__}: {exc}")


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog"
    )
    await conn.set_type_codec("json", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """What a pooled connection needs between uses beyond what asyncpg always does on release
    (roll back an open transaction, drop listener callbacks): nothing. mailish takes no
    session-level advisory locks, settings or cursors on pooled connections, and the one
    pooled LISTEN (the worker's operations listener) UNLISTENs itself, so the default reset
    query (UNLISTEN *, RESET ALL, ...) would be a round trip on every release for nothing:
    ~15% of the statements of a first sync."""


def _json_dumps(value: object) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_loads(text: str) -> object:
    import json

    return json.loads(text)


async def connect(dsn: str, *, connect_timeout: float = 10.0) -> asyncpg.Connection[Any]:
    """One connection (for migrations, LISTEN); raises ConfigError or TransientError."""
    try:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn, timeout=connect_timeout)
    except Exception as exc:
        raise _translate(exc, dsn) from exc
    await _init_connection(conn)
    return conn


async def connect_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 10.0
) -> Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            command_timeout=60,
            init=_init_connection,
            reset=_keep_session,
            server_settings=SESSION_SETTINGS,
        )
    except Exception as exc:
        raise _translate(exc, dsn) from exc
    assert pool is not None
    return pool


async def wait_until_reachable(dsn: str, *, deadline: float, connect_timeout: float = 5.0) -> None:
    """Retry transient connection failures until ``deadline`` (loop time); config errors raise."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn = await connect(dsn, connect_timeout=connect_timeout)
        except TransientError:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.25)
            continue
        await conn.close()
        return
