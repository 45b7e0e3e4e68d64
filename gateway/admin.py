"""The admin listener: health, readiness and metrics, never on the public port.

And the revocation API (issue #13; runbook in the README), on this listener only:

    GET  /admin/revocation                          current denials (file and runtime)
    POST /admin/revocation/flush  {"issuer": N}     drop N's cached verifications, refetch its JWKS
    POST /admin/revocation/deny   {"issuer": N, "kid": K}            every token signed with key K
    POST /admin/revocation/deny   {"issuer": N, "jti": J, "ttl_s": T} one token (T default: config)
    POST /admin/revocation/allow  {"issuer": N, "kid"|"jti": ...}     withdraw a runtime denial
    GET  /admin/ratelimit/usage?limit=ID&client_id=...                usage of one key (issue #18)

Every call needs ``Authorization: Bearer <admin.token>`` (compared in constant time); without
``admin.token`` configured the API is disabled (403). Each call is audit-logged (logger
``gateway.audit``: action, issuer, kid/jti, peer address, result; never the secret).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from .challenge import ChallengeSettings, render_challenges
from .config.revocation import MAX_JTI_CHARS, MAX_KID_CHARS
from .errors import InvalidTokenError, MissingCredentialsError
from .strictjson import STRICT_JSON

if TYPE_CHECKING:
    from .ratelimit import RateLimiter
    from .revocation import Kind, Revocation

__all__ = ("Readiness", "build_admin_app")

audit = logging.getLogger("gateway.audit")

_MAX_BODY = 16 * 1024
_ADMIN_CHALLENGE = ChallengeSettings(schemes=("Bearer",), realm="gateway-admin")


class Readiness:
    """Ready means: config loaded, listeners up, and every registered check passing."""

    def __init__(self) -> None:
        self.listening = False
        self.draining = False
        self._checks: dict[str, Callable[[], bool]] = {}

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    def status(self) -> tuple[bool, dict[str, bool]]:
        results = {"listening": self.listening, "not_draining": not self.draining}
        for name, check in self._checks.items():
            try:
                results[name] = bool(check())
            except Exception:  # a broken check means not ready, never a crash
                results[name] = False
        return all(results.values()), results


class _Target(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    issuer: Annotated[str, Field(min_length=1, max_length=64)]
    kid: Annotated[str, Field(min_length=1, max_length=MAX_KID_CHARS)] | None = None
    jti: Annotated[str, Field(min_length=1, max_length=MAX_JTI_CHARS)] | None = None
    ttl_s: Annotated[float, Field(gt=0)] | None = None


def _json(status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(doc, status=status, headers={"Cache-Control": "no-store", **(headers or {})})


def _error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json(status, {"error": error, "error_description": description}, headers)


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _revocation_routes(
    app: web.Application, token: SecretStr | None, revocation: Callable[[], Revocation | None]
) -> None:
    from .revocation import DenyListFullError, RevocationStoreError, UnknownIssuerError

    secret = token.get_secret_value().encode() if token is not None else None

    def log_action(request: web.Request, action: str, result: str, **fields: Any) -> None:
        entry = {"event": "admin", "action": action, "result": result, "peer": request.remote, **fields}
        audit.info(json.dumps(entry, sort_keys=True))

    def authorized(request: web.Request, action: str) -> web.Response | None:
        if secret is None:
            log_action(request, action, "disabled")
            return _error(403, "admin_api_disabled",
                          "admin write operations are disabled: set admin.token to enable them")
        header = request.headers.get("Authorization")
        scheme, _, presented = (header or "").partition(" ")
        # Constant time; the scheme is case-insensitive (RFC 9110 §11.1).
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), secret):
            return None
        log_action(request, action, "unauthorized")
        err = MissingCredentialsError() if header is None else InvalidTokenError("admin token not accepted")
        return _error(401, "unauthorized", "admin token missing or not accepted",
                      {"WWW-Authenticate": render_challenges(err, _ADMIN_CHALLENGE)})

    async def target(request: web.Request) -> _Target:
        raw = await request.read()  # bounded by the app's client_max_size
        try:
            return _Target.model_validate(STRICT_JSON.decode(raw.decode("utf-8")))
        except (ValueError, UnicodeError, ValidationError) as exc:
            # The pydantic message names the field; the input is not echoed.
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            ) if isinstance(exc, ValidationError) else "not a JSON object"
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "invalid_request", "error_description": detail[:300]}),
                content_type="application/json",
            ) from None

    def current() -> Revocation:
        rev = revocation()
        if rev is None:
            raise web.HTTPServiceUnavailable(text='{"error": "not_ready"}', content_type="application/json")
        return rev

    async def run(request: web.Request, action: str, op: Callable[[Revocation, _Target], Awaitable[Any]],
                  fields: Callable[[_Target], dict[str, Any]]) -> web.Response:
        refused = authorized(request, action)
        if refused is not None:
            return refused
        tgt = await target(request)
        rev = current()
        logged = fields(tgt)
        if action in ("deny", "allow") and (tgt.kid is None) != (tgt.jti is None):
            action += "_kid" if tgt.kid is not None else "_jti"
        try:
            outcome = await op(rev, tgt)
        except UnknownIssuerError:
            log_action(request, action, "unknown_issuer", **logged)
            return _error(404, "unknown_issuer", "no issuer of that name in the running configuration")
        except DenyListFullError:
            log_action(request, action, "full", **logged)
            return _error(507, "deny_list_full",
                          "the deny list is full (revocation.max_denied_*); deny the key or flush instead")
        except RevocationStoreError:
            log_action(request, action, "local_only", **logged)
            return _error(503, "store_unavailable",
                          "Redis did not take the change: applied in this process only; retry")
        except ValueError as exc:
            log_action(request, action, "invalid", **logged)
            return _error(400, "invalid_request", str(exc))
        log_action(request, action, "ok", store=outcome.store, **logged)
        return _json(200, {"status": "ok", "store": outcome.store, **outcome.detail})

    def one_of(tgt: _Target) -> tuple[Kind, str]:
        if (tgt.kid is None) == (tgt.jti is None):
            raise ValueError("name exactly one of kid or jti")
        return ("kid", tgt.kid) if tgt.kid is not None else ("jti", tgt.jti or "")

    def described(tgt: _Target) -> dict[str, Any]:
        return {k: v for k, v in (("issuer", tgt.issuer), ("kid", tgt.kid), ("jti", tgt.jti)) if v is not None}

    async def flush(rev: Revocation, tgt: _Target) -> Any:
        if tgt.kid is not None or tgt.jti is not None or tgt.ttl_s is not None:
            raise ValueError("flush takes only issuer")
        return await rev.flush(tgt.issuer)

    async def deny(rev: Revocation, tgt: _Target) -> Any:
        kind, value = one_of(tgt)
        if tgt.ttl_s is not None and (kind == "kid" or tgt.ttl_s > rev.max_jti_ttl_s):
            raise ValueError(f"ttl_s: jti denials only, at most {rev.max_jti_ttl_s:g} (revocation.max_jti_ttl_s)")
        return await rev.deny(tgt.issuer, kind, value, tgt.ttl_s)

    async def allow(rev: Revocation, tgt: _Target) -> Any:
        kind, value = one_of(tgt)
        if tgt.ttl_s is not None:
            raise ValueError("allow takes no ttl_s")
        return await rev.allow(tgt.issuer, kind, value)

    async def flush_handler(request: web.Request) -> web.Response:
        return await run(request, "flush", flush, described)

    async def deny_handler(request: web.Request) -> web.Response:
        return await run(request, "deny", deny, described)

    async def allow_handler(request: web.Request) -> web.Response:
        return await run(request, "allow", allow, described)

    async def listing(request: web.Request) -> web.Response:
        refused = authorized(request, "list")
        if refused is not None:
            return refused
        log_action(request, "list", "ok")
        return _json(200, current().listing())

    app.router.add_get("/admin/revocation", listing)
    app.router.add_post("/admin/revocation/flush", flush_handler)
    app.router.add_post("/admin/revocation/deny", deny_handler)
    app.router.add_post("/admin/revocation/allow", allow_handler)


def _rate_limit_routes(
    app: web.Application, token: SecretStr | None, limiter: Callable[[], RateLimiter | None]
) -> None:
    """``GET /admin/ratelimit/usage?limit=<id>&<key part>=<value>...``: how much of a limit a key
    has left, read without consuming (support: "why is TPP X throttled?"). Key parts by name, e.g.
    ``client_id=tpp-1``; ``claim:<name>`` / ``header:<name>`` parts as written in the config.
    Needs the admin token: usage tells who calls how much."""
    from .ratelimit.store import LimitStoreUnavailableError

    secret = token.get_secret_value().encode() if token is not None else None

    async def usage(request: web.Request) -> web.Response:
        if secret is None:
            return _error(403, "admin_api_disabled", "the admin API is disabled: set admin.token to enable it")
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), secret)):
            return _error(401, "unauthorized", "admin token missing or not accepted",
                          {"WWW-Authenticate": render_challenges(MissingCredentialsError(), _ADMIN_CHALLENGE)})
        current = limiter()
        if current is None:
            return _error(404, "no_rate_limits", "the running configuration has no rate_limits")
        query = request.rel_url.query
        limit_id = query.get("limit", "")
        parts = {k: v[:256] for k, v in query.items() if k != "limit"}
        try:
            doc = await current.usage(limit_id, parts)
        except KeyError:
            return _error(404, "unknown_limit", "no limit of that id in the running configuration")
        except ValueError as exc:
            return _error(400, "invalid_request", str(exc))
        except LimitStoreUnavailableError:
            return _error(503, "store_unavailable", "the rate-limit store did not answer; retry")
        audit.info(json.dumps({"event": "admin", "action": "ratelimit_usage", "result": "ok",
                               "peer": request.remote, "limit": limit_id}, sort_keys=True))
        return _json(200, doc)

    app.router.add_get("/admin/ratelimit/usage", usage)


def build_admin_app(
    readiness: Readiness,
    render_metrics: Callable[[], bytes],
    *,
    token: SecretStr | None = None,
    revocation: Callable[[], Revocation | None] | None = None,
    rate_limits: Callable[[], RateLimiter | None] | None = None,
) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ok, checks = readiness.status()
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render_metrics(), content_type="text/plain", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    app = web.Application(client_max_size=_MAX_BODY)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if revocation is not None:
        _revocation_routes(app, token, revocation)
    if rate_limits is not None:
        _rate_limit_routes(app, token, rate_limits)
    return app
