"""Streaming forwarder: one keep-alive connection pool per upstream (``proxy/http1.py``).

Bodies are streamed in both directions (a 1 GB upload never sits in memory); the method and the
canonical request target (``gateway.canonical``: the path the route was chosen on, the query as
received) are sent; upstream failures map to 502/504 without internal detail.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

from ..config import UpstreamConfig
from ..errors import ClientBodyError, GatewayError, PayloadTooLargeError
from .headers import HeaderPolicy
from .http1 import ConnectionPool, UpstreamResponse

__all__ = ("Forwarder", "UpstreamClient")

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


# What reading the client's body raises when it breaks off or does not parse.
_BODY_ERRORS = (ConnectionError, HttpProcessingError)


def _too_large() -> PayloadTooLargeError:
    return PayloadTooLargeError("request body too large", reason="body_too_large")


async def _first_piece(request: web.BaseRequest, limit: int) -> tuple[bytes, bool]:
    """Read an unknown-length body up to just past ``_BUFFER_LIMIT`` before the upstream is
    contacted: returns the bytes read and whether that was the whole body. A body over a small
    limit is thus refused with nothing sent upstream, and a small chunked body goes in one piece
    with a Content-Length."""
    parts: list[bytes] = []
    seen = 0
    try:
        while seen <= _BUFFER_LIMIT:
            chunk = await request.content.readany()
            if not chunk:
                return b"".join(parts), True
            seen += len(chunk)
            if seen > limit:
                raise _too_large()
            parts.append(chunk)
    except _BODY_ERRORS:
        raise ClientBodyError("request body incomplete or malformed") from None
    return b"".join(parts), False


async def _limited(request: web.BaseRequest, limit: int, first: bytes = b"") -> AsyncIterator[bytes]:
    """The rest of the body, counted against ``limit``. Crossing it raises before the piece that
    crosses is sent, so the upstream never receives a complete over-limit request."""
    seen = len(first)
    if first:
        yield first
    try:
        async for chunk in request.content.iter_chunked(_CHUNK):
            seen += len(chunk)
            if seen > limit:
                raise _too_large()
            yield chunk
    except _BODY_ERRORS:
        raise ClientBodyError("request body incomplete or malformed") from None


async def _read_body(request: web.BaseRequest) -> bytes:
    try:
        return await request.read()
    except _BODY_ERRORS:
        raise ClientBodyError("request body incomplete or malformed") from None


class Forwarder:
    """Sends a request upstream and streams the answer back."""

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
    ) -> tuple[web.StreamResponse, int]:
        """Returns the (already prepared and written) response and the upstream's status.

        ``target``: the canonical request target the route was chosen on (``gateway.canonical``);
        the raw one only when a caller has none."""
        length = request.content_length
        if length is not None and length > max_body_bytes:
            raise _too_large()
        body: AsyncIterator[bytes] | bytes | None = None
        if request.body_exists:
            if length is not None and length <= _BUFFER_LIMIT:
                body = await _read_body(request)
            elif length is None:
                first, whole = await _first_piece(request, max_body_bytes)
                body = first if whole else _limited(request, max_body_bytes, first)
            else:
                body = _limited(request, max_body_bytes)
        up = await upstream.pool.request(request.method, target or request.raw_path, headers, body, length=length)
        try:
            headers_out = header_policy.client_response_headers(up.headers)
            for name, value in extra_response_headers:
                headers_out[name] = value
            size = up.content_length
            if size is not None and size <= _BUFFER_LIMIT and request.method != "HEAD":
                payload = await up.read()
                headers_out.popall("Content-Length", None)  # set again from the body
                return web.Response(status=up.status, reason=up.reason, headers=headers_out,
                                    body=payload), up.status
            return await self._relay(request, up, headers_out), up.status
        finally:
            up.release()

    @staticmethod
    async def _relay(
        request: web.BaseRequest, up: UpstreamResponse, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status, reason=up.reason, headers=headers)
        if up.content_length is None and request.method != "HEAD" and up.status not in (204, 304):
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        if request.method != "HEAD":
            try:
                async for chunk in up.iter_chunks():
                    await resp.write(chunk)
            except (GatewayError, ConnectionResetError):
                # Headers are gone already: the only honest signal left is a broken connection.
                if request.transport is not None:
                    request.transport.close()
                return resp
        await resp.write_eof()
        return resp
