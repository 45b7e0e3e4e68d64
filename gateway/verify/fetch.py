"""Talking to an authorization server: bounded HTTPS fetches and metadata discovery.

RFC 8414 §3 (metadata at ``/.well-known/oauth-authorization-server`` inserted before the issuer
path), falling back to OpenID Connect Discovery 1.0 §4 (``/.well-known/openid-configuration``
appended); RFC 8414 §3.3: the document's ``issuer`` must equal the configured issuer exactly.
Fetches never follow redirects, are size-capped (JWT-16) and time-bounded, and raise only
``FetchError`` whose message names the URL and the problem, never a secret.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..config.issuers import IssuerConfig
from .jose import loads_strict

__all__ = ("Discovery", "FetchError", "IssuerHttp", "metadata_urls")

log = logging.getLogger("gateway.verify")


class FetchError(Exception):
    """The AS could not be reached or answered something unusable."""


class IssuerHttp:
    """One issuer's HTTP client: its TLS trust anchors, optional client certificate, timeouts."""

    def __init__(self, cfg: IssuerConfig) -> None:
        self._cfg = cfg
        self.ssl = ssl.create_default_context(cafile=cfg.ca)
        auth = cfg.introspection.client_auth if cfg.introspection else None
        if auth is not None and auth.method == "tls_client_auth":
            assert auth.tls_cert and auth.tls_key
            self.ssl.load_cert_chain(auth.tls_cert, auth.tls_key)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl, limit=100),
                timeout=aiohttp.ClientTimeout(total=self._cfg.http_timeout_s),
                # No cookies from the AS, no env proxies: the trust path is the config alone.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None = None,
        max_bytes: int,
        timeout_s: float | None = None,
    ) -> tuple[int, str, bytes]:
        """Status, media type and body (at most ``max_bytes``), or ``FetchError``."""
        # Always an explicit bound: aiohttp reads ``timeout=None`` as "no timeout at all" (not as
        # the session's), which left JWKS and metadata fetches unbounded against a hung AS.
        timeout = aiohttp.ClientTimeout(total=timeout_s or self._cfg.http_timeout_s)
        try:
            async with self._client().request(
                method, url, headers=dict(headers), data=data, allow_redirects=False, timeout=timeout
            ) as resp:
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise FetchError(f"{url}: response larger than {max_bytes} bytes")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > max_bytes:
                        raise FetchError(f"{url}: response larger than {max_bytes} bytes")
                return resp.status, resp.content_type, bytes(body)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise FetchError(f"{url}: {type(exc).__name__}") from None

    async def get_json(self, url: str, *, max_bytes: int) -> Any:
        status, _ctype, body = await self.request(
            "GET", url, headers={"Accept": "application/json"}, max_bytes=max_bytes
        )
        if status != 200:
            raise FetchError(f"{url}: HTTP {status}")
        try:
            return loads_strict(body)
        except (ValueError, UnicodeError):
            raise FetchError(f"{url}: not JSON") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def metadata_urls(issuer: str, discovery: bool | str) -> list[str]:
    """Where to look for the issuer's metadata, in order."""
    if isinstance(discovery, str):
        return [discovery]
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    return [
        f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{path}",
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
    ]


class Discovery:
    """The issuer's metadata, fetched on first use, kept for ``ttl_s``, kept on refresh errors."""

    def __init__(self, cfg: IssuerConfig, http: IssuerHttp, *, ttl_s: float = 3600.0) -> None:
        self._cfg = cfg
        self._http = http
        self._ttl_s = ttl_s
        self._doc: Mapping[str, Any] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def metadata(self) -> Mapping[str, Any]:
        if self._doc is not None and time.monotonic() - self._fetched_at < self._ttl_s:
            return self._doc
        async with self._lock:  # single flight
            if self._doc is not None and time.monotonic() - self._fetched_at < self._ttl_s:
                return self._doc
            try:
                self._doc = await self._fetch()
            except FetchError:
                if self._doc is None:
                    raise
                log.warning("issuer %s: metadata refresh failed, keeping the last good copy", self._cfg.name)
            self._fetched_at = time.monotonic()
            return self._doc

    async def endpoint(self, name: str) -> str:
        url = (await self.metadata()).get(name)
        if not isinstance(url, str) or not url:
            raise FetchError(f"issuer {self._cfg.name}: metadata has no {name}")
        if not url.startswith("https://") and not self._cfg.allow_insecure_http:
            raise FetchError(f"issuer {self._cfg.name}: {name} is not https://")
        return url

    async def _fetch(self) -> Mapping[str, Any]:
        errors: list[str] = []
        for url in metadata_urls(self._cfg.issuer, self._cfg.discovery):
            try:
                doc = await self._http.get_json(url, max_bytes=self._cfg.jwks_max_bytes)
            except FetchError as exc:
                errors.append(str(exc))
                continue
            if not isinstance(doc, dict):
                errors.append(f"{url}: not a JSON object")
                continue
            if doc.get("issuer") != self._cfg.issuer:
                # RFC 8414 §3.3: a mismatch means the document must not be used.
                errors.append(f"{url}: issuer in metadata does not match {self._cfg.issuer}")
                continue
            return doc
        raise FetchError("; ".join(errors))
