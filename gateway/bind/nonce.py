"""Stateless resource-server DPoP nonces (RFC 9449 §8, §9, §11.2-§11.3).

A nonce is ``base64url(body || HMAC-SHA256(key, body)[:16])`` with ``body = version || issued_at || random``.
Any replica holding the shared key accepts any replica's nonce (DPOPN-09) without shared state;
a nonce from anyone else (e.g. the AS) fails the MAC (DPOPN-06). The random part makes every
nonce unpredictable and distinct (§8, DPOPN-03). Key rotation: the first key signs, every
configured key verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..model import b64url
from .jwk import b64url_decode

__all__ = ("NonceCheck", "NonceIssuer")

_VERSION = b"\x01"
_RANDOM_BYTES = 16
_MAC_BYTES = 16
_LENGTH = 1 + 8 + _RANDOM_BYTES + _MAC_BYTES
_ENCODED_LENGTH = (_LENGTH * 8 + 5) // 6


@dataclass(frozen=True, slots=True)
class NonceCheck:
    valid: bool
    # Seconds the nonce has left (valid nonces only): drives sending a fresh one before it expires.
    remaining_s: float = 0.0
    # When we issued it (valid nonces only): a proof's freshness when it carries a valid nonce.
    issued_at: float = 0.0


_INVALID = NonceCheck(False)


class NonceIssuer:
    def __init__(
        self,
        secrets: Sequence[str],
        *,
        lifetime_s: int = 300,
        clock_skew_s: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secrets:
            raise ValueError("at least one nonce secret is needed")
        # Derive the MAC keys so the configured strings are never used directly as HMAC keys
        # for anything else.
        self._keys = [hashlib.sha256(b"gateway dpop nonce v1\x00" + s.encode()).digest() for s in secrets]
        self._lifetime_s = lifetime_s
        self._skew_s = clock_skew_s
        self._clock = clock

    @property
    def lifetime_s(self) -> int:
        return self._lifetime_s

    def issue(self) -> str:
        body = _VERSION + struct.pack(">Q", int(self._clock())) + os.urandom(_RANDOM_BYTES)
        mac = hmac.new(self._keys[0], body, hashlib.sha256).digest()[:_MAC_BYTES]
        return b64url(body + mac)

    def check(self, nonce: str) -> NonceCheck:
        """Is this one of our nonces, and still fresh? Never raises."""
        if len(nonce) != _ENCODED_LENGTH:
            return _INVALID
        try:
            raw = b64url_decode(nonce)
        except ValueError:
            return _INVALID
        if len(raw) != _LENGTH or raw[:1] != _VERSION:
            return _INVALID
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        # Check every key, whatever matches first: the time taken does not say which key matched.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest()[:_MAC_BYTES], mac)
        if not ok:
            return _INVALID
        (issued_at,) = struct.unpack(">Q", body[1:9])
        now = self._clock()
        age = now - issued_at
        if age < -self._skew_s or age > self._lifetime_s:
            return _INVALID
        return NonceCheck(True, remaining_s=self._lifetime_s - age, issued_at=float(issued_at))
