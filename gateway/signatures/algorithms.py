"""Signature algorithms for ``http-message-signatures``: its RFC 9421 registry classes, plus the
JWS PS256 computation (RFC 9421 §3.3.7: an algorithm named by the key, never in ``alg``), which
FAPI 2.0 lists and the registry has no name for. HMAC is never used."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from http_message_signatures import HTTPMessageSignaturesException, algorithms

__all__ = ("PS256", "algorithm_for")


class PS256(algorithms.HTTPSignatureAlgorithm):
    """RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt (RFC 7518 §3.5)."""

    algorithm_id = "jws-ps256"  # internal: never accepted as an ``alg`` value (checked before)

    def __init__(self, public_key: Any = None, private_key: Any = None) -> None:
        if public_key is not None and not isinstance(public_key, rsa.RSAPublicKey):
            raise HTTPMessageSignaturesException("Unexpected public key type")
        if private_key is not None and not isinstance(private_key, rsa.RSAPrivateKey):
            raise HTTPMessageSignaturesException("Unexpected private key type")
        self.public_key, self.private_key = public_key, private_key
        self._padding = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)

    def sign(self, message: bytes) -> bytes:
        assert self.private_key is not None
        return bytes(self.private_key.sign(message, self._padding, hashes.SHA256()))

    def verify(self, signature: bytes, message: bytes) -> None:
        assert self.public_key is not None
        self.public_key.verify(signature, message, self._padding, hashes.SHA256())


_BY_NAME: dict[tuple[str, str | None], type[algorithms.HTTPSignatureAlgorithm]] = {
    ("ES256", None): algorithms.ECDSA_P256_SHA256,
    ("ES256", "ecdsa-p256-sha256"): algorithms.ECDSA_P256_SHA256,
    ("Ed25519", None): algorithms.ED25519,
    ("Ed25519", "ed25519"): algorithms.ED25519,
    ("PS256", None): PS256,
    # An RSA key may also sign with the registry's RSA-PSS (SHA-512); never rsa-v1_5 (FAPI 2.0 §5.4.1).
    ("PS256", "rsa-pss-sha512"): algorithms.RSA_PSS_SHA512,
}


def algorithm_for(key_alg: str, alg_param: str | None) -> type[algorithms.HTTPSignatureAlgorithm] | None:
    """The algorithm for a key (JWS name) and the signature's ``alg`` parameter; None: they do not fit."""
    return _BY_NAME.get((key_alg, alg_param))
