"""A real authorization server (node-oidc-provider) and real OAuth clients for the interop suite.

Everything secret (AS signing keys, TLS keys, client certificates, client secrets) is made in
the test session (``interop_pki.py``); the node process gets it through a config file in a
temporary directory (mode 0600). Clients:

- DPoP-bound tokens: ``requests-oauth2client`` (its ``DPoPKey`` signs the token-request proofs
  and, through ``DPoPToken`` as a ``requests`` auth, the resource-request proofs).
- mTLS-bound tokens: ``requests`` with a client certificate (RFC 8705 ``tls_client_auth`` and
  ``self_signed_tls_client_auth``).
- A second, independent DPoP implementation: panva's ``oauth4webapi`` in ``node_client.mjs``.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests_oauth2client import OAuth2Client, PublicApp
from requests_oauth2client.dpop import DPoPKey, DPoPToken

from .interop_pki import ClientCert, Pki, new_signing_jwk

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
SERVER_JS = HERE / "as" / "server.mjs"
NODE_CLIENT_JS = HERE / "node_client.mjs"

# Resource indicators (RFC 8707). The gateway accepts the first two; the third is someone else's.
RS_JWT = "https://gateway.bank.test/jwt"
RS_OPAQUE = "https://gateway.bank.test/opaque"
RS_OTHER = "https://other-api.bank.test"
# JWT access tokens for this API signed with the other FAPI algorithms.
RS_JWT_ES256 = "https://gateway.bank.test/jwt-es256"
RS_JWT_EDDSA = "https://gateway.bank.test/jwt-eddsa"
RS_JWT_ED25519 = "https://gateway.bank.test/jwt-ed25519"  # RFC 9864 name for EdDSA over Ed25519
API_SCOPES = "accounts:read payments:write"

STARTUP_TIMEOUT_S = 20.0


def node_unavailable_reason() -> str | None:
    """Why the suite cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (the interop suite drives node-oidc-provider)"
    if not (NODE_MODULES / "oidc-provider").is_dir() or not (NODE_MODULES / "oauth4webapi").is_dir():
        return "tests/interop/node_modules missing: run `npm ci --prefix tests/interop --no-audit --no-fund`"
    return None


def client_registration(client_id: str, method: str, **extra: Any) -> dict[str, Any]:
    """oidc-provider client metadata for a machine-to-machine (client_credentials) client."""
    meta: dict[str, Any] = {
        "client_id": client_id,
        "token_endpoint_auth_method": method,
        "grant_types": ["client_credentials"],
        "response_types": [],
        "redirect_uris": [],
        "scope": API_SCOPES,
    }
    meta.update(extra)
    return meta


@dataclass
class Clients:
    """The clients the AS knows, with their credentials."""

    dpop_secret: str
    gateway_secret: str
    mtls_a: ClientCert
    mtls_b: ClientCert
    # The gateway's own certificate toward the AS (introspection with tls_client_auth).
    gateway_cert: ClientCert

    def registrations(self) -> list[dict[str, Any]]:
        return [
            # DPoP-bound tokens, client authenticated with a secret (DPoP is about the token).
            client_registration(
                "dpop-app",
                "client_secret_basic",
                client_secret=self.dpop_secret,
                dpop_bound_access_tokens=True,
                # RFC 9396 types it may ask for (tests/interop/test_interop_rar.py).
                authorization_details_types=["account_information", "payment_initiation"],
            ),
            # Certificate-bound tokens, PKI client authentication (RFC 8705 §2.1).
            client_registration(
                "mtls-a",
                "tls_client_auth",
                tls_client_auth_san_dns="client-a.bank.test",
                tls_client_certificate_bound_access_tokens=True,
            ),
            client_registration(
                "mtls-b",
                "tls_client_auth",
                tls_client_auth_san_dns="client-b.bank.test",
                tls_client_certificate_bound_access_tokens=True,
            ),
            # The gateway itself, as the introspecting resource server: no grants of its own.
            {
                "client_id": "gateway",
                "client_secret": self.gateway_secret,
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": [],
                "response_types": [],
                "redirect_uris": [],
            },
            # The same, authenticating with its certificate (RFC 8705 §2.1, the FAPI choice).
            {
                "client_id": "gateway-mtls",
                "token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_san_dns": "gateway.bank.test",
                "grant_types": [],
                "response_types": [],
                "redirect_uris": [],
            },
        ]


