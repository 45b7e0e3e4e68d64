"""The gateway side of the interop suite: the example configuration run against the real AS.

The gateway runs ``config/examples/node-oidc-provider.yaml`` itself (values from the environment),
on a real TLS listener, in front of the shared recording upstream (``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
from requests_oauth2client.dpop import DPoPToken, InvalidUseDPoPNonceResponse

from gateway.server import GatewayServer
from tests.conftest import Upstream

from .interop_as import RS_JWT, RS_OPAQUE, AuthServer
from .interop_pki import ClientCert, Pki

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "node-oidc-provider.yaml"
# Short enough for the suite's time budget; the example's defaults are the production values.
INTROSPECTION_CACHE_TTL_S = 2
SELF_SIGNED_REFRESH_S = 1

T = TypeVar("T")


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a synchronous client call off the event loop the gateway is serving on."""
    return await asyncio.to_thread(fn, *args, **kwargs)


@dataclass
class Gw:
    server: GatewayServer
    upstream: Upstream
    auth: AuthServer
    self_signed_client_id: str

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.server.port}{path}"

    def session(self, cert: ClientCert | None = None) -> requests.Session:
        return self.auth.session(cert)

    def dpop_request(self, method: str, path: str, token: DPoPToken) -> requests.Response:
        """requests-oauth2client signs the proof (htm, htu, ath; nonce retry on use_dpop_nonce)."""
        try:
            return self.session().request(method, self.url(path), auth=token, json=None, timeout=15)
        except InvalidUseDPoPNonceResponse as exc:
            # The library reads every 401 DPoP challenge as a nonce request; a refusal is a refusal.
            return exc.response

    def dpop_get(self, path: str, token: DPoPToken) -> requests.Response:
        return self.dpop_request("GET", path, token)

    def bearer_get(self, path: str, token: str, cert: ClientCert | None) -> requests.Response:
        """RFC 8705 §3: a certificate-bound token travels as Bearer over the mTLS connection."""
        return self.session(cert).get(self.url(path), headers={"Authorization": f"Bearer {token}"}, timeout=15)


def example_env(auth_server: AuthServer, pki: Pki, upstream_url: str, self_signed_client_id: str) -> dict[str, str]:
    cert, key = pki.server_files("gateway", "127.0.0.1", "localhost")
    return {
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": "0",
        "PUBLIC_HOST": "127.0.0.1",  # what the clients connect to (and sign as DPoP htu)
        "ADMIN_PORT": "0",
        "GATEWAY_TLS_CERT": str(cert),
        "GATEWAY_TLS_KEY": str(key),
        "CLIENT_CA": str(pki.ca_path),
        "UPSTREAM_URL": upstream_url,
        "AS_ISSUER": auth_server.issuer,
        "AS_CA": str(pki.ca_path),
        "GATEWAY_INTROSPECTION_SECRET": auth_server.clients.gateway_secret,
        "API_AUDIENCE": RS_JWT,
        "API_OPAQUE_AUDIENCE": RS_OPAQUE,
        "DPOP_NONCE_KEY": secrets.token_urlsafe(32),
        "SELF_SIGNED_JWKS_URL": auth_server.directory_jwks_url(self_signed_client_id),
        "JWKS_REFETCH_COOLDOWN_S": "1",
        "INTROSPECTION_CACHE_TTL_S": str(INTROSPECTION_CACHE_TTL_S),
        "SELF_SIGNED_REFRESH_S": str(SELF_SIGNED_REFRESH_S),
    }


def assert_refused(resp: requests.Response, status: int, error: str, gw: Gw) -> None:
    assert resp.status_code == status, (resp.status_code, resp.headers.get("WWW-Authenticate"), resp.text)
    assert f'error="{error}"' in resp.headers.get("WWW-Authenticate", "")
    assert gw.upstream.requests == [], "a refused request reached the upstream"


def assert_forwarded(resp: requests.Response, gw: Gw, path: str) -> None:
    assert resp.status_code == 200, (resp.status_code, resp.headers.get("WWW-Authenticate"), resp.text)
    assert len(gw.upstream.requests) == 1
    assert gw.upstream.last.raw_path == path


# ``await gw_factory(edit)`` (conftest.py): the example config, optionally edited (text in, text out).
GwFactory = Callable[..., Awaitable[Gw]]
