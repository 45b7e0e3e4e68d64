"""``gateway demo-client``: the calls that show what the gateway is for. DEV ONLY.

curl cannot sign DPoP proofs, so this tiny client does it (PyJWT + cryptography, already runtime
dependencies). Against a running ``gateway demo`` it:

1. gets a DPoP-bound token (``cnf.jkt``, RFC 9449) from the demo issuer and calls ``/accounts/42``
   with a fresh proof: 200;
2. sends the very same proof again: 401 ``invalid_dpop_proof`` (its ``jti`` was seen: replay);
3. sends a proof signed for another URL: 401 ``invalid_dpop_proof`` (``htu`` mismatch);
4. gets a certificate-bound token (``cnf.x5t#S256``, RFC 8705) with client A's certificate and
   calls with A's certificate: 200; and with client B's: 401 ``invalid_token``.

Each call prints one line: the status, the error and the ``WWW-Authenticate`` challenge.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ("Call", "run_client", "run_client_sync")


@dataclass(frozen=True, slots=True)
class Call:
    """One call the demo client made, as printed."""

    what: str
    method: str
    path: str
    status: int
    expected: int
    error: str | None
    challenge: str | None

    @property
    def as_expected(self) -> bool:
        return self.status == self.expected

    def line(self) -> str:
        mark = "ok " if self.as_expected else "UNEXPECTED"
        head = f"  {mark} {self.status} {self.method} {self.path:<14} {self.what}"
        detail = f"error={self.error}" if self.error else ""
        if self.challenge:
            detail += f"{'  ' if detail else ''}WWW-Authenticate: {self.challenge}"
        return f"{head}\n         {detail}" if detail else head


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _DpopKey:
    """A fresh P-256 key held by the client; every proof is signed with it (ES256)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))

    def proof(self, method: str, url: str, token: str | None = None) -> str:
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": url,
                                  "iat": int(time.time())}
        if token is not None:  # ath: the proof is tied to this access token (RFC 9449 §4.2)
            claims["ath"] = _b64(hashlib.sha256(token.encode("ascii")).digest())
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": self.jwk})


def _tls(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def _token(session: aiohttp.ClientSession, issuer: str, *, dpop: _DpopKey | None) -> str:
    url = f"{issuer}/token"
    headers = {"DPoP": dpop.proof("POST", url)} if dpop is not None else {}
    async with session.post(url, data={"grant_type": "client_credentials", "scope": "accounts"},
                            headers=headers) as resp:
        body = await resp.json()
        if resp.status != 200 or "access_token" not in body:
            raise RuntimeError(f"the demo issuer refused the token request: {resp.status} {body}")
        return str(body["access_token"])


async def _call(
    session: aiohttp.ClientSession, origin: str, path: str, what: str, expected: int, headers: dict[str, str],
) -> Call:
    async with session.get(f"{origin}{path}", headers=headers) as resp:
        await resp.read()
        error = None
        if resp.status >= 400 and resp.content_type == "application/json":
            try:
                error = (await resp.json()).get("error")
            except (ValueError, aiohttp.ContentTypeError):
                error = None
        return Call(what, "GET", path, resp.status, expected, error, resp.headers.get("WWW-Authenticate"))


async def run_client(
    origin: str, issuer: str, certs: Path, *, out: Callable[[str], None] | None = print,
) -> list[Call]:
    """Make the demo's calls against ``origin`` (the gateway) and ``issuer`` (the demo AS)."""
    ca = certs / "ca.pem"
    calls: list[Call] = []

    def show(call: Call) -> None:
        calls.append(call)
        if out is not None:
            out(call.line())

    path = "/accounts/42"
    timeout = aiohttp.ClientTimeout(total=10)
    if out is not None:
        out("DPoP (RFC 9449): a token bound to a key this client holds, one signed proof per request")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_tls(ca)), timeout=timeout) as s:
        key = _DpopKey()
        token = await _token(s, issuer, dpop=key)
        auth = f"DPoP {token}"
        proof = key.proof("GET", f"{origin}{path}", token)
        show(await _call(s, origin, path, "DPoP-bound token, fresh proof", 200,
                         {"Authorization": auth, "DPoP": proof}))
        show(await _call(s, origin, path, "the same proof again (jti replay)", 401,
                         {"Authorization": auth, "DPoP": proof}))
        other = key.proof("GET", f"{origin}/payments", token)
        show(await _call(s, origin, path, "a proof signed for another URL (htu /payments)", 401,
                         {"Authorization": auth, "DPoP": other}))
        show(await _call(s, origin, path, "the DPoP token as a plain Bearer token", 401,
                         {"Authorization": f"Bearer {token}"}))
    if out is not None:
        out("mTLS (RFC 8705): a token bound to client A's certificate")
    a = _tls(ca, certs / "client-a.pem", certs / "client-a-key.pem")
    b = _tls(ca, certs / "client-b.pem", certs / "client-b-key.pem")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=a), timeout=timeout) as s:
        token = await _token(s, issuer, dpop=None)
        show(await _call(s, origin, path, "client A's certificate-bound token, with A's certificate", 200,
                         {"Authorization": f"Bearer {token}"}))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=b), timeout=timeout) as s:
        show(await _call(s, origin, path, "the same token with client B's certificate (stolen token)", 401,
                         {"Authorization": f"Bearer {token}"}))
    return calls


def run_client_sync(origin: str, issuer: str, certs: Path) -> int:
    """``gateway demo-client``: 0 when every call got the status it should have."""
    try:
        calls = asyncio.run(run_client(origin, issuer, certs))
    except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError) as exc:
        print(f"demo-client: {type(exc).__name__}: {exc} (is `gateway demo` running?)")
        return 1
    return 0 if all(c.as_expected for c in calls) else 1
