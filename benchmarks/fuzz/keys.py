"""Fixed signing keys for the fuzz targets: the seed corpora stay valid from one run to the next."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

NOW = 1_780_000_000  # the frozen clock of every target (proofs' iat, tokens' exp)
URL = "https://api.bank.example/accounts"
TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
ED = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
EC = ec.derive_private_key(0x5EED_F022, ec.SECP256R1())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def ed_jwk() -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": b64(ED.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))}


def ec_jwk() -> dict[str, str]:
    nums = EC.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64(nums.x.to_bytes(32, "big")), "y": b64(nums.y.to_bytes(32, "big"))}


def thumbprint(jwk: dict[str, str]) -> str:
    members = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, sort_keys=True, separators=(",", ":"))
    return b64(hashlib.sha256(canonical.encode()).digest())


def sign_ed(header_seg: str, payload_seg: str) -> str:
    signing_input = f"{header_seg}.{payload_seg}"
    return f"{signing_input}.{b64(ED.sign(signing_input.encode('ascii', 'surrogateescape')))}"


def sign_es256(header_seg: str, payload_seg: str) -> str:
    signing_input = f"{header_seg}.{payload_seg}"
    r, s = decode_dss_signature(EC.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def ath(token: str = TOKEN) -> str:
    return b64(hashlib.sha256(token.encode("ascii")).digest())
