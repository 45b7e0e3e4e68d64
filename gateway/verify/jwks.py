"""An issuer's signing keys: an async JWKS cache (RFC 7517 §4-5, RFC 9068 §4, RFC 8725 §3.10).

- Fetched before serving (``start``), then refreshed in the background every ``jwks_refresh_s``.
- An unknown ``kid`` triggers a refetch, but at most one in flight (single flight) and at most
  one per ``jwks_refetch_cooldown_s``: a burst of random kids is not a burst of fetches (JWT-04b).
- A failed refresh keeps the last good key set (stale-on-error) for up to ``jwks_max_stale_s``;
  with no usable key set the answer is ``KeySourceUnavailableError`` (503), never a 401.
- Keys with ``use: enc``, ``key_ops`` without ``verify``, private members, symmetric or unsupported
  ``kty``, RSA under 2048 bits (JWT-17) are skipped. Keys only ever come from the configured
  source: ``jku``/``x5u``/``jwk``/``x5c`` token headers are never looked at (JWT-03).
- Keys whose ``kid`` is on the deny list (``gateway.verify.denylist``) are not usable, whatever the
  JWKS says. Each key has a fingerprint (SHA-256 of its SubjectPublicKeyInfo): a cached token
  verification is only good while the key that verified it is still usable (issue #13).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..config.issuers import IssuerConfig
from ..errors import KeySourceUnavailableError
from ..tasks import stop_tasks
from .denylist import DenyList
from .fetch import Discovery, FetchError, IssuerHttp
from .jose import key_fits, loads_strict

__all__ = ("JwksCache", "KeySet", "VerificationKey", "parse_jwks")

log = logging.getLogger("gateway.verify")

_KTY_DEFAULT_ALG = {"RSA": "PS256", "EC": None, "OKP": "EdDSA"}
_EC_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")
_MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str | None
    key: Any  # a cryptography public key
    alg: str | None  # the JWK's own ``alg``, when published
    fingerprint: bytes = b""  # SHA-256 of the SubjectPublicKeyInfo (same key, same value)


def key_fingerprint(key: Any) -> bytes:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[VerificationKey, ...]
    fingerprints: frozenset[bytes] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprints", frozenset(k.fingerprint for k in self.keys))

    def without_kids(self, kids: frozenset[str]) -> KeySet:
        return KeySet(tuple(k for k in self.keys if k.kid not in kids)) if kids else self

    def candidates(self, kid: str | None, alg: str) -> list[VerificationKey]:
        """Keys that may verify a token with this ``kid`` and ``alg`` (FAPI 2.0 §5.4.3: duplicate
        kids are told apart by key type and ``alg``)."""
        return [k for k in self.keys if (kid is None or k.kid == kid) and key_fits(alg, k.key, k.alg)]

    def has_kid(self, kid: str | None) -> bool:
        return kid is None or any(k.kid == kid for k in self.keys)


def _parse_key(jwk: Mapping[str, Any]) -> VerificationKey | None:
    kty = jwk.get("kty")
    # isinstance first: a list or object is unhashable, and "in" a dict would raise TypeError.
    if not isinstance(kty, str) or kty not in _KTY_DEFAULT_ALG:
        return None  # oct (HMAC) and unknown types never verify access tokens
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    if any(m in jwk for m in _PRIVATE_MEMBERS):
        return None  # a published private key is a misconfiguration; do not use it at all
    kid, alg = jwk.get("kid"), jwk.get("alg")
    if (kid is not None and not isinstance(kid, str)) or (alg is not None and not isinstance(alg, str)):
        return None
    parse_alg = _EC_ALG.get(str(jwk.get("crv"))) if kty == "EC" else _KTY_DEFAULT_ALG[kty]
    if parse_alg is None:
        return None
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=parse_alg).key
    except Exception:  # PyJWTError, ValueError, cryptography errors...: an unusable key is skipped
        return None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        return None
    return VerificationKey(kid=kid, key=key, alg=alg, fingerprint=key_fingerprint(key))


def parse_jwks(doc: Any, *, source: str = "jwks") -> KeySet:
    """The usable signature keys of a JWK Set document (RFC 7517 §5); unusable ones are skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise FetchError(f"{source}: not a JWK Set (no keys array)")
    keys: list[VerificationKey] = []
    for n, entry in enumerate(doc["keys"]):
        parsed = _parse_key(entry) if isinstance(entry, dict) else None
        if parsed is None:
            log.info("%s: skipping key #%d (not a usable signature verification key)", source, n)
        else:
            keys.append(parsed)
    return KeySet(tuple(keys))


