"""Streaming forwarder: one keep-alive connection pool per upstream (``proxy/http1.py``).

Bodies are streamed in both directions (a 1 GB upload never sits in memory); the method and the
canonical request target (``gateway.canonical``: the path the route was chosen on, the query as
received) are sent; upstream failures map to 502/504 without internal detail.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

from ..config import UpstreamConfig
from ..errors import (
    ClientBodyError,
    GatewayError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UpstreamUnavailableError,
)
from .headers import HeaderPolicy
from .http1 import ConnectionPool, UpstreamResponse

__all__ = ("BodyDeadlines", "Forwarder", "UpstreamClient")

_CHUNK = 64 * 1024
# Bodies up to this size (with a known length) are relayed in one piece: one read, one write, no
# chunked framing. Typical API requests and responses; larger or unknown-length bodies stream.
_BUFFER_LIMIT = 64 * 1024


def _client_ssl(up: UpstreamConfig) -> ssl.SSLContext | None:
    if not up.url.startswith("https://"):
        return None
    ctx = ssl.create_default_context(cafile=up.ca) if up.ca else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if up.client_cert and up.client_key:
        ctx.load_cert_chain(up.client_cert, up.client_key)
    return ctx


class UpstreamClient:
    """A keep-alive pool to one upstream."""

    def __init__(self, up: UpstreamConfig) -> None:
        self.config = up
        self.pool = ConnectionPool(
            up.url,
            ssl_context=_client_ssl(up),
            limit=up.pool_size,
            connect_s=up.timeouts.connect_s,
            read_s=up.timeouts.read_s,
            total_s=up.timeouts.total_s,
            idle_s=up.timeouts.idle_s,
        )

    async def close(self) -> None:
        await self.pool.close()


@dataclass(frozen=True, slots=True)
class BodyDeadlines:
    """How long a request body may take: ``idle_s`` per read, and in all ``idle_s`` plus one
    second per ``min_rate`` bytes (Apache mod_reqtimeout's MinRate): slow is fine, a drip is not."""

    idle_s: float = 30.0
    min_rate: int = 500

    def total_s(self, size: int) -> float:
        return self.idle_s + size / self.min_rate


# What reading the client's body raises when it breaks off or does not parse.
_BODY_ERRORS = (ConnectionError, HttpProcessingError)


def _too_large() -> PayloadTooLargeError:
    return PayloadTooLargeError("request body too large", reason="body_too_large")


async def _read_small(request: web.BaseRequest, length: int, limits: BodyDeadlines) -> bytes:
    # A small body of known length: one deadline for all of it.
    try:
        async with asyncio.timeout(limits.total_s(length)):
            return await request.read()
    except TimeoutError:
        raise RequestTimeoutError("the request body did not arrive in time") from None
    except _BODY_ERRORS:
        raise ClientBodyError("request body incomplete or malformed") from None


async def _chunks(request: web.BaseRequest, limits: BodyDeadlines) -> AsyncIterator[bytes]:
    """The body as it arrives. A large upload may take long, but it may not stall, nor trickle,
    while it holds an upstream connection; the timeout raised here aborts the upstream exchange
    (ConnectionPool.request). A body that breaks off or does not parse is the client's fault."""
    seen = 0
    waited = 0.0  # time spent waiting for the client only (not for a slow upstream to take it)
    content = request.content
    loop = asyncio.get_running_loop()
    while True:
        remaining = limits.total_s(seen) - waited
        t0 = loop.time()
        try:
            async with asyncio.timeout(max(0.0, min(limits.idle_s, remaining))):
                chunk = await content.read(_CHUNK)
        except TimeoutError:
            raise RequestTimeoutError("the request body stopped arriving") from None
        except _BODY_ERRORS:
            raise ClientBodyError("request body incomplete or malformed") from None
        waited += loop.time() - t0
        if not chunk:
            return
        seen += len(chunk)
        yield chunk


async def _first_piece(chunks: AsyncIterator[bytes], limit: int) -> tuple[bytes, bool]:
    """Read an unknown-length body up to just past ``_BUFFER_LIMIT`` before the upstream is
    contacted: returns the bytes read and whether that was the whole body. A body over a small
    limit is thus refused with nothing sent upstream, and a small chunked body goes in one piece
    with a Content-Length."""
    parts: list[bytes] = []
    seen = 0
    while seen <= _BUFFER_LIMIT:
        chunk = await anext(chunks, b"")
        if not chunk:
            return b"".join(parts), True
        seen += len(chunk)
        if seen > limit:
            raise _too_large()
        parts.append(chunk)
    return b"".join(parts), False


async def _limited(chunks: AsyncIterator[bytes], limit: int, first: bytes = b"") -> AsyncIterator[bytes]:
    """The rest of the body, counted against ``limit``. Crossing it raises before the piece that
    crosses is sent, so the upstream never receives a complete over-limit request."""
    seen = len(first)
    if first:
        yield first
    async for chunk in chunks:
        seen += len(chunk)
        if seen > limit:
            raise _too_large()
        yield chunk


async def _read_bounded(up: UpstreamResponse, limit: int) -> bytes:
    """The whole upstream body, or 502 past ``limit`` (the client gets no partial answer)."""
    if up.content_length is not None and up.content_length > limit:
        raise UpstreamUnavailableError("upstream response too large", reason="response_too_large")
    parts: list[bytes] = []
    seen = 0
    async for chunk in up.iter_chunks():
        seen += len(chunk)
        if seen > limit:
            raise UpstreamUnavailableError("upstream response too large", reason="response_too_large")
        parts.append(chunk)
    return b"".join(parts)


class Forwarder:
    """Sends a request upstream and streams the answer back.

    ``body``: the deadlines of request bodies; ``body.idle_s`` is also the longest a response write
    may wait for a client that does not read (``on_stall("send_timeout")`` counts those).
    """

    def __init__(self, *, body: BodyDeadlines | None = None, on_stall: Callable[[str], None] | None = None) -> None:
        self._body = body or BodyDeadlines()
        self._body_s = self._body.idle_s
        self._on_stall = on_stall

    @property
    def deadlines(self) -> BodyDeadlines:
        """The request body deadlines, for a stage that reads the body first (``proxy.buffered``)."""
        return self._body

    async def forward(
        self,
        request: web.BaseRequest,
        upstream: UpstreamClient,
        headers: CIMultiDict[str],
        *,
        max_body_bytes: int,
        header_policy: HeaderPolicy,
        extra_response_headers: Iterable[tuple[str, str]] = (),
        target: str | None = None,
        body: bytes | None = None,
        buffer_response: int | None = None,
    ) -> tuple[web.StreamResponse, int]:
        """Returns the (already prepared and written) response and the upstream's status.

        ``target``: the canonical request target the route was chosen on (``gateway.canonical``);
        the raw one only when a caller has none. ``body``: the request body when a stage already
        read it (``proxy.buffered.read_body``, within ``max_body_bytes``): sent as it is, with its
        Content-Length; the client's stream is not read again. ``buffer_response``: read the whole
        response (at most that many bytes, else 502) and return it unsent, for a stage that must
        see it before the client does (a response signature's Content-Digest); not for HEAD."""
        length = request.content_length
        if length is not None and length > max_body_bytes:
            raise _too_large()
        payload: AsyncIterator[bytes] | bytes | None = None
        if body is not None:
            if len(body) > max_body_bytes:
                raise _too_large()
            length = len(body)
            payload = body if (body or request.body_exists) else None
        elif request.body_exists:
            if length is not None and length <= _BUFFER_LIMIT:
                payload = await _read_small(request, length, self._body)
            elif length is None:
                chunks = _chunks(request, self._body)
                first, whole = await _first_piece(chunks, max_body_bytes)
                payload = first if whole else _limited(chunks, max_body_bytes, first)
            else:
                payload = _limited(_chunks(request, self._body), max_body_bytes)
        up = await upstream.pool.request(request.method, target or request.raw_path, headers, payload, length=length)
        try:
            headers_out = header_policy.client_response_headers(up.headers)
            for name, value in extra_response_headers:
                headers_out[name] = value
            size = up.content_length
            if buffer_response is not None and request.method != "HEAD":
                payload = await _read_bounded(up, buffer_response)
                headers_out.popall("Content-Length", None)  # set again from the body
                return web.Response(status=up.status, reason=up.reason, headers=headers_out,
                                    body=payload), up.status
            if size is not None and size <= _BUFFER_LIMIT and request.method != "HEAD":
                payload = await up.read()
                headers_out.popall("Content-Length", None)  # set again from the body
                return web.Response(status=up.status, reason=up.reason, headers=headers_out,
                                    body=payload), up.status
            return await self._relay(request, up, headers_out), up.status
        finally:
            up.release()

    async def _relay(
        self, request: web.BaseRequest, up: UpstreamResponse, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status, reason=up.reason, headers=headers)
        if up.content_length is None and request.method != "HEAD" and up.status not in (204, 304):
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        if request.method != "HEAD":
            try:
                async for chunk in up.iter_chunks():
                    # The upstream's read timer pauses while our client is slow, so this deadline
                    # is what stops a client that never reads from pinning the upstream connection.
                    async with asyncio.timeout(self._body_s):
                        await resp.write(chunk)
            except TimeoutError:
                if self._on_stall is not None:
                    self._on_stall("send_timeout")
                if request.transport is not None:
                    request.transport.abort()
                return resp
            except (GatewayError, ConnectionResetError):
                # Headers are gone already: the only honest signal left is a broken connection.
                if request.transport is not None:
                    request.transport.close()
                return resp
        await resp.write_eof()
        return resp
