"""Real DPoP proofs for tests: keys made with ``cryptography``, signatures made by hand so that
every malformed variant (bad header, DER signature, private jwk...) can be produced exactly."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

URL = "https://api.bank.example/accounts"
TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def ath(token: str) -> str:
    return b64(hashlib.sha256(token.encode("ascii")).digest())


def _int(n: int, size: int | None = None) -> str:
    size = size or (n.bit_length() + 7) // 8
    return b64(n.to_bytes(size, "big"))


def public_jwk(key: PrivateKey) -> dict[str, str]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        nums = key.public_key().public_numbers()
        size = (key.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
        return {"kty": "EC", "crv": crv, "x": _int(nums.x, size), "y": _int(nums.y, size)}
    if isinstance(key, rsa.RSAPrivateKey):
        rnums = key.public_key().public_numbers()
        return {"kty": "RSA", "n": _int(rnums.n), "e": _int(rnums.e)}
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return {"kty": "OKP", "crv": "Ed25519", "x": b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))}


def private_jwk(key: PrivateKey) -> dict[str, str]:
    jwk = public_jwk(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk["d"] = _int(key.private_numbers().private_value, (key.curve.key_size + 7) // 8)
    elif isinstance(key, rsa.RSAPrivateKey):
        p = key.private_numbers()
        jwk.update(d=_int(p.d), p=_int(p.p), q=_int(p.q), dp=_int(p.dmp1), dq=_int(p.dmq1), qi=_int(p.iqmp))
    else:
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

        jwk["d"] = b64(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    return jwk


def jkt(jwk: dict[str, str]) -> str:
    members = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, sort_keys=True, separators=(",", ":"))
    return b64(hashlib.sha256(canonical.encode()).digest())


def raw_sign(key: PrivateKey, alg: str, data: bytes, *, der: bool = False) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        h = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512()}[alg]
        sig = key.sign(data, ec.ECDSA(h))
        if der:
            return sig
        r, s = decode_dss_signature(sig)
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if isinstance(key, rsa.RSAPrivateKey):
        h = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
        if alg.startswith("PS"):
            return key.sign(data, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
        return key.sign(data, padding.PKCS1v15(), h)
    return key.sign(data)


@dataclass
class Signer:
    key: PrivateKey
    alg: str
    jwk: dict[str, str] = field(init=False)
    jkt: str = field(init=False)

    def __post_init__(self) -> None:
        self.jwk = public_jwk(self.key)
        self.jkt = jkt(self.jwk)

    def claims(self, **over: Any) -> dict[str, Any]:
        c: dict[str, Any] = {
            "jti": str(uuid.uuid4()),
            "htm": "GET",
            "htu": URL,
            "iat": int(time.time()),
            "ath": ath(TOKEN),
        }
        c.update(over)
        return c

    def header(self, **over: Any) -> dict[str, Any]:
        h: dict[str, Any] = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk}
        h.update(over)
        return h

    def proof(
        self,
        *,
        header: dict[str, Any] | None = None,
        drop_header: tuple[str, ...] = (),
        drop: tuple[str, ...] = (),
        sign_alg: str | None = None,
        der: bool = False,
        **claims: Any,
    ) -> str:
        h = header if header is not None else self.header()
        for name in drop_header:
            h.pop(name, None)
        c = self.claims(**claims)
        for name in drop:
            c.pop(name, None)
        return self.sign_parts(b64json(h), b64json(c), sign_alg=sign_alg, der=der)

    def sign_parts(self, header_seg: str, payload_seg: str, *, sign_alg: str | None = None, der: bool = False) -> str:
        signing_input = f"{header_seg}.{payload_seg}".encode()
        sig = raw_sign(self.key, sign_alg or self.alg, signing_input, der=der)
        return f"{signing_input.decode()}.{b64(sig)}"


def es256() -> Signer:
    return Signer(ec.generate_private_key(ec.SECP256R1()), "ES256")


def ed25519_signer() -> Signer:
    return Signer(ed25519.Ed25519PrivateKey.generate(), "EdDSA")


def rsa_signer(alg: str = "PS256", bits: int = 2048) -> Signer:
    return Signer(rsa.generate_private_key(public_exponent=65537, key_size=bits), alg)