class AuthServer:
    """node-oidc-provider in a subprocess, plus the token requests the tests need."""

    # Access-token lifetime of every resource; benchmarks/soak30.py raises it past its run time.
    token_ttl_s = 300

    def __init__(self, workdir: Path, pki: Pki, clients: Clients) -> None:
        self.workdir = workdir
        self.pki = pki
        self.clients = clients
        self.admin_token = secrets.token_urlsafe(24)
        # One key per algorithm family; PS256 is the default (oidc-provider picks by alg).
        self.signing_keys = [
            new_signing_jwk("as-key-1"),
            new_signing_jwk("as-key-ec", "EC"),
            new_signing_jwk("as-key-ed", "OKP"),
        ]
        self.late_registrations: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.issuer = ""
        self.port = 0
        self.log_path = workdir / "as.log"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        cert, key = self.pki.server_pem("127.0.0.1")
        config = {
            "host": "127.0.0.1",
            "port": 0,
            "tls": {"cert": cert, "key": key, "clientCa": self.pki.ca.cert_pem.bytes().decode()},
            "jwks": {"keys": self.signing_keys},
            "clients": self.clients.registrations(),
            "resources": {
                RS_JWT: {"scope": API_SCOPES, "format": "jwt", "alg": "PS256", "ttl": self.token_ttl_s},
                RS_OPAQUE: {"scope": API_SCOPES, "format": "opaque", "ttl": self.token_ttl_s},
                RS_OTHER: {"scope": API_SCOPES, "format": "jwt", "alg": "PS256", "ttl": self.token_ttl_s},
                RS_JWT_ES256: {"scope": API_SCOPES, "format": "jwt", "alg": "ES256", "ttl": self.token_ttl_s},
                RS_JWT_EDDSA: {"scope": API_SCOPES, "format": "jwt", "alg": "EdDSA", "ttl": self.token_ttl_s},
                RS_JWT_ED25519: {"scope": API_SCOPES, "format": "jwt", "alg": "Ed25519", "ttl": self.token_ttl_s},
            },
            "adminToken": self.admin_token,
            "nonceSecret": secrets.token_hex(32),
            "requireNonce": False,
        }
        config_path = self.workdir / "as-config.json"
        config_path.write_text(json.dumps(config))
        config_path.chmod(0o600)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            ["node", str(SERVER_JS), str(config_path)],
            cwd=HERE,
            stdin=subprocess.PIPE,  # closed when this process dies: the AS exits with it
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "NODE_ENV": "test", "DEBUG": ""},
        )
        ready = self._read_ready_line()
        self.issuer, self.port = ready["issuer"], int(ready["port"])

    def _read_ready_line(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        ready_lines: queue.Queue[bytes] = queue.Queue()
        stdout = self.proc.stdout
        stdout_log = self.workdir / "as.stdout.log"

        def drain() -> None:
            # oidc-provider prints NOTICEs on stdout: find the ready line, keep draining the rest
            # so a full pipe can never block the server.
            with stdout_log.open("ab") as log:
                for line in iter(stdout.readline, b""):
                    if line.startswith(b'{"ready"'):
                        ready_lines.put(line)
                    else:
                        log.write(line)
                        log.flush()
            ready_lines.put(b"")

        threading.Thread(target=drain, daemon=True, name="oidc-provider-stdout").start()
        try:
            line = ready_lines.get(timeout=STARTUP_TIMEOUT_S)
        except queue.Empty:
            line = b""
        if not line:
            self.stop()
            raise RuntimeError(f"authorization server did not start; log:\n{self.log()}")
        ready: dict[str, Any] = json.loads(line)
        return ready

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # -- endpoints ---------------------------------------------------------------------------

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.issuer}/token/introspection"

    @property
    def revocation_endpoint(self) -> str:
        return f"{self.issuer}/token/revocation"

    def directory_jwks_url(self, client_id: str) -> str:
        return f"{self.issuer}/directory/clients/{client_id}/jwks.json"

    @property
    def ca_path(self) -> str:
        return str(self.pki.ca_path)

    # -- admin: state changes a real AS goes through -----------------------------------------

    def _admin(self, body: dict[str, Any]) -> None:
        resp = requests.post(
            f"{self.issuer}/admin/state",
            json=body,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            verify=self.ca_path,
            timeout=10,
        )
        resp.raise_for_status()

    def rotate_signing_key(self) -> str:
        """Publish a new signing key first in the JWKS (it signs from now on); keep the old one."""
        kid = f"as-key-r{len(self.signing_keys)}"
        self.signing_keys.insert(0, new_signing_jwk(kid))
        self._admin({"jwks": {"keys": self.signing_keys}})
        return kid

    def register_self_signed_client(
        self, client_id: str, made: tuple[ClientCert, dict[str, Any]] | None = None
    ) -> ClientCert:
        """Register a ``self_signed_tls_client_auth`` client, its certificate as x5c (RFC 8705 §2.2).

        ``made``: a certificate and JWK from ``Pki.self_signed_cert`` (default: a new one). Until
        this is called, the client's directory JWKS URL answers 404.
        """
        cert, jwk = made or self.pki.self_signed_cert(client_id)
        self.late_registrations.append(
            client_registration(
                client_id,
                "self_signed_tls_client_auth",
                jwks={"keys": [jwk]},
                tls_client_certificate_bound_access_tokens=True,
            )
        )
        self._admin({"clients": self.clients.registrations() + self.late_registrations})
        return cert

    def require_dpop_nonce(self, required: bool) -> None:
        self._admin({"requireNonce": required})

    # -- clients -------------------------------------------------------------------------------

    def session(self, cert: ClientCert | None = None) -> requests.Session:
        s = requests.Session()
        # REQUESTS_CA_BUNDLE (set on many machines) would silently override ``verify``.
        s.trust_env = False
        s.verify = self.ca_path
        if cert is not None:
            s.cert = cert.pair
        return s

    def dpop_client(self) -> OAuth2Client:
        return OAuth2Client(
            self.token_endpoint,
            auth=("dpop-app", self.clients.dpop_secret),
            introspection_endpoint=self.introspection_endpoint,
            revocation_endpoint=self.revocation_endpoint,
            session=self.session(),
            dpop_bound_access_tokens=True,
        )

    def dpop_token(self, resource: str, scope: str = API_SCOPES, key: DPoPKey | None = None) -> DPoPToken:
        """A DPoP-bound token from requests-oauth2client (which also signs the token-request proof)."""
        token = self.dpop_client().client_credentials(
            scope=scope, resource=resource, dpop=True, dpop_key=key or DPoPKey.generate(alg="ES256")
        )
        assert isinstance(token, DPoPToken)
        return token

    def mtls_token(self, cert: ClientCert, client_id: str, resource: str, scope: str = API_SCOPES) -> str:
        """A certificate-bound token, the client authenticated by its certificate (RFC 8705)."""
        client = OAuth2Client(self.token_endpoint, auth=PublicApp(client_id), session=self.session(cert))
        token = client.client_credentials(scope=scope, resource=resource)
        return str(token.access_token)

    def introspect(self, token: str) -> dict[str, Any]:
        resp = requests.post(
            self.introspection_endpoint,
            data={"token": token, "token_type_hint": "access_token"},
            auth=("gateway", self.clients.gateway_secret),
            verify=self.ca_path,
            timeout=10,
        )
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    def revoke_dpop_token(self, token: str) -> None:
        # Revocation is the owning client's business (oidc-provider's default policy).
        self.dpop_client().revoke_access_token(token)

    def fetch_jwks(self) -> dict[str, Any]:
        resp = requests.get(self.jwks_uri, verify=self.ca_path, timeout=10)
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body


