"""The fault proxy itself, against a scripted upstream: every action lands on the exact byte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness.fault_proxy import DOWN, UP, FaultProxy, Rule

# What the upstream sends after each line it receives: an IMAP-like response with a literal.
BODY = b"0123456789" * 10
RESPONSE = b"* 1 FETCH (UID 7 BODY[] {%d}\r\n%s)\r\nA1 OK done\r\n" % (len(BODY), BODY)


async def _serve_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.readline():
            writer.write(RESPONSE)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    server = await asyncio.start_server(_serve_client, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def proxy(upstream: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(("127.0.0.1", upstream)) as running:
        yield running


async def _exchange(port: int, line: bytes = b"A1 FETCH\r\n") -> bytes:
    """Send one line; return whatever arrives until the proxy or the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(line)
        await writer.drain()
        out = b""
        async with asyncio.timeout(5):
            while not out.endswith(b"A1 OK done\r\n"):
                chunk = await reader.read(4096)
                if not chunk:
                    break
                out += chunk
        return out
    finally:
        writer.close()


async def _settled(proxy: FaultProxy) -> None:
    async with asyncio.timeout(5):
        while proxy.open_connections:
            await asyncio.sleep(0.01)


async def test_passes_bytes_through_and_counts_connections(proxy: FaultProxy) -> None:
    assert await _exchange(proxy.port) == RESPONSE
    assert await _exchange(proxy.port) == RESPONSE
    await _settled(proxy)
    assert proxy.total_connections == 2
    assert [s.down_bytes for s in proxy.stats()] == [len(RESPONSE)] * 2


@pytest.mark.parametrize("offset", [0, 1, len(BODY) // 2, len(BODY) - 1, len(BODY)])
async def test_cut_at_an_exact_literal_byte(proxy: FaultProxy, offset: int) -> None:
    rule = proxy.add(
        Rule(DOWN, "cut", marker=b"BODY[] {", skip_line=True, after=offset)
    )  # fmt: skip
    got = await _exchange(proxy.port)
    head = RESPONSE.index(b"\r\n") + 2
    assert got == RESPONSE[: head + offset]
    assert rule.fired == 1
    assert await _exchange(proxy.port) == RESPONSE  # times=1: the next connection is clean
    await _settled(proxy)


async def test_inject_at_the_response_boundary_skips_the_literal(proxy: FaultProxy) -> None:
    proxy.add(Rule(DOWN, "inject", marker=b" FETCH (", at_boundary=True, data=b"* 9 EXISTS\r\n"))
    got = await _exchange(proxy.port)
    end = RESPONSE.index(b")\r\n") + 3
    assert got == RESPONSE[:end] + b"* 9 EXISTS\r\n" + RESPONSE[end:]


async def test_stall_on_the_other_directions_marker_until_released(proxy: FaultProxy) -> None:
    rule = proxy.add(Rule(DOWN, "stall", marker=b"FETCH", watch=UP))
    pending = asyncio.create_task(_exchange(proxy.port))
    async with asyncio.timeout(5):
        await rule.triggered.wait()
    await asyncio.sleep(0.1)
    assert not pending.done()  # the answer is held
    rule.release()
    assert await pending == RESPONSE


async def test_stall_for_a_time_and_delay_every_chunk(proxy: FaultProxy) -> None:
    loop = asyncio.get_running_loop()
    proxy.add(Rule(DOWN, "stall", seconds=0.3))
    started = loop.time()
    assert await _exchange(proxy.port) == RESPONSE
    assert loop.time() - started >= 0.3
    up = proxy.add(Rule(UP, "delay", seconds=0.2, times=None))
    started = loop.time()
    assert await _exchange(proxy.port) == RESPONSE
    assert loop.time() - started >= 0.2
    proxy.remove(up)
    proxy.add(Rule(DOWN, "delay", seconds=0.01, piece=10))  # a trickle: 10 bytes per write
    started = loop.time()
    assert await _exchange(proxy.port) == RESPONSE
    assert loop.time() - started >= 0.01 * (len(RESPONSE) // 10)


async def test_rules_change_on_open_connections_and_stalls_end_with_the_client(
    proxy: FaultProxy,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"A1 FETCH\r\n")
    assert await reader.readexactly(len(RESPONSE)) == RESPONSE
    rule = proxy.add(Rule(DOWN, "stall"))  # held forever, on the open connection
    writer.write(b"A1 FETCH\r\n")
    async with asyncio.timeout(5):
        await rule.triggered.wait()
    assert proxy.open_connections == 1
    writer.close()  # the client gives up: the held connection must not linger
    await _settled(proxy)
    assert proxy.open_connections == 0


async def test_unix_socket_upstream_and_cut_all(tmp_path: Path) -> None:
    path = tmp_path / "up.sock"
    server = await asyncio.start_unix_server(_serve_client, str(path))
    try:
        async with FaultProxy(path) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"A1 FETCH\r\n")
            assert await reader.readexactly(len(RESPONSE)) == RESPONSE
            proxy.cut_all()
            async with asyncio.timeout(5):
                assert await reader.read() == b""
            writer.close()
            await _settled(proxy)
    finally:
        server.close()
        await server.wait_closed()
