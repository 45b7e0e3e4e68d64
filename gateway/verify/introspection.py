"""Opaque tokens: RFC 7662 introspection with bounded caches (RFC 7662 §2-4, RFC 9701 §4-5).

- ``POST`` form ``token=…&token_type_hint=access_token`` (§2.1), client authentication by
  ``client_secret_basic`` / ``client_secret_post`` (RFC 6749 §2.3.1), ``private_key_jwt``
  (RFC 7523 §2.2) or ``tls_client_auth`` (RFC 8705 §2.1).
- ``active`` must be the JSON ``true`` (§2.2); anything else is an inactive token (401).
- Positive results are cached by SHA-256(token) until min(``cache_ttl_s``, ``exp``) (§4: never
  beyond exp), negative ones for ``negative_cache_ttl_s``; both caches are size-bounded. One
  call per token at a time (single flight).
- AS unreachable, non-200, or not the expected media type / JSON: ``IntrospectionUnavailableError``
  (503, fail closed); nothing is cached, so cached answers keep serving within their TTL.
- Bounded admission (``admission.py``): tokens of implausible length are refused without a call;
  calls get a slot within ``queue_timeout_s`` among at most ``max_queued_calls`` waiters, and one
  source holds at most ``max_concurrent_per_source`` calls, and a source whose tokens keep coming
  back inactive is throttled (``max_inactive_per_source``); otherwise 503 + Retry-After at once.
- RFC 9701 (``response: jwt``): a JWS with ``typ`` token-introspection+jwt signed by the issuer,
  ``iss`` = issuer, ``aud`` = our client_id, members under ``token_introspection``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal
from urllib.parse import quote_plus

import jwt
from cachetools import TLRUCache, TTLCache
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ..config.issuers import IssuerConfig
from ..errors import GatewayError, IntrospectionUnavailableError, InvalidTokenError
from ..model import VerifiedToken
from .admission import CallGate, ScanGuard
from .claims import to_verified_token
from .fetch import Discovery, FetchError, IssuerHttp
from .jose import loads_strict, looks_like_jws, parse_compact, verify_signature
from .jwks import JwksCache

__all__ = ("Introspector",)

log = logging.getLogger("gateway.verify")

_MAX_RESPONSE_BYTES = 256 * 1024
_JWT_RESPONSE_TYPE = "application/token-introspection+jwt"
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _unavailable(reason: str) -> IntrospectionUnavailableError:
    return IntrospectionUnavailableError("the token issuer cannot be reached", reason=reason)


class Introspector:
    """Introspects one issuer's tokens. ``introspect`` is keyed by the caller's SHA-256 digest."""

    def __init__(
        self,
        cfg: IssuerConfig,
        http: IssuerHttp,
        discovery: Discovery | None,
        keys: JwksCache | None,
        *,
        clock: Callable[[], float] = time.time,
        on_call: Callable[[Literal["active", "inactive", "error"]], None] | None = None,
        on_cache: Callable[[bool], None] | None = None,
    ) -> None:
        assert cfg.introspection is not None
        self._on_call = on_call
        self._on_cache = on_cache
        self._cfg = cfg
        self._icfg = cfg.introspection
        self._http = http
        self._discovery = discovery
        self._keys = keys
        self._clock = clock
        icfg = self._icfg
        self.positive: TLRUCache[bytes, VerifiedToken] = TLRUCache(
            maxsize=icfg.cache_size, ttu=self._positive_until, timer=clock
        )
        self.negative: TTLCache[bytes, str] = TTLCache(
            maxsize=icfg.negative_cache_size, ttl=max(icfg.negative_cache_ttl_s, 1e-9), timer=clock
        )
        self._inflight: dict[bytes, asyncio.Task[VerifiedToken]] = {}
        self._gate = CallGate(
            slots=icfg.max_concurrent_calls, max_queued=icfg.max_queued_calls,
            queue_timeout_s=icfg.queue_timeout_s, per_source=icfg.max_concurrent_per_source,
        )
        self._scans = ScanGuard(limit=icfg.max_inactive_per_source, window_s=icfg.inactive_window_s, clock=clock)
        self._signing_key: Any = None
        auth = icfg.client_auth
        if auth.method == "private_key_jwt":
            assert auth.private_key is not None
            with open(auth.private_key, "rb") as fh:
                self._signing_key = load_pem_private_key(fh.read(), password=None)
        self.call_count = 0  # introspection requests sent (for tests and metrics)
        # Set by gateway.app.build_pipeline with rate_limits.source_budget.introspection_calls.
        self.call_budget: Callable[[str | None], Awaitable[None]] | None = None

    def _positive_until(self, _key: bytes, value: VerifiedToken, now: float) -> float:
        return min(now + self._icfg.cache_ttl_s, value.expires_at)

    async def introspect(self, token: str, digest: bytes, *, source: str | None = None) -> VerifiedToken:
        """``source``: who the call counts against (``admission.request_source``); None: nobody."""
        icfg = self._icfg
        if not icfg.min_token_length <= len(token) <= icfg.max_token_length:
            # Cheaper than an AS call, and no genuine token looks like this (config: *_token_length).
            raise InvalidTokenError("the access token is not valid", reason="token_malformed")
        hit = self.positive.get(digest)
        negative = hit is None and digest in self.negative
        if self._on_cache is not None:
            self._on_cache(hit is not None or negative)
        if hit is not None:
            return hit
        if negative:
            raise InvalidTokenError("the access token is not active", reason="token_inactive")
        task = self._inflight.get(digest)
        if task is None and self.call_budget is not None:
            # rate_limits.source_budget.introspection_calls: shared by replicas (429 when spent).
            self._scans.check(source)
            await self.call_budget(source)
            task = self._inflight.get(digest)  # another request may have started it meanwhile
        if task is None:
            # A new call counts against its source until it ends; joining one in flight is free.
            self._scans.check(source)
            self._gate.reserve(source)
            task = asyncio.create_task(self._introspect_and_cache(token, digest))
            self._inflight[digest] = task
            task.add_done_callback(lambda t: self._finished(digest, t, source))
        # Shielded: one waiter going away must not cancel the call the others wait on.
        return await asyncio.shield(task)

    def _finished(self, digest: bytes, task: asyncio.Task[VerifiedToken], source: str | None) -> None:
        self._inflight.pop(digest, None)
        self._gate.unreserve(source)
        if not task.cancelled() and isinstance(task.exception(), InvalidTokenError):
            self._scans.inactive(source)  # task.exception() also marks it retrieved

    async def _introspect_and_cache(self, token: str, digest: bytes) -> VerifiedToken:
        # Shed here (IntrospectionBusyError) is not an AS outcome: outside the counted try.
        async with self._gate.slot():
            try:
                result = await self._call(token)
            except InvalidTokenError as exc:
                self._event("inactive")
                if self._icfg.negative_cache_ttl_s > 0:
                    self.negative[digest] = exc.reason
                raise
            except GatewayError:
                self._event("error")
                raise
        self._event("active")
        if self._icfg.cache_ttl_s > 0 and result.expires_at > self._clock():
            self.positive[digest] = result
        return result

    def _event(self, outcome: Literal["active", "inactive", "error"]) -> None:
        if self._on_call is not None:
            self._on_call(outcome)

    async def _endpoint(self) -> str:
        if self._icfg.endpoint is not None:
            return self._icfg.endpoint
        assert self._discovery is not None
        try:
            return await self._discovery.endpoint("introspection_endpoint")
        except FetchError as exc:
            log.warning("issuer %s: %s", self._cfg.name, exc)
            raise _unavailable("introspection_unavailable") from None

    def _client_auth(self) -> tuple[dict[str, str], dict[str, str]]:
        auth = self._icfg.client_auth
        headers: dict[str, str] = {}
        form: dict[str, str] = {}
        secret = auth.client_secret.get_secret_value() if auth.client_secret else ""
        if auth.method == "client_secret_basic":
            # RFC 6749 §2.3.1: both parts form-urlencoded before base64.
            pair = f"{quote_plus(auth.client_id)}:{quote_plus(secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        elif auth.method == "client_secret_post":
            form["client_id"] = auth.client_id
            form["client_secret"] = secret
        elif auth.method == "private_key_jwt":
            now = int(self._clock())
            assertion = jwt.encode(
                # FAPI 2.0 §5.3.2.1: the issuer identifier as audience; RFC 7523 §3 claims.
                {"iss": auth.client_id, "sub": auth.client_id, "aud": self._cfg.issuer,
                 "jti": str(uuid.uuid4()), "iat": now, "exp": now + 60},
                self._signing_key,
                algorithm=auth.private_key_alg,
                headers={"kid": auth.private_key_kid} if auth.private_key_kid else None,
            )
            form.update(client_id=auth.client_id, client_assertion_type=_ASSERTION_TYPE,
                        client_assertion=assertion)
        else:  # tls_client_auth: the certificate is in IssuerHttp's TLS context
            form["client_id"] = auth.client_id
        return headers, form

    async def _call(self, token: str) -> VerifiedToken:
        endpoint = await self._endpoint()
        try:
            headers, form = self._client_auth()
        except Exception:  # a signing failure is ours, not the client's: fail closed
            log.exception("issuer %s: building the client assertion failed", self._cfg.name)
            raise _unavailable("introspection_client_auth") from None
        jwt_mode = self._icfg.response == "jwt"
        headers["Accept"] = _JWT_RESPONSE_TYPE if jwt_mode else "application/json"
        form["token"] = token
        form["token_type_hint"] = "access_token"  # noqa: S105 - a hint name, not a secret
        self.call_count += 1
        try:
            status, ctype, body = await self._http.request(
                "POST", endpoint, headers=headers, data=form,
                max_bytes=_MAX_RESPONSE_BYTES, timeout_s=self._icfg.timeout_s,
            )
        except FetchError as exc:
            log.warning("issuer %s: introspection failed: %s", self._cfg.name, exc)
            raise _unavailable("introspection_unavailable") from None
        if status != 200:
            log.warning("issuer %s: introspection answered HTTP %d", self._cfg.name, status)
            raise _unavailable("introspection_http_error")
        response = await self._decode(ctype, body) if jwt_mode else self._decode_json(ctype, body)
        # RFC 7662 §2.2: active is a JSON boolean; "true", 1 or a missing member are not true.
        if response.get("active") is not True:
            if not isinstance(response.get("active"), bool):
                # An AS bug that makes every token inactive: worth an operator's attention.
                log.warning("issuer %s: introspection answered without a JSON boolean active member; "
                            "the token is taken as inactive", self._cfg.name)
            raise InvalidTokenError("the access token is not active", reason="token_inactive")
        now = self._clock()
        token_type = response.get("token_type")
        if isinstance(response.get("cnf"), dict) and "jkt" in response["cnf"] and (
            token_type is not None and str(token_type).lower() != "dpop"
        ):
            # RFC 9449 §6.2: a DPoP-bound token's token_type, when given, MUST be DPoP.
            raise InvalidTokenError(
                "the access token's type contradicts its binding", reason="token_type_mismatch"
            )
        return to_verified_token(
            response,
            issuer=self._cfg.issuer,
            source="introspection",
            now=now,
            leeway_s=self._cfg.leeway_s,
            required=(),
            require_exp=False,
            max_lifetime_s=self._cfg.max_lifetime_s,
            default_expiry=now + self._icfg.cache_ttl_s,
        )

    def _decode_json(self, ctype: str, body: bytes) -> Mapping[str, Any]:
        # Logged like every other AS failure (media type and size only: the body may echo the token).
        if ctype != "application/json":
            log.warning("issuer %s: introspection answered %r, not application/json", self._cfg.name, ctype[:64])
            raise _unavailable("introspection_bad_response")
        try:
            doc = loads_strict(body)
        except (ValueError, UnicodeError):
            log.warning("issuer %s: introspection answered a body that is not JSON (%d bytes)",
                        self._cfg.name, len(body))
            raise _unavailable("introspection_bad_response") from None
        if not isinstance(doc, dict):
            log.warning("issuer %s: introspection answered JSON that is not an object", self._cfg.name)
            raise _unavailable("introspection_bad_response")
        return doc

    async def _decode(self, ctype: str, body: bytes) -> Mapping[str, Any]:
        """RFC 9701 §5: verify the signed response; any defect is the AS's, so 503, not 401."""
        try:
            return await self._verify_jwt_response(ctype, body)
        except GatewayError as exc:
            log.warning("issuer %s: rejected signed introspection response (%s)", self._cfg.name, exc.reason)
            raise _unavailable("introspection_bad_response") from None

    async def _verify_jwt_response(self, ctype: str, body: bytes) -> Mapping[str, Any]:
        bad = InvalidTokenError("bad introspection response", reason="introspection_bad_response")
        if ctype != _JWT_RESPONSE_TYPE or self._keys is None:
            raise bad
        with contextlib.suppress(UnicodeError):
            text = body.decode("ascii").strip()
            if looks_like_jws(text):
                jws = parse_compact(text)
                typ, alg = jws.header.get("typ"), jws.header.get("alg")
                if (
                    isinstance(typ, str)
                    and typ.lower().removeprefix("application/") == "token-introspection+jwt"
                    and isinstance(alg, str)
                    and alg in self._cfg.algorithms
                ):
                    kid = jws.header.get("kid")
                    keys = await self._keys.keys_for(kid if isinstance(kid, str) else None, alg)
                    if any(verify_signature(jws, alg, k.key) for k in keys):
                        claims = jws.payload
                        aud = claims.get("aud")
                        auds = aud if isinstance(aud, list) else [aud]
                        inner = claims.get("token_introspection")
                        if (
                            claims.get("iss") == self._cfg.issuer
                            and self._icfg.client_auth.client_id in auds
                            and claims.get("iat") is not None
                            and isinstance(inner, dict)
                        ):
                            return inner
        raise bad