def run_node_client(
    auth_server: AuthServer,
    resource: str,
    *,
    scope: str = API_SCOPES,
    url: str | None = None,
    method: str = "GET",
    alg: str = "ES256",
    extra_ca_pems: tuple[bytes, ...] = (),
) -> dict[str, Any]:
    """Run ``node_client.mjs`` (oauth4webapi): DPoP token from the AS, then optionally ``url``."""
    bundle = auth_server.workdir / f"node-ca-{secrets.token_hex(4)}.pem"
    bundle.write_bytes(auth_server.pki.ca.cert_pem.bytes() + b"".join(extra_ca_pems))
    args = {
        "issuer": auth_server.issuer,
        "clientId": "dpop-app",
        "clientSecret": auth_server.clients.dpop_secret,
        "resource": resource,
        "scope": scope,
        "url": url,
        "method": method,
        "alg": alg,
    }
    proc = subprocess.run(
        ["node", str(NODE_CLIENT_JS), json.dumps(args)],
        cwd=HERE,
        capture_output=True,
        timeout=30,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(bundle)},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"node client failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')}")
    out: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return out


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll ``predicate`` until true or the deadline (for background refreshes; bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def make_clients(pki: Pki) -> Clients:
    return Clients(
        dpop_secret=secrets.token_urlsafe(32),
        gateway_secret=secrets.token_urlsafe(32),
        mtls_a=pki.client_cert("mtls-a", "client-a.bank.test"),
        mtls_b=pki.client_cert("mtls-b", "client-b.bank.test"),
        gateway_cert=pki.client_cert("gateway-mtls", "gateway.bank.test"),
    )