class JwksCache:
    def __init__(
        self,
        cfg: IssuerConfig,
        http: IssuerHttp,
        discovery: Discovery | None,
        *,
        clock: Callable[[], float] = time.time,
        on_fetch: Callable[[bool], None] | None = None,
        denylist: DenyList | None = None,
    ) -> None:
        self._cfg = cfg
        self._denylist = denylist
        # The usable key set (denied kids removed) and the deny-list version it was made for.
        self._usable: KeySet | None = None
        self._usable_version = -1
        self._fresh_until = 0.0  # loaded_at + jwks_max_stale_s
        self._on_fetch = on_fetch
        self._http = http
        self._discovery = discovery
        self._clock = clock
        self._keys: KeySet | None = None
        self._loaded_at = 0.0
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._background: asyncio.Task[None] | None = None
        self.fetch_count = 0  # network/file loads attempted (for tests and metrics)
        self.last_load_ok = False

    @property
    def ready(self) -> bool:
        return self._current() is not None

    @property
    def loaded_at(self) -> float:
        """When the key set in use was loaded (Unix time; 0: never). For the metrics' staleness."""
        return self._loaded_at

    async def start(self) -> None:
        """Load the keys before serving; a failure is logged and retried, requests get 503 until then."""
        await self._refresh(force=True)
        if self._background is None:
            self._background = asyncio.create_task(self._refresh_loop(), name=f"jwks-{self._cfg.name}")

    async def close(self) -> None:
        await stop_tasks(self._background, self._inflight)
        self._background = self._inflight = None

    async def keys_for(self, kid: str | None, alg: str) -> Sequence[VerificationKey]:
        """Candidate keys for ``kid``/``alg``; an unknown kid causes at most a rate-limited refetch."""
        keys = self._current()
        if keys is not None and keys.has_kid(kid):
            return keys.candidates(kid, alg)
        await self._refresh(force=False)
        keys = self._current()
        if keys is None:
            raise KeySourceUnavailableError(
                "the token issuer's keys are unavailable", reason="jwks_unavailable"
            )
        return keys.candidates(kid, alg)

    async def find(self, match: Callable[[VerificationKey], bool]) -> list[VerificationKey]:
        """Keys for which ``match`` holds (e.g. a key id that may be a kid or an RFC 7638
        thumbprint); none found causes at most a rate-limited refetch, like an unknown kid."""
        keys = self._current()
        found = [k for k in keys.keys if match(k)] if keys is not None else []
        if found:
            return found
        await self._refresh(force=False)
        keys = self._current()
        if keys is None:
            raise KeySourceUnavailableError("the signer's keys are unavailable", reason="jwks_unavailable")
        return [k for k in keys.keys if match(k)]

    async def refresh(self) -> bool:
        """Fetch the key set now, whatever the cooldown (admin flush); True if it loaded."""
        await self._refresh(force=True)
        return self.last_load_ok

    def has_key(self, fingerprint: bytes) -> bool:
        """Is this key still usable: in the current key set, not stale, its kid not denied?
        (Every cache hit asks: one clock read, one int compare, one set probe.)"""
        keys = self._current()
        return keys is not None and fingerprint in keys.fingerprints

    def _current(self) -> KeySet | None:
        if self._usable is None or self._clock() > self._fresh_until:
            return None
        if self._denylist is not None and self._denylist.version != self._usable_version:
            self._set_usable()
        return self._usable

    def _set_usable(self) -> None:
        """Recomputed only when the keys or the denied kids change."""
        keys, denylist = self._keys, self._denylist
        if keys is None or denylist is None:
            self._usable = keys
            return
        self._usable = keys.without_kids(denylist.denied_kids(self._cfg.name))
        self._usable_version = denylist.version

    async def _refresh(self, *, force: bool) -> None:
        if self._inflight is None:
            now = self._clock()
            if not force and self._last_attempt is not None and (
                now - self._last_attempt < self._cfg.jwks_refetch_cooldown_s
            ):
                return
            self._last_attempt = now
            self._inflight = asyncio.create_task(self._load())
            self._inflight.add_done_callback(self._clear_inflight)
        # Shielded: a cancelled request must not cancel the fetch other requests wait on.
        await asyncio.shield(self._inflight)

    def _clear_inflight(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _load(self) -> None:
        self.fetch_count += 1
        source = self._cfg.jwks_file or self._cfg.jwks_uri or "discovered jwks_uri"
        try:
            if self._cfg.jwks_file:
                raw = await asyncio.to_thread(Path(self._cfg.jwks_file).read_bytes)
                doc = loads_strict(raw)
            else:
                url = self._cfg.jwks_uri
                if url is None:
                    assert self._discovery is not None
                    url = await self._discovery.endpoint("jwks_uri")
                doc = await self._http.get_json(url, max_bytes=self._cfg.jwks_max_bytes)
            keys = parse_jwks(doc, source=f"issuer {self._cfg.name}")
            if not keys.keys:
                raise FetchError(f"issuer {self._cfg.name}: the JWK Set has no usable signature keys")
        except (FetchError, OSError, ValueError, UnicodeError) as exc:
            state = "keeping the last good key set" if self._keys is not None else "no keys yet"
            log.warning("issuer %s: loading keys from %s failed (%s); %s", self._cfg.name, source, exc, state)
            if self._on_fetch is not None:
                self._on_fetch(False)
            self.last_load_ok = False
            return
        if self._on_fetch is not None:
            self._on_fetch(True)
        self._keys = keys
        self._loaded_at = self._clock()
        self._fresh_until = self._loaded_at + self._cfg.jwks_max_stale_s
        self._set_usable()
        self.last_load_ok = True

    async def _refresh_loop(self) -> None:
        while True:
            # After a failure, retry sooner than the regular period (but not in a tight loop).
            period = self._cfg.jwks_refresh_s
            delay = period if self._keys is not None else min(period, 10.0)
            await asyncio.sleep(delay)
            await self._refresh(force=True)
