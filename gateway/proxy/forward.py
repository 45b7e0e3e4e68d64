"""Streaming forwarder: one pooled aiohttp client session per upstream.

Bodies are streamed in both directions (a 1 GB upload never sits in memory); the method, raw path
and query are sent exactly as received; upstream failures map to 502/504 without internal detail.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..config import UpstreamConfig
from ..errors import PayloadTooLargeError, UpstreamTimeoutError, UpstreamUnavailableError
from .headers import HeaderPolicy

__all__ = ("Forwarder", "UpstreamClient")

_CHUNK = 64 * 1024
# Bodies up to this size (with a known length) are relayed in one piece: one read, one write, no
# chunked framing. Typical API requests and responses; larger or unknown-length bodies stream.
_BUFFER_LIMIT = 64 * 1024


def _client_ssl(up: UpstreamConfig) -> ssl.SSLContext | bool:
    if not up.url.startswith("https://"):
        return False
    ctx = ssl.create_default_context(cafile=up.ca) if up.ca else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if up.client_cert and up.client_key:
        ctx.load_cert_chain(up.client_cert, up.client_key)
    return ctx


class UpstreamClient:
    """A keep-alive pool to one upstream."""

    def __init__(self, up: UpstreamConfig) -> None:
        self.config = up
        self.base = up.url.rstrip("/")
        self._ssl = _client_ssl(up)
        self._timeout = aiohttp.ClientTimeout(
            total=up.timeouts.total_s, sock_connect=up.timeouts.connect_s, sock_read=up.timeouts.read_s
        )
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.config.pool_size, ssl=self._ssl, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,  # pass bytes through untouched
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _limited(request: web.BaseRequest, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise PayloadTooLargeError("request body too large", reason="body_too_large")
        yield chunk


class Forwarder:
    """Sends a request upstream and streams the answer back."""

    def __init__(self, upstreams: dict[str, UpstreamClient]) -> None:
        self._upstreams = upstreams

    def client(self, url: str) -> UpstreamClient:
        return self._upstreams[url]

    async def forward(
        self,
        request: web.BaseRequest,
        upstream: UpstreamClient,
        headers: CIMultiDict[str],
        *,
        max_body_bytes: int,
        header_policy: HeaderPolicy,
        extra_response_headers: Iterable[tuple[str, str]] = (),
    ) -> tuple[web.StreamResponse, int]:
        """Returns the (already prepared and written) response and the upstream's status."""
        length = request.content_length
        if length is not None and length > max_body_bytes:
            raise PayloadTooLargeError("request body too large", reason="body_too_large")
        body: AsyncIterator[bytes] | bytes | None = None
        if request.body_exists:
            if length is not None and length <= _BUFFER_LIMIT:
                body = await request.read()
            else:
                body = _limited(request, max_body_bytes)
        url = URL(upstream.base + request.raw_path, encoded=True)
        try:
            async with upstream.session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=False,
                chunked=None if length is not None or body is None else True,
            ) as up:
                headers_out = header_policy.client_response_headers(up.headers)
                for name, value in extra_response_headers:
                    headers_out[name] = value
                size = up.content_length
                if size is not None and size <= _BUFFER_LIMIT and request.method != "HEAD":
                    payload = await up.read()
                    del headers_out["Content-Length"]  # set again from the body
                    return web.Response(status=up.status, reason=up.reason, headers=headers_out,
                                        body=payload), up.status
                return await self._relay(request, up, headers_out), up.status
        except PayloadTooLargeError:
            raise
        except TimeoutError:
            raise UpstreamTimeoutError("upstream timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(getattr(exc, "__cause__", None), PayloadTooLargeError):
                raise PayloadTooLargeError("request body too large", reason="body_too_large") from None
            raise UpstreamUnavailableError("upstream unavailable") from None

    @staticmethod
    async def _relay(
        request: web.BaseRequest, up: aiohttp.ClientResponse, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status, reason=up.reason, headers=headers)
        if up.content_length is None and request.method != "HEAD" and up.status not in (204, 304):
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        if request.method != "HEAD":
            try:
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
            except (TimeoutError, aiohttp.ClientError, ConnectionResetError):
                # Headers are gone already: the only honest signal left is a broken connection.
                if request.transport is not None:
                    request.transport.close()
                return resp
        await resp.write_eof()
        return resp
