"""The upstream hop's HTTP/1.1 client (gateway/proxy/http1.py) against scripted servers on real
sockets: framing, keep-alive reuse, the stale-connection retry, pool limits, timeouts, and the
responses a strict proxy must refuse. Each test runs on the asyncio and the uvloop event loop
(tests/foundation/conftest.py): the gateway serves on uvloop, whose transports differ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from multidict import CIMultiDict

from gateway.errors import UpstreamTimeoutError, UpstreamUnavailableError
from gateway.proxy.http1 import _HIGH_WATER, ConnectionPool
from tests.foundation.rawupstream import Scripted, ok


def pool(url: str, **kw: float) -> ConnectionPool:
    opts: dict[str, float] = {"limit": 10, "connect_s": 2.0, "read_s": 2.0, "idle_s": 30.0}
    opts.update(kw)
    return ConnectionPool(url, ssl_context=None, limit=int(opts["limit"]), connect_s=opts["connect_s"],
                          read_s=opts["read_s"], total_s=opts.get("total_s"), idle_s=opts["idle_s"])


async def get(p: ConnectionPool, method: str = "GET", target: str = "/x", body: bytes | None = None,
              headers: CIMultiDict[str] | None = None) -> tuple[int, CIMultiDict[str], bytes]:
    r = await p.request(method, target, headers or CIMultiDict(), body)
    try:
        return r.status, r.headers, await r.read()
    finally:
        r.release()


async def test_keep_alive_connection_is_reused_and_head_is_exact() -> None:
    async with Scripted(lambda h, b, n: ok(b"n%d" % n)) as srv:
        p = pool(srv.url + "/base/")
        hdrs = CIMultiDict([("X-A", "1"), ("x-a", "2"), ("Host", "evil"), ("Content-Length", "99"),
                            ("Transfer-Encoding", "chunked")])
        assert (await get(p, headers=hdrs))[2] == b"n0"
        assert (await get(p, "POST", "/y?q=1"))[2] == b"n1"
        await p.close()
    assert srv.connections == 1
    head0, head1 = srv.requests[0][0], srv.requests[1][0]
    host = srv.url.removeprefix("http://").encode()
    # Repeated headers keep their order; client-sent Host and framing are replaced by this hop's.
    assert head0 == b"GET /base/x HTTP/1.1\r\nHost: %b\r\nX-A: 1\r\nx-a: 2\r\n\r\n" % host
    assert head1 == b"POST /base/y?q=1 HTTP/1.1\r\nHost: %b\r\nContent-Length: 0\r\n\r\n" % host


async def test_head_204_304_have_no_body_and_keep_the_connection() -> None:
    answers = {
        b"HEAD": b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
        b"GET": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"PUT": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    }
    async with Scripted(lambda h, b, n: answers[h.split(b" ")[0]]) as srv:
        p = pool(srv.url)
        status, headers, body = await get(p, "HEAD")
        assert (status, headers["Content-Length"], body) == (200, "1234", b"")
        assert (await get(p, "GET"))[::2] == (204, b"")
        assert (await get(p, "PUT", body=b"x"))[::2] == (304, b"")
        assert (await get(p, "HEAD"))[0] == 200
        await p.close()
    assert srv.connections == 1


async def test_informational_responses_are_skipped() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
    async with Scripted(lambda h, b, n: interim + ok(b"final")) as srv:
        p = pool(srv.url)
        status, headers, body = await get(p, "POST", body=b"data")
        assert (status, body) == (200, b"final")
        assert "Link" not in headers
        assert (await get(p))[2] == b"final"  # the connection is still in step
        await p.close()
    assert srv.connections == 1


async def test_chunked_and_close_delimited_bodies() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    async with Scripted(lambda h, b, n: chunked) as srv:
        p = pool(srv.url)
        assert (await get(p))[2] == b"hello world"
        await p.close()
    eof = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
    async with Scripted(lambda h, b, n: eof, close_after=1) as srv:
        p = pool(srv.url)
        assert (await get(p))[2] == b"until the end"
        assert (await get(p))[2] == b"until the end"
        await p.close()
    assert srv.connections == 2  # a close-delimited answer never leaves a reusable connection


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # truncated body
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",  # truncated chunked body
    ],
)
async def test_truncated_body_is_an_error(answer: bytes) -> None:
    async with Scripted(lambda h, b, n: answer, close_after=1) as srv:
        p = pool(srv.url)
        r = await p.request("GET", "/", CIMultiDict())
        with pytest.raises(UpstreamUnavailableError):
            await r.read()
        r.release()
        await p.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # CL + TE
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",  # two lengths
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n",  # space in a field name
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(300)) + b"Content-Length: 0\r\n\r\n",
    ],
    ids=["garbage", "cl-and-te", "two-lengths", "bad-name", "upgrade", "huge-header", "many-headers"],
)
async def test_malformed_or_oversized_answers_are_refused(answer: bytes) -> None:
    async with Scripted(lambda h, b, n: answer) as srv:
        p = pool(srv.url)
        with pytest.raises(UpstreamUnavailableError):
            await get(p)
        await p.close()


async def test_stale_idle_connection_is_retried_once_for_safe_methods_only() -> None:
    # Each connection answers once, then reads the next request and closes without a byte of
    # answer: the keep-alive race (the upstream closed an idle connection as we reused it).
    async with Scripted(lambda h, b, n: ok(b"fresh") if n == 0 else None) as srv:
        p = pool(srv.url)
        assert (await get(p))[2] == b"fresh"
        for method in ("GET", "HEAD", "OPTIONS"):
            assert (await get(p, method))[0] == 200  # sent again on a new connection
        await p.close()
    assert [h.split(b" ")[0] for h, _ in srv.requests] == [
        b"GET", b"GET", b"GET", b"HEAD", b"HEAD", b"OPTIONS", b"OPTIONS"]
    assert srv.connections == 4


async def test_stale_connection_is_not_retried_for_post() -> None:
    async with Scripted(lambda h, b, n: ok(b"x") if n == 0 else None) as srv:
        p = pool(srv.url)
        await get(p)
        with pytest.raises(UpstreamUnavailableError):
            await get(p, "POST", body=b"pay")  # the upstream may have acted on it: never resent
        assert [h.split(b" ")[0] for h, _ in srv.requests] == [b"GET", b"POST"]
        await p.close()


async def test_pool_limit_queues_and_times_out() -> None:
    async with Scripted(lambda h, b, n: ok(b"q")) as srv:
        p = pool(srv.url, limit=1, connect_s=0.3)
        first = await p.request("GET", "/", CIMultiDict())
        second = asyncio.ensure_future(get(p))
        await asyncio.sleep(0.1)
        assert not second.done()  # waiting for the one connection
        await first.read()
        first.release()
        assert (await second)[2] == b"q"
        assert srv.connections == 1
        held = await p.request("GET", "/", CIMultiDict())
        with pytest.raises(UpstreamTimeoutError):
            await get(p)  # nothing free within connect_s
        await held.read()
        held.release()
        assert (await get(p))[2] == b"q"
        await p.close()


async def test_read_and_total_timeouts() -> None:
    never = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await never.wait()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    p = pool(url, read_s=0.2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(UpstreamTimeoutError):
        await get(p)
    assert 0.15 < loop.time() - t0 < 1.5
    await p.close()
    p = pool(url, read_s=5.0, total_s=0.2)
    with pytest.raises(UpstreamTimeoutError):
        await get(p)
    await p.close()
    server.close()


async def test_connect_refused_is_unavailable(unused_tcp_port: int) -> None:
    p = pool(f"http://127.0.0.1:{unused_tcp_port}")
    with pytest.raises(UpstreamUnavailableError):
        await get(p)
    await p.close()


async def test_header_with_line_break_is_never_sent() -> None:
    async with Scripted(lambda h, b, n: ok()) as srv:
        p = pool(srv.url)
        for bad in ("a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b"):
            with pytest.raises(UpstreamUnavailableError):
                await get(p, headers=CIMultiDict([("X-Id", bad)]))
        await p.close()
    assert srv.requests == []


async def _body(parts: list[bytes], delay: float = 0.0) -> AsyncIterator[bytes]:
    for part in parts:
        if delay:
            await asyncio.sleep(delay)
        yield part


async def test_streamed_uploads_are_framed() -> None:
    async with Scripted(lambda h, b, n: ok(b"%d" % len(b))) as srv:
        p = pool(srv.url)
        r = await p.request("POST", "/", CIMultiDict(), _body([b"ab", b"", b"cde"]))  # unknown length
        assert await r.read() == b"5"
        r.release()
        r = await p.request("PUT", "/", CIMultiDict(), _body([b"abc", b"de"]), length=5)
        assert await r.read() == b"5"
        r.release()
        await p.close()
    (h0, b0), (h1, b1) = srv.requests
    assert b"Transfer-Encoding: chunked\r\n" in h0 and b0 == b"abcde"
    assert b"Content-Length: 5\r\n" in h1 and b1 == b"abcde"


async def test_early_answer_stops_the_upload() -> None:
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    server = await asyncio.start_server(early, "127.0.0.1", 0)
    p = pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    sent: list[int] = []

    async def big() -> AsyncIterator[bytes]:
        for i in range(2000):
            sent.append(i)
            await asyncio.sleep(0.001)
            yield b"x" * 65536

    r = await p.request("POST", "/", CIMultiDict(), big())
    assert r.status == 413
    r.release()
    assert len(sent) < 2000
    await p.close()
    server.close()


async def test_idle_connections_expire() -> None:
    async with Scripted(lambda h, b, n: ok()) as srv:
        p = pool(srv.url, idle_s=0.1)
        await get(p)
        await asyncio.sleep(0.3)  # the sweeper closes it
        await get(p)
        await p.close()
    assert srv.connections == 2


async def test_slow_reader_bounds_the_buffer() -> None:
    size = 8 * 1024 * 1024

    async def bulk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"y" * 65536)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(bulk, "127.0.0.1", 0)
    p = pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    r = await p.request("GET", "/", CIMultiDict())
    conn = r._conn
    assert conn is not None
    total = peak = 0
    async for chunk in r.iter_chunks():
        total += len(chunk)
        peak = max(peak, conn._buffered)
        await asyncio.sleep(0.0005)  # a slow client
    r.release()
    assert total == size
    assert peak < _HIGH_WATER + 2 * 65536 + 262144  # paused reading, not the whole body
    await p.close()
    server.close()


async def test_unexpected_bytes_on_an_idle_connection_discard_it() -> None:
    async with Scripted(lambda h, b, n: ok(b"one") + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as srv:
        p = pool(srv.url)
        assert (await get(p))[2] == b"one"
        await asyncio.sleep(0.05)
        assert (await get(p))[2] == b"one"  # not the stray answer: a new connection
        await p.close()
    assert srv.connections == 2




@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",  # bad chunk size
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",  # no CRLF after data
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",  # not only chunked
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nok",  # unknown coding
    ],
    ids=["bad-chunk-size", "chunk-no-crlf", "gzip-chunked", "xchunked"],
)
async def test_bad_framing_after_a_good_head_fails_the_request_itself(answer: bytes) -> None:
    """Issue #14: the head parses but what follows it (in the same read) does not, or the coding is
    not one we decode: ``request`` raises, so the forwarder answers 502 instead of relaying a head
    and then cutting the connection (or relaying still-coded bytes)."""
    async with Scripted(lambda h, b, n: answer) as srv:
        p = pool(srv.url)
        with pytest.raises(UpstreamUnavailableError):
            r = await p.request("GET", "/", CIMultiDict())
            r.release()
        await p.close()


async def test_read_timer_kept_across_exchanges_still_times_out_a_reused_connection() -> None:
    """The read timer lives with the connection (issue 20: no timer made per request): a second
    exchange on the same connection that stalls is still cut at read_s, and a timer that fires
    while the connection idles in the pool leaves the connection usable."""
    never = asyncio.Event()
    served = 0

    async def first_then_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                return
            served += 1
            if served in (1, 2):
                writer.write(ok(b"n%d" % served))
                await writer.drain()
            else:
                await never.wait()

    server = await asyncio.start_server(first_then_silent, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    p = pool(url, read_s=0.2)
    loop = asyncio.get_running_loop()
    assert (await get(p))[2] == b"n1"
    await asyncio.sleep(0.5)  # the kept timer fires while the connection is idle: no harm done
    assert (await get(p))[2] == b"n2"
    t0 = loop.time()
    with pytest.raises(UpstreamTimeoutError):
        await get(p)  # same connection, upstream silent: the kept timer still cuts it
    assert 0.1 < loop.time() - t0 < 1.5
    assert served == 3
    await p.close()
    server.close()
