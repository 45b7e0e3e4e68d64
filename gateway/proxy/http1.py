"""The upstream hop: an HTTP/1.1 client with a keep-alive connection pool per upstream.

Built on asyncio protocols and llhttp (``httptools``, the strict C parser uvicorn uses). Why not
aiohttp's client: on the request path it cost ~60 CPU-µs per request on the benchmark machine,
more than half of a whole minimal aiohttp proxy (benchmarks/profile-notes.md), mostly per-request
set-up a reverse proxy does not need (cookie jar, redirects, automatic headers, a timer
rescheduled on every read). This client does only what the forwarder needs: send a request whose
headers the header policy already built, stream bodies both ways with back-pressure, parse the
answer strictly, and keep connections for reuse.

Failures surface as the gateway's own errors: ``UpstreamUnavailableError`` (502) for refused,
broken or malformed exchanges, ``UpstreamTimeoutError`` (504) for connect/read/total timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from ..errors import UpstreamTimeoutError, UpstreamUnavailableError

__all__ = ("ConnectionPool", "UpstreamResponse")

# Limits on what an upstream may send in a response head; beyond them the exchange is a 502.
MAX_HEADER_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 256
# Response body bytes buffered before the upstream socket stops being read (the client is slower).
_HIGH_WATER: Final = 256 * 1024
_LOW_WATER: Final = 64 * 1024
# A request that failed because a reused idle connection had been closed by the upstream (the
# keep-alive race) is sent again once on a new connection, for safe methods only.
_RETRY_METHODS: Final = frozenset(("GET", "HEAD", "OPTIONS"))
# RFC 9110 §8.6: a POST/PUT/PATCH without content still says so.
_EMPTY_BODY_METHODS: Final = frozenset(("POST", "PUT", "PATCH"))


class _Stale(Exception):
    """A reused connection closed before any byte of the answer: the request may be sent again."""


class _Connection(asyncio.Protocol):
    """One upstream connection; serves one exchange at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = True  # holds one of the pool's slots until connection_lost
        self.reused = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._head_request = False
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self._chunked = False
        self._codings: list[bytes] = []  # the response's transfer codings, in order
        self._header_bytes = 0
        self._informational = False
        self.keep_alive = False
        self.headers_done = False
        self.message_done = False
        # The whole request went out. An upstream may answer before reading all of the body; the
        # rest is then never sent, and the connection is mid-request: never reused (a desync).
        self.request_done = False
        self.received_any = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._writing_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.error: Exception | None = None
        self._last_io = 0.0
        self._read_s = 0.0
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_due = 0.0
        self._total_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timers()
        if self._parser is not None and not self.message_done and self.error is None:
            if self.headers_done and self.content_length is None and not self._chunked:
                self.message_done = True  # a body delimited by the end of the connection
                self.keep_alive = False
            elif self.reused and not self.received_any:
                self.error = _Stale()
            else:
                self.error = UpstreamUnavailableError("upstream closed the connection")
        self._pool._forget(self)
        self._wake()

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes while idle: the connection is out of step, never reuse it
            self.abort()
            return
        self._last_io = self._loop.time()
        self.received_any = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamUnavailableError("upstream sent an invalid response"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost decides what the EOF means

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    # -- llhttp callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.message_done:  # a second answer to one request: out of step
            self.keep_alive = False
            raise UpstreamUnavailableError("upstream sent an unrequested response")
        self.headers = []
        self.reason = ""
        self.content_length = None
        self._chunked = False
        self._codings = []
        self._header_bytes = 0

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES or len(self.headers) >= MAX_HEADERS:
            raise UpstreamUnavailableError("upstream response head too large")
        key = name.decode("latin-1")
        low = key.lower()
        if low == "content-length":
            self.content_length = int(value)  # llhttp has validated it
        elif low == "transfer-encoding":
            self._codings.extend(c.strip().lower() for c in value.split(b",") if c.strip())
            self._chunked = b"chunked" in value.lower()
        self.headers.append((key, value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:  # never asked for (Upgrade is hop-by-hop and stripped)
                raise UpstreamUnavailableError("upstream switched protocols")
            self._informational = True  # 100 Continue, 103 Early Hints: not relayed
            return
        if self._codings and self._codings != [b"chunked"]:
            # Only chunked is decoded here: relaying gzip- (or x-)coded bytes with the
            # Transfer-Encoding removed (it is hop-by-hop) would hand the client another body, and a
            # coding llhttp does not know leaves the length to the end of the connection.
            raise UpstreamUnavailableError("upstream used a transfer coding other than chunked")
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        self.headers_done = True
        if self._head_request or status in (204, 304):
            # No body follows (RFC 9112 §6.3). llhttp is not told about HEAD, so a new parser is
            # made for the next exchange and this one is never fed again.
            self.message_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.message_done:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.message_done = True
        self._wake()

    # -- the exchange -------------------------------------------------------------------------

    def start(
        self, data: bytes, *, head: bool, read_s: float, total_s: float | None, complete: bool = True
    ) -> None:
        """Send the request head (and a small body) and get ready for the answer. ``complete``:
        ``data`` is the whole request (no streamed body follows)."""
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._head_request = head
        self.status = 0
        self.headers_done = self.message_done = self.received_any = False
        self.request_done = complete
        self.keep_alive = False
        self.error = None
        loop = self._loop
        self._last_io = now = loop.time()
        self._read_s = read_s
        # One read timer per connection, kept across exchanges and moved forward only when it
        # fires (``_check_read``): a uvloop timer made and cancelled per request costs 1-2 µs.
        # A kept timer is due no later than this exchange needs; it is replaced only if it is not.
        if self._read_timer is None or self._read_due > now + read_s:
            if self._read_timer is not None:
                self._read_timer.cancel()
            self._read_due = now + read_s
            self._read_timer = loop.call_at(self._read_due, self._check_read)
        if total_s is not None:
            self._total_timer = loop.call_at(now + total_s, self._total_timeout)
        self.transport.write(data)

    async def send_body(self, data: bytes, *, last: bool = False) -> bool:
        """Write a piece of a streamed request body (``last``: it ends the request); ``False`` once
        the upstream has answered or gone (the rest of the body is not wanted)."""
        if self.headers_done or self.closed or self.error is not None:
            return False
        assert self.transport is not None
        self.transport.write(data)
        if last:
            self.request_done = True
        self._last_io = self._loop.time()
        while self._writing_paused and not (self.headers_done or self.closed or self.error is not None):
            await self._wait()
        return not (self.headers_done or self.closed or self.error is not None)

    async def wait_headers(self) -> None:
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait()
        if self.error is not None:
            # The head parsed but the bytes after it did not (a bad chunk size in the same read):
            # a 502 now, rather than a relayed head and then a broken connection.
            raise self.error

    async def read_chunk(self) -> bytes:
        """The next piece of the response body; ``b""`` at its end."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered <= _LOW_WATER and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                return chunk
            if self.message_done:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait()

    def finish(self) -> bool:
        """End the exchange; ``True`` if the connection may serve another one."""
        reusable = (
            self.message_done and self.request_done and self.keep_alive and self.error is None
            and not self.closed and not self._chunks and not self._reading_paused
        )
        if reusable:  # the read timer stays for the next exchange (it lapses if none comes)
            if self._total_timer is not None:
                self._total_timer.cancel()
                self._total_timer = None
        else:
            self._cancel_timers()
        self._parser = None
        self._chunks.clear()
        self._buffered = 0
        if reusable:
            self.reused = True
        return reusable

    def abort(self) -> None:
        self._cancel_timers()
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # -- internals ----------------------------------------------------------------------------

    async def _wait(self) -> None:
        fut = self._waiter = self._loop.create_future()
        try:
            await fut
        finally:
            self._waiter = None

    def _wake(self) -> None:
        fut = self._waiter
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self.error is None and not self.message_done:
            self.error = exc
        self.keep_alive = False
        self.abort()
        self._wake()

    def _total_timeout(self) -> None:
        self._total_timer = None
        self._fail(UpstreamTimeoutError("upstream timed out"))

    def _check_read(self) -> None:
        # One timer per connection, moved forward only when it fires: cheaper than rescheduling on
        # every read. Any byte in either direction counts as progress.
        if self._parser is None:  # between exchanges (idle in the pool): nothing to time
            self._read_timer = None
            return
        now = self._loop.time()
        if self._reading_paused:  # waiting for our client to take the body is not the upstream's delay
            self._last_io = now
        due = self._last_io + self._read_s
        if now >= due - 0.001:
            self._read_timer = None
            self._fail(UpstreamTimeoutError("upstream timed out"))
        else:
            self._read_due = due
            self._read_timer = self._loop.call_at(due, self._check_read)

    def _cancel_timers(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self._total_timer is not None:
            self._total_timer.cancel()
            self._total_timer = None


class UpstreamResponse:
    """The upstream's answer: status and head at once, the body read or streamed after.

    ``release()`` must be called (the forwarder does it in ``finally``): the connection goes back
    to the pool if the exchange ended cleanly, and is closed otherwise.
    """

    __slots__ = ("_conn", "_pool", "content_length", "headers", "reason", "status")

    def __init__(self, conn: _Connection, pool: ConnectionPool) -> None:
        self._conn: _Connection | None = conn
        self._pool = pool
        self.status = conn.status
        self.reason = conn.reason
        self.headers = CIMultiDict(conn.headers)
        self.content_length = conn.content_length

    async def read(self) -> bytes:
        """The whole body (the forwarder calls this for small bodies of known length)."""
        conn = self._conn
        if conn is None:
            return b""
        first = await conn.read_chunk()
        if not first:
            return b""
        parts = [first]
        while chunk := await conn.read_chunk():
            parts.append(chunk)
        return first if len(parts) == 1 else b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        while chunk := await conn.read_chunk():
            yield chunk

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)


class ConnectionPool:
    """Keep-alive connections to one upstream origin (``http://`` or ``https://``)."""

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None,
        limit: int,
        connect_s: float,
        read_s: float,
        total_s: float | None,
        idle_s: float,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        default_port = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default_port
        self.base_path = parts.path.rstrip("/")
        self.host_header = parts.netloc.rsplit("@", 1)[-1]
        if parts.port == default_port:
            self.host_header = self.host_header.rsplit(":", 1)[0]
        self._ssl = ssl_context
        self._limit = limit
        self._connect_s = connect_s
        self._read_s = read_s
        self._total_s = total_s
        self._idle_s = idle_s
        self._idle: list[_Connection] = []  # a stack: the most recently used connection first
        self._count = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # -- one exchange -------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None = None,
        *,
        length: int | None = None,
    ) -> UpstreamResponse:
        """Send ``method target`` with ``headers`` (Host and framing are set here) and return the
        answer once its head has arrived. A streamed ``body`` is sent with ``length`` as its
        Content-Length, or chunked when the length is unknown."""
        streamed = body is not None and not isinstance(body, bytes)
        head, first = self._head(method, target, headers, body, length)
        for attempt in (1, 2):
            conn = await self._acquire()
            try:
                conn.start(head + first if first else head, head=method == "HEAD",
                           read_s=self._read_s, total_s=self._total_s, complete=not streamed)
                if streamed:
                    assert body is not None and not isinstance(body, bytes)
                    await self._stream(conn, body, length)
                await conn.wait_headers()
            except _Stale:
                conn.finish()
                if attempt == 1 and not streamed and method in _RETRY_METHODS:
                    continue
                raise UpstreamUnavailableError("upstream closed the connection") from None
            except BaseException:
                conn.finish()
                conn.abort()
                raise
            return UpstreamResponse(conn, self)
        raise AssertionError("unreachable")

    def _head(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None,
        length: int | None,
    ) -> tuple[bytes, bytes]:
        lines = [f"{method} {self.base_path}{target} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        for name, value in headers.items():
            low = name.lower()
            if low == "content-length" or low == "transfer-encoding" or low == "host":
                continue  # framing and Host are this hop's
            lines.append(f"{name}: {value}\r\n")
        first = b""
        if isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}\r\n")
            first = body
        elif body is not None:
            lines.append(f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n")
        elif method in _EMPTY_BODY_METHODS:
            lines.append("Content-Length: 0\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        # Every CR/LF must be a line end we wrote: a value carrying one would split the head
        # (request smuggling). Values are checked upstream of here too; this is the last line.
        n = len(lines) + 1  # the first piece holds the request line and Host
        if text.count("\n") != n or text.count("\r") != n or "\x00" in text:
            raise UpstreamUnavailableError("refused to send a header containing a line break")
        return text.encode("utf-8", "surrogateescape"), first

    async def _stream(self, conn: _Connection, body: AsyncIterator[bytes], length: int | None) -> None:
        """Send a streamed body: with ``length`` as sent in Content-Length, else chunked. An error
        raised by ``body`` (e.g. over the size limit) propagates, and ``request`` aborts the
        connection: the upstream is left with an incomplete message, never a complete one."""
        chunked = length is None
        wanted = True
        sent = 0
        async for chunk in body:
            if not chunk:
                continue
            sent += len(chunk)
            data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
            wanted = await conn.send_body(data, last=sent == length)
            if not wanted:
                break  # the upstream answered early or went away: the rest is not sent
        if chunked and wanted:
            await conn.send_body(b"0\r\n\r\n", last=True)
        if not wanted and not conn.headers_done:
            await conn.wait_headers()  # surfaces the error that stopped the upload

    # -- the pool -----------------------------------------------------------------------------

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise UpstreamUnavailableError("upstream client closed")
        now = self.loop.time()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.idle_since >= self._idle_s:
                conn.abort()
                continue
            return conn
        if self._count >= self._limit:
            handed = await self._wait_for_slot()
            if handed is not None:
                return handed
        self._count += 1
        try:
            return await self._open()
        except BaseException:
            self._count -= 1
            self._hand_slot()
            raise

    async def _wait_for_slot(self) -> _Connection | None:
        """Wait for a connection (or a free slot, ``None``) released by another request."""
        fut: asyncio.Future[_Connection | None] = self.loop.create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self._connect_s):
                return await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                # Handed to us just as we gave up (timeout, cancellation): pass it on.
                handed = fut.result()
                if handed is not None:
                    self._recycle(handed)
                else:
                    self._hand_slot()
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeoutError("no upstream connection free in time") from None
            raise

    async def _open(self) -> _Connection:
        loop = self.loop
        try:
            async with asyncio.timeout(self._connect_s):
                _, proto = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port,
                    ssl=self._ssl, server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamTimeoutError("upstream connect timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnavailableError("upstream unavailable") from exc
        return proto

    def release(self, conn: _Connection) -> None:
        if not conn.finish() or self._closed:
            conn.abort()  # connection_lost gives the slot back
            return
        self._recycle(conn)

    def _recycle(self, conn: _Connection) -> None:
        if conn.closed or self._closed:
            conn.abort()
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._idle_s, self._sweep)

    def _forget(self, conn: _Connection) -> None:
        """A connection closed (either side): its slot is free again."""
        if not conn.counted:
            return
        conn.counted = False
        self._count -= 1
        if conn in self._idle:
            self._idle.remove(conn)
        self._hand_slot()

    def _hand_slot(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.loop.time() - self._idle_s
        for conn in [c for c in self._idle if c.idle_since <= cutoff]:
            conn.abort()
        if self._idle and not self._closed:
            self._sweeper = self.loop.call_later(self._idle_s, self._sweep)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._idle):
            conn.abort()
        self._idle.clear()
        for fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()
