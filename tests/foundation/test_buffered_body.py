"""``gateway.proxy.buffered.read_body`` and ``Forwarder.forward(body=...)``: a stage reads the
whole request body first (bounded, with the forwarder's deadlines and refusals), and the
forwarder then sends exactly those bytes upstream without reading the client again."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.config.schema import UpstreamConfig
from gateway.errors import GatewayError
from gateway.proxy.buffered import read_body
from gateway.proxy.forward import BodyDeadlines, Forwarder, UpstreamClient
from gateway.proxy.headers import HeaderPolicy
from tests.foundation.rawupstream import Scripted, ok

pytestmark = pytest.mark.timeout(30)

LIMIT = 200_000
DEADLINES = BodyDeadlines(idle_s=0.5, min_rate=500)
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def _serve(handler: Handler) -> tuple[web.ServerRunner, int]:
    async def wrapped(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            return web.Response(status=exc.status, text=exc.reason)

    runner = web.ServerRunner(web.Server(wrapped))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def _exchange(port: int, head: bytes, body_parts: list[bytes], pause_s: float = 0.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for part in body_parts:
            await asyncio.sleep(pause_s)
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer else 0


@pytest.fixture
async def echo_digest() -> AsyncIterator[int]:
    """A server answering with the SHA-256 of the body ``read_body`` returned."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = await read_body(request, LIMIT, deadlines=DEADLINES)
        return web.Response(text=f"{len(body)} {hashlib.sha256(body).hexdigest()}")

    runner, port = await _serve(handler)
    yield port
    await runner.cleanup()


def _head(extra: str) -> bytes:
    return f"POST /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n".encode()


async def test_known_length_body_is_read_whole(echo_digest: int) -> None:
    body = bytes(range(256)) * 600  # 153,600 bytes: more than one read
    answer = await _exchange(echo_digest, _head(f"Content-Length: {len(body)}\r\n"), [body])
    assert _status(answer) == 200
    assert answer.endswith(f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode())


async def test_chunked_body_is_read_whole(echo_digest: int) -> None:
    parts = [b"a" * 1000, b"b" * 70_000, b"c"]
    wire = [b"%x\r\n%b\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]
    answer = await _exchange(echo_digest, _head("Transfer-Encoding: chunked\r\n"), wire)
    whole = b"".join(parts)
    assert answer.endswith(f"{len(whole)} {hashlib.sha256(whole).hexdigest()}".encode())


async def test_no_body_is_empty(echo_digest: int) -> None:
    answer = await _exchange(echo_digest, b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", [])
    assert answer.endswith(f"0 {hashlib.sha256(b'').hexdigest()}".encode())


async def test_declared_length_over_limit_is_413_before_reading(echo_digest: int) -> None:
    answer = await _exchange(echo_digest, _head(f"Content-Length: {LIMIT + 1}\r\n"), [])
    assert _status(answer) == 413


async def test_chunked_body_over_limit_is_413(echo_digest: int) -> None:
    chunk = b"z" * 60_000
    wire = [b"%x\r\n%b\r\n" % (len(chunk), chunk)] * 4 + [b"0\r\n\r\n"]  # 240,000 > LIMIT
    answer = await _exchange(echo_digest, _head("Transfer-Encoding: chunked\r\n"), wire)
    assert _status(answer) == 413


async def test_stalled_body_is_408(echo_digest: int) -> None:
    # Half the declared body, then nothing: the idle deadline (0.5 s) ends the wait.
    answer = await _exchange(echo_digest, _head("Content-Length: 1000\r\n"), [b"x" * 500])
    assert _status(answer) == 408


async def test_malformed_chunked_body_is_400(echo_digest: int) -> None:
    answer = await _exchange(echo_digest, _head("Transfer-Encoding: chunked\r\n"), [b"zz-not-hex\r\nab\r\n"])
    assert _status(answer) == 400


async def test_forward_sends_the_buffered_bytes_and_does_not_read_again() -> None:
    forwarder = Forwarder(body=DEADLINES)
    assert forwarder.deadlines is DEADLINES
    async with Scripted(lambda head, body, n: ok(b"done")) as up:
        client = UpstreamClient(UpstreamConfig(url=up.url))

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            body = await read_body(request, LIMIT, deadlines=forwarder.deadlines)
            # What the upstream gets is the buffered body; the client's stream is at its end.
            resp, _ = await forwarder.forward(
                request, client, CIMultiDict(), max_body_bytes=LIMIT, header_policy=HeaderPolicy(),
                target="/x", body=body,
            )
            return resp

        runner, port = await _serve(handler)
        try:
            parts = [b"q" * 100, b"r" * 80_000]
            wire = [b"%x\r\n%b\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]
            answer = await _exchange(port, _head("Transfer-Encoding: chunked\r\n"), wire)
            empty = await _exchange(port, b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", [])
        finally:
            await runner.cleanup()
            await client.close()
    assert _status(answer) == 200 and answer.endswith(b"done")
    head, sent = up.requests[0]
    assert sent == b"".join(parts)
    # Re-framed with the length now known (no chunked encoding towards the upstream).
    assert b"content-length: 80100\r\n" in head.lower() and b"transfer-encoding" not in head.lower()
    assert _status(empty) == 200
    get_head, get_body = up.requests[1]
    assert get_body == b"" and b"content-length" not in get_head.lower()  # as without a buffered body


async def test_forward_refuses_a_buffered_body_over_the_limit() -> None:
    forwarder = Forwarder()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await forwarder.forward(
            request, UpstreamClient(UpstreamConfig(url="http://127.0.0.1:9")), CIMultiDict(),
            max_body_bytes=10, header_policy=HeaderPolicy(), body=b"x" * 11,
        )
        raise AssertionError("not refused")

    runner, port = await _serve(handler)
    try:
        answer = await _exchange(port, b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", [])
    finally:
        await runner.cleanup()
    assert _status(answer) == 413
