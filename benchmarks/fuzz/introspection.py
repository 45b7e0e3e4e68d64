"""Fuzz target: introspection responses (``gateway.verify.introspection``, RFC 7662 / RFC 9701).

The AS's answer is what is fuzzed: the HTTP exchange is replaced by a stub returning the input as
the body (the parser and every check after it are the real ones). Byte 0 picks the mode:
0 -> JSON response; 1 -> RFC 9701 signed response as sent; 2 -> ``header NUL payload`` signed
here with the issuer's key. Invariants: only ``GatewayError`` (401 inactive/invalid, 503 bad
answer); a token is active only when ``active`` is the JSON ``true`` (not "true", 1, "yes").
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from ._harness import instrumented, run, split
from .keys import NOW, b64, b64json, ed_jwk, sign_ed

with instrumented():
    from gateway.config.issuers import IssuerConfig
    from gateway.errors import GatewayError
    from gateway.verify.fetch import IssuerHttp
    from gateway.verify.introspection import Introspector
    from gateway.verify.jose import loads_strict, parse_compact
    from gateway.verify.jwks import JwksCache

ISSUER = "https://as.bank.example"
TOKEN = "opaque-token-0123456789abcdef"
_JWKS = Path(tempfile.mkdtemp(prefix="fuzz-intro-")) / "jwks.json"
_JWKS.write_text(json.dumps({"keys": [{**ed_jwk(), "kid": "ed"}]}))
_AUTH = {"method": "client_secret_basic", "client_id": "gateway", "client_secret": "s3cret"}


def _cfg(response: str) -> IssuerConfig:
    extra: dict[str, Any] = {"jwks_file": str(_JWKS), "algorithms": ["EdDSA"]} if response == "jwt" else {}
    return IssuerConfig.model_validate({
        "name": f"as-{response}", "issuer": ISSUER, "mode": "introspection", **extra,
        "introspection": {"endpoint": f"{ISSUER}/introspect", "client_auth": _AUTH, "response": response},
    })


class _Answer:
    """Stands in for ``IssuerHttp``: the AS answers 200 with the fuzzed body."""

    def __init__(self, ctype: str) -> None:
        self.ctype = ctype
        self.body = b""

    async def request(self, method: str, url: str, **_: Any) -> tuple[int, str, bytes]:
        return 200, self.ctype, self.body


LOOP = asyncio.new_event_loop()
JSON_CFG, JWT_CFG = _cfg("json"), _cfg("jwt")
KEYS = JwksCache(JWT_CFG, IssuerHttp(JWT_CFG), None, clock=lambda: NOW)
LOOP.run_until_complete(KEYS.refresh())
assert KEYS.ready
JSON_HTTP, JWT_HTTP = _Answer("application/json"), _Answer("application/token-introspection+jwt")
JSON_I = Introspector(JSON_CFG, JSON_HTTP, None, None, clock=lambda: NOW)  # type: ignore[arg-type]
JWT_I = Introspector(JWT_CFG, JWT_HTTP, None, KEYS, clock=lambda: NOW)  # type: ignore[arg-type]


def one(data: bytes) -> None:
    if not data:
        return
    mode = data[0] % 3
    if mode == 0:
        JSON_HTTP.body = data[1:]
        LOOP.run_until_complete(JSON_I._call(TOKEN))
        doc = loads_strict(data[1:])  # it was accepted, so it parses
        assert doc["active"] is True, doc
        return
    if mode == 1:
        JWT_HTTP.body = data[1:]
    else:
        header, payload = split(data[1:], 2)
        JWT_HTTP.body = sign_ed(b64(header), b64(payload)).encode("ascii")
    LOOP.run_until_complete(JWT_I._call(TOKEN))
    inner = parse_compact(JWT_HTTP.body.decode("ascii").strip()).payload["token_introspection"]
    assert inner["active"] is True, inner


def _active(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"active": True, "iss": ISSUER, "sub": "cust-1", "client_id": "tpp-1",
                           "scope": "accounts", "exp": NOW + 300, "iat": NOW, "aud": "https://api.bank.example"}
    doc.update(over)
    return doc


def _signed(inner: dict[str, Any]) -> dict[str, Any]:
    return {"iss": ISSUER, "aud": "gateway", "iat": NOW, "token_introspection": inner}


def seeds() -> list[bytes]:
    jwt_header = {"typ": "token-introspection+jwt", "alg": "EdDSA", "kid": "ed"}
    raw = [json.dumps(d).encode() for d in (
        _active(), _active(active="true"), _active(active=1), _active(active="yes"), {"active": False},
        _active(cnf={"jkt": "x" * 43}, token_type="DPoP"), _active(cnf={"jkt": "x"}, token_type="Bearer"),
        _active(exp=NOW + 10**20), _active(scope=["a"]),
    )]
    return [
        *(b"\x00" + r for r in raw),
        b'\x00{"active":true,"active":false}',
        b"\x01" + sign_ed(b64json(jwt_header), b64json(_signed(_active()))).encode(),
        b"\x02" + json.dumps(jwt_header).encode() + b"\x00" + json.dumps(_signed(_active())).encode(),
        b"\x02" + json.dumps(jwt_header).encode() + b"\x00" + json.dumps(_signed(_active(active="true"))).encode(),
    ]


if __name__ == "__main__":
    run("introspection", one, (GatewayError,), seeds, max_len=4096)
