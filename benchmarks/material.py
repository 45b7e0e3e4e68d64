"""Test key material for the benchmark, made fresh on every run (nothing secret is committed).

A private CA with a server and a client certificate (TLS), a tiny test authorization server key
(ES256) that signs RFC 9068 JWT access tokens bound with ``cnf.jkt`` (RFC 9449 §6.1) or
``cnf.x5t#S256`` (RFC 8705 §3.1), opaque tokens for the introspection mode (RFC 7662), and one
DPoP key per client. The load generator reads the clients files; the servers read the PEMs/JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

AUDIENCE = "https://api.bench.example"
SCOPE = "accounts"
AS_KID = "bench-as-1"
TOKEN_LIFETIME_S = 4 * 3600


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int32(n: int) -> bytes:
    return n.to_bytes(32, "big")


def jwk_of(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    pub = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64url(_int32(pub.x)), "y": b64url(_int32(pub.y))}


def jkt_of(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint: required members only, lexicographic order, no whitespace."""
    canon = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canon.encode()).digest())


def es256_jws(key: ec.EllipticCurvePrivateKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    signing = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    r, s = decode_dss_signature(key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
    return signing + "." + b64url(_int32(r) + _int32(s))


def dpop_proof(key: ec.EllipticCurvePrivateKey, htm: str, htu: str, token: str) -> str:
    """One RFC 9449 §4.2 proof (used by the probes; the load generator makes its own in Go)."""
    ath = b64url(hashlib.sha256(token.encode()).digest())
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk_of(key)}
    payload = {"jti": secrets.token_urlsafe(16), "htm": htm, "htu": htu, "iat": int(time.time()), "ath": ath}
    return es256_jws(key, header, payload)


@dataclass(frozen=True)
class Material:
    dir: Path
    issuer: str
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_x5t: str
    jwks: Path
    clients_dpop: Path
    clients_mtls: Path
    clients_opaque: Path
    opaque_db: Path
    hot_key: ec.EllipticCurvePrivateKey
    hot_dpop_token: str
    hot_mtls_token: str
    hot_opaque_token: str


def _claims(issuer: str, n: int, now: int, cnf: dict[str, str]) -> dict[str, Any]:
    return {
        "iss": issuer,
        "sub": f"user-{n}",
        "aud": AUDIENCE,
        "client_id": f"client-{n}",
        "scope": SCOPE,
        "iat": now,
        "exp": now + TOKEN_LIFETIME_S,
        "jti": secrets.token_urlsafe(12),
        "cnf": cnf,
    }


def make_material(out: Path, issuer: str, n_clients: int) -> Material:
    """Write everything under ``out``; ``n_clients`` distinct DPoP clients (client 0 is the hot one)."""
    out.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="gateway bench CA")
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("bench-client.example", common_name="bench-client")
    paths = {
        "ca": out / "ca.pem",
        "server_cert": out / "server.pem",
        "server_key": out / "server-key.pem",
        "client_cert": out / "client.pem",
        "client_key": out / "client-key.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    # Leaf first, then intermediates (none here): what nginx, aiohttp and node all accept.
    paths["server_cert"].write_bytes(b"".join(p.bytes() for p in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    der = x509.load_pem_x509_certificate(client.cert_chain_pems[0].bytes()).public_bytes(
        serialization.Encoding.DER
    )
    x5t = b64url(hashlib.sha256(der).digest())
    for p in (paths["server_key"], paths["client_key"]):
        p.chmod(0o600)

    as_key = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": [{**jwk_of(as_key), "kid": AS_KID, "alg": "ES256", "use": "sig"}]}
    (out / "jwks.json").write_text(json.dumps(jwks))
    as_pem = as_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (out / "as-key.pem").write_bytes(as_pem)
    (out / "as-key.pem").chmod(0o600)

    now = int(time.time())
    header = {"alg": "ES256", "typ": "at+jwt", "kid": AS_KID}
    dpop_rows: list[dict[str, str]] = []
    mtls_rows: list[dict[str, str]] = []
    opaque_rows: list[dict[str, str]] = []
    opaque_db: dict[str, dict[str, Any]] = {}
    hot_key: ec.EllipticCurvePrivateKey | None = None
    for n in range(n_clients):
        key = ec.generate_private_key(ec.SECP256R1())
        hot_key = hot_key or key
        jwk = jwk_of(key)
        jkt = jkt_of(jwk)
        d = b64url(_int32(key.private_numbers().private_value))
        dpop_token = es256_jws(as_key, header, _claims(issuer, n, now, {"jkt": jkt}))
        dpop_rows.append({"d": d, "x": jwk["x"], "y": jwk["y"], "token": dpop_token})
        mtls_token = es256_jws(as_key, header, _claims(issuer, n, now, {"x5t#S256": x5t}))
        mtls_rows.append({"d": "", "x": "", "y": "", "token": mtls_token})
        opaque = secrets.token_urlsafe(32)
        opaque_rows.append({"d": d, "x": jwk["x"], "y": jwk["y"], "token": opaque})
        opaque_db[opaque] = {"active": True, "token_type": "DPoP", **_claims(issuer, n, now, {"jkt": jkt})}
    assert hot_key is not None
    files = {
        "clients_dpop": out / "clients-dpop.json",
        "clients_mtls": out / "clients-mtls.json",
        "clients_opaque": out / "clients-opaque.json",
        "opaque_db": out / "opaque-db.json",
    }
    files["clients_dpop"].write_text(json.dumps(dpop_rows))
    files["clients_mtls"].write_text(json.dumps(mtls_rows))
    files["clients_opaque"].write_text(json.dumps(opaque_rows))
    files["opaque_db"].write_text(json.dumps(opaque_db))
    for p in files.values():
        p.chmod(0o600)
    return Material(
        dir=out,
        issuer=issuer,
        client_x5t=x5t,
        jwks=out / "jwks.json",
        hot_key=hot_key,
        hot_dpop_token=dpop_rows[0]["token"],
        hot_mtls_token=mtls_rows[0]["token"],
        hot_opaque_token=opaque_rows[0]["token"],
        **paths,
        **files,
    )
