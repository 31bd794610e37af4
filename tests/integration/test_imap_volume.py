"""How much a server may send: long lines are fine up to MAX_LONG_LINE, one command takes at
most MAX_COMMAND_BYTES, and a flood of unsolicited responses collapses into one OVERFLOW
marker (the session resyncs). Scripted servers on a real socket, plaintext for brevity."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mailish.domain.endpoints import Endpoint, Security
from mailish.domain.errors import ProtocolError
from mailish.domain.logins import PasswordLogin
from mailish.mail.imap import connection as imap_connection
from mailish.mail.imap.connection import OVERFLOW, ImapConnection, ImapSettings
from mailish.mail.imap.session import ImapSession
from mailish.worker.account_sync import AccountSync, SyncTuning

Answer = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[None]]
Scripted = Callable[[Answer], Awaitable[ImapConnection]]
CAPS = b"IMAP4rev1 UIDPLUS"  # no ESEARCH: UID SEARCH answers in one plain line


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    """``await scripted(answer)``: a connection, already authenticated (PREAUTH), to a server
    that hands each command line to ``answer(tag, line, writer)``."""
    servers: list[asyncio.Server] = []
    conns: list[ImapConnection] = []

    async def start(answer: Answer) -> ImapConnection:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"* PREAUTH [CAPABILITY " + CAPS + b"] welcome\r\n")
            try:
                while line := await reader.readline():
                    await answer(line.split(b" ", 1)[0], line.rstrip(b"\r\n"), writer)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        settings = ImapSettings(
            Endpoint("127.0.0.1", port, Security.PLAIN), allow_plaintext=True,
            allow_private_hosts=True, timeout=20,
        )  # fmt: skip
        conn = await ImapConnection.open(settings)
        conns.append(conn)
        return conn

    yield start
    for conn in conns:
        await conn.close()
    for server in servers:
        server.close()
        await server.wait_closed()


UIDS = range(1, 400_001)  # ~2.7 MB as one SEARCH line


async def test_a_plain_search_of_a_huge_folder_is_read_whole(scripted: Scripted) -> None:
    """A server without ESEARCH answers UID SEARCH in one line of ~8 bytes per message: a
    folder of 400,000 is 2.7 MB, past the stream's 1 MiB piece. It used to end the
    connection with "line longer than 1048576 bytes", every pass, for good."""
    line = b"* SEARCH " + b" ".join(b"%d" % u for u in UIDS) + b"\r\n"
    assert len(line) > 2 * imap_connection.MAX_LINE

    async def answer(tag: bytes, command: bytes, writer: asyncio.StreamWriter) -> None:
        if b"SEARCH" in command:
            writer.write(line)
        writer.write(tag + b" OK done\r\n")

    conn = await scripted(answer)
    session = ImapSession(conn)
    assert await session.search_uids(b"ALL") == list(UIDS)
    assert await session.search_uids(b"ALL") == list(UIDS)  # and the stream is in step


async def test_a_long_unsolicited_line_while_waiting_is_read_whole(scripted: Scripted) -> None:
    vanished = b"* VANISHED " + b",".join(b"%d" % u for u in range(1, 600_000, 2)) + b"\r\n"

    async def answer(tag: bytes, command: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(tag + b" OK done\r\n")
        if command.endswith(b"NOOP"):
            writer.write(vanished)

    conn = await scripted(answer)
    await conn.command("NOOP")
    event = await conn.wait_event(10)
    assert event is not None and getattr(event, "kind", None) == "VANISHED"
    await conn.command("NOOP")  # in step afterwards


async def test_a_line_past_the_limit_is_a_protocol_error(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imap_connection, "MAX_LONG_LINE", 2 << 20)

    async def answer(tag: bytes, command: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* SEARCH " + b"1 " * (3 << 19) + b"\r\n" + tag + b" OK done\r\n")

    conn = await scripted(answer)
    with pytest.raises(ProtocolError, match="longer than"):
        await conn.command("UID SEARCH", b"ALL")
    assert conn.closed


async def test_a_command_that_is_answered_forever_is_cut_off(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each response is small and well-formed, the server just never completes: the
    command stops at MAX_COMMAND_BYTES, long before its timeout, holding no more than that."""
    monkeypatch.setattr(imap_connection, "MAX_COMMAND_BYTES", 4 << 20)
    chunk = b"".join(b"* %d FETCH (UID %d FLAGS (\\Seen))\r\n" % (n, n) for n in range(1, 2001))

    async def answer(tag: bytes, command: bytes, writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():
            writer.write(chunk)
            await writer.drain()

    conn = await scripted(answer)
    started = time.monotonic()
    with pytest.raises(ProtocolError, match="bytes to a command"):
        await conn.command("UID FETCH", b"1:*", b"(FLAGS)")
    assert time.monotonic() - started < 10  # the timeout is 20 s
    assert conn.closed


async def test_an_unsolicited_flood_collapses_into_one_overflow_marker(scripted: Scripted) -> None:
    flood = b"".join(b"* %d EXISTS\r\n" % n for n in range(1, 30_001))

    async def answer(tag: bytes, command: bytes, writer: asyncio.StreamWriter) -> None:
        if b"SEARCH" in command:
            writer.write(flood + b"* SEARCH 1\r\n")
        writer.write(tag + b" OK done\r\n")

    conn = await scripted(answer)
    session = ImapSession(conn)
    assert await session.search_uids(b"ALL") == [1]
    assert list(conn.unsolicited) == [OVERFLOW]
    conn.unsolicited.clear()  # the session looked: the next responses are kept again
    assert await session.search_uids(b"ALL") == [1]
    assert list(conn.unsolicited) == [OVERFLOW]


async def test_a_server_that_never_pauses_gets_a_full_round_not_an_endless_wait(
    scripted: Scripted,
) -> None:
    """NOTIFY events arriving faster than the debounce used to keep the wait gathering them
    (and the set of dirty folders growing) for as long as the server kept on."""

    async def answer(tag: bytes, command: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(tag + b" OK done\r\n")
        n = 0
        while not writer.is_closing():
            n += 1
            writer.write(b'* STATUS "Folder %d" (MESSAGES %d)\r\n' % (n, n))
            if n % 100 == 0:
                await writer.drain()
                await asyncio.sleep(0.001)

    conn = await scripted(answer)
    await conn.command("NOOP")  # the stream begins
    sync = AccountSync(
        pool=None, lease=None, account_id=None, imap=conn.settings,  # type: ignore[arg-type]
        login=PasswordLogin("u", "p"), tuning=SyncTuning(debounce=0.05),
    )  # fmt: skip
    async with asyncio.timeout(10):
        assert await sync._wait_notify(ImapSession(conn)) is None  # a full round


async def test_notify_events_during_another_command_are_kept_for_the_session(
    scripted: Scripted,
) -> None:
    """STATUS and LIST of other mailboxes (NOTIFY) can arrive in the middle of any command;
    they belong to the session's change tracking, not to that command's answer."""
    events = b'* STATUS "Other" (MESSAGES 3 UIDNEXT 4)\r\n* LIST () "/" "New"\r\n'

    async def answer(tag: bytes, command: bytes, writer: asyncio.StreamWriter) -> None:
        if command.endswith(b"NOOP"):
            writer.write(events)
        elif b" LIST " in command:
            writer.write(b'* LIST () "/" "INBOX"\r\n* STATUS "INBOX" (MESSAGES 1)\r\n')
        writer.write(tag + b" OK done\r\n")

    conn = await scripted(answer)
    noop = await conn.command("NOOP")
    assert noop.data == []
    assert [getattr(e, "kind", None) for e in conn.unsolicited] == ["STATUS", "LIST"]
    conn.unsolicited.clear()
    listed = await conn.command("LIST", b'""', b'"*"', b"RETURN (STATUS (MESSAGES))")
    assert [d.kind for d in listed.data] == ["LIST", "STATUS"] and not conn.unsolicited
