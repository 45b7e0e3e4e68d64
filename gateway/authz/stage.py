"""The authz step: after the policy stage (audience, scopes, client, claims) has allowed the token
for the route, check that this request is inside what the token grants (issue #16).

Each rule of ``auth.authz`` that applies to the method runs in order: its
``authorization_details`` check (``rar``), its consent binding (``consent``), its expression
(``cel``); the first failing rule refuses with 403, by default ``insufficient_authorization_details``
(draft-zehavi-oauth-rar-metadata up to -04; RFC 9396 itself defines no resource-server error),
``insufficient_scope`` (RFC 6750 §3.1), or the draft's current signalling (-05/-06: 401
``insufficient_authorization`` with ``authorization_remediation``) when the route says so. The
description names the rule id, never a token value; the reason code ``authz_<rule id>`` goes to
metrics and the access log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ..config.authz import AuthzConfig, AuthzRule, RarCheck
from ..errors import (
    InsufficientAuthorizationDetailsError,
    InsufficientAuthorizationError,
    InsufficientScopeError,
    OAuthError,
)
from ..model import AuthRequest, Decision, VerifiedToken, b64url
from .cel import CompiledExpression, new_context
from .consent import consent_bound
from .rar import expected_values, grants
from .refs import ref_value

__all__ = ("authz_step", "check_authz", "refusal", "remediation_for")

# Absent: the request has no body or the route does not inspect it.
NO_BODY: Any = None


def refusal(authz: AuthzConfig, rule: AuthzRule, req: AuthRequest | None = None) -> OAuthError:
    description = f"the request is outside what the access token authorizes (rule {rule.id})"
    reason = f"authz_{rule.id}"
    if authz.error == "insufficient_scope":
        return InsufficientScopeError(description, reason=reason)
    if authz.error == "insufficient_authorization":
        remediation = remediation_for(rule, req) if req is not None else ""
        return InsufficientAuthorizationError(description, remediation=remediation, reason=reason)
    return InsufficientAuthorizationDetailsError(description, reason=reason)


# Larger remediations are left out (the header must stay within what proxies and clients accept).
MAX_REMEDIATION = 2048


def remediation_for(rule: AuthzRule, req: AuthRequest) -> str:
    """draft-zehavi-oauth-rar-metadata-06 §4.1 ``authorization_remediation``: base64url JSON with
    the ``authorization_details`` a new token needs for this request (from the rule's
    ``authorization_details`` check and the request's values: never the token's) and an
    ``authorization_reference`` (a hash of them, stable for equal details). Empty when the rule
    has no ``authorization_details`` check (a consent or CEL rule says nothing a client can ask
    for) or a request value is missing."""
    rar = rule.authorization_details
    if rar is None:
        return ""
    detail: dict[str, Any] = {"type": rar.types[0]}
    for name, values in (("actions", rar.actions), ("locations", rar.locations), ("datatypes", rar.datatypes)):
        if values:
            detail[name] = list(values)
    keys = (("identifier",) if rar.identifier is not None else ()) + tuple(f.field for f in rar.fields)
    for key, ref in zip(keys, rar.refs, strict=True):
        value = ref_value(ref, req)
        if value is None:
            return ""
        *parents, leaf = key.split(".")
        node = detail
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    details = [detail]
    canonical = json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    reference = b64url(hashlib.sha256(canonical).digest())[:22]
    body = json.dumps({"authorization_details": details, "authorization_reference": reference},
                      separators=(",", ":"), ensure_ascii=False).encode()
    encoded = b64url(body)
    return encoded if len(encoded) <= MAX_REMEDIATION else ""


async def authz_step(
    req: AuthRequest, decision: Decision, authz: AuthzConfig, route_id: str, body: object = NO_BODY
) -> None:
    """The pipeline step: read the JSON body first when a rule of the route inspects it."""
    if body is None and authz.body is not None and any(r.uses_body for r in authz.rules_for(req.method)):
        from .body import json_body

        body = await json_body(req, authz.body.max_bytes)
    check_authz(req, decision, authz, route_id, body)


def check_authz(
    req: AuthRequest, decision: Decision, authz: AuthzConfig, route_id: str, body: object = NO_BODY
) -> None:
    """Raise the route's authz refusal unless every rule for ``req.method`` holds.

    ``body``: the parsed JSON body for routes with ``authz.body`` (``None`` otherwise).
    """
    token = decision.token
    for rule in authz.rules_for(req.method):
        if token is None:
            raise refusal(authz, rule, req)  # cannot happen on an auth route; fail closed anyway
        rar = rule.authorization_details
        if rar is not None and not _rar_grants(rar, token, req):
            raise refusal(authz, rule, req)
        if rule.consent is not None and not consent_bound(rule.consent, token, req):
            raise refusal(authz, rule, req)
        compiled = rule.compiled
        if compiled is not None:
            if compiled.uses_body and not isinstance(body, dict):
                raise refusal(authz, rule, req)  # body rule without an inspected JSON object body
            if not _evaluate(compiled, req, decision, token, route_id, body):
                raise refusal(authz, rule, req)


# Bounded caches (FIFO eviction), keyed by the VerifiedToken object: the verifier hands out the
# same object for a cached token. Each entry keeps its token (and expression) alive, so an id() is
# never reused while its entry exists; the ``is`` checks make sure of it.
_MAX_CONTEXTS = 1024
_MAX_RESULTS = 8192
_contexts: dict[tuple[int, int], tuple[VerifiedToken, CompiledExpression, Any]] = {}
_results: dict[tuple[object, ...], tuple[VerifiedToken, CompiledExpression, bool]] = {}
_rar_results: dict[tuple[object, ...], tuple[VerifiedToken, RarCheck, bool]] = {}


def _bounded_put(cache: dict[Any, Any], key: object, value: object, limit: int) -> None:
    if len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = value


# Longer request values (paths, headers up to the listener's 8 KiB) are checked uncached: a cache
# of 8192 entries must not be able to hold 8192 such values per process.
_MAX_KEY_TEXT = 256


def _short_values(values: tuple[object, ...]) -> bool:
    return all(not isinstance(v, str) or len(v) <= _MAX_KEY_TEXT for v in values)


def _rar_grants(check: RarCheck, token: VerifiedToken, req: AuthRequest) -> bool:
    expected = expected_values(check, req)
    if not _short_values(expected):
        return grants(token.claims.get("authorization_details"), check, expected)
    key = (id(token), id(check), expected)
    hit = _rar_results.get(key)
    if hit is not None and hit[0] is token and hit[1] is check:
        return hit[2]
    result = grants(token.claims.get("authorization_details"), check, expected)
    _bounded_put(_rar_results, key, (token, check, result), _MAX_RESULTS)
    return result


def _evaluate(
    compiled: CompiledExpression, req: AuthRequest, decision: Decision, token: VerifiedToken, route_id: str,
    body: object,
) -> bool:
    key: tuple[object, ...] | None = None
    if compiled.cacheable and len(req.path) <= _MAX_KEY_TEXT:
        # Everything the variables can hold besides the token (client: the binding thumbprint
        # and the certificate; the token gives client_id and jkt).
        cert = req.peer_cert.x5t_s256 if req.peer_cert is not None else None
        key = (id(token), id(compiled), route_id, req.method, req.path, decision.binding.thumbprint, cert)
        hit = _results.get(key)
        if hit is not None and hit[0] is token and hit[1] is compiled:
            return hit[2]
    try:
        ctx_key = (id(token), id(compiled))
        entry = _contexts.get(ctx_key)
        if entry is None or entry[0] is not token or entry[1] is not compiled:
            entry = (token, compiled, new_context(_token_variable(token), compiled.token_names))
            _bounded_put(_contexts, ctx_key, entry, _MAX_CONTEXTS)
        ctx = entry[2]
        # Set and evaluated with no await in between: no other request can see these values.
        for name, value in _request_variables(compiled, req, decision, route_id, body).items():
            ctx.add_variable(name, value)
    except Exception:  # a value the library cannot convert: refused like any evaluation error
        return False
    result = compiled.allows(ctx)
    if key is not None:
        _bounded_put(_results, key, (token, compiled, result), _MAX_RESULTS)
    return result


def _token_variable(token: VerifiedToken) -> dict[str, Any]:
    claims: dict[str, Any] = dict(token.claims)
    claims.update(iss=token.issuer, aud=list(token.audience), scope=sorted(token.scopes))
    if token.client_id is not None:
        claims["client_id"] = token.client_id
    if token.subject is not None:
        claims["sub"] = token.subject
    return claims


def _request_variables(
    compiled: CompiledExpression, req: AuthRequest, decision: Decision, route_id: str, body: object
) -> Mapping[str, Any]:
    token = decision.token
    request: dict[str, Any] = {"method": req.method, "path": req.path, "params": dict(req.path_params)}
    if compiled.uses_headers:
        # Lower-case names; repeated headers joined as RFC 9110 §5.3 allows.
        headers: dict[str, str] = {}
        for name, value in req.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        request["headers"] = headers
    if compiled.uses_query:
        from urllib.parse import parse_qsl

        query: dict[str, str] = {}
        try:
            pairs = parse_qsl(req.query_string, keep_blank_values=True, max_num_fields=100)
        except ValueError:  # too many fields: no query variable, so the expression fails (closed)
            pairs = None
        if pairs is not None:
            for name, value in pairs:
                query.setdefault(name, value)  # the first value, as most frameworks read it
            request["query"] = query
    if compiled.uses_body:
        request["body"] = body
    binding = decision.binding
    cert = req.peer_cert.x5t_s256 if req.peer_cert is not None else None
    client = {
        "client_id": (token.client_id if token is not None else None) or "",
        "cert_thumbprint": cert or "",
        "jkt": (binding.thumbprint or "") if binding.type == "dpop" else "",
    }
    return {"request": request, "client": client, "route": {"id": route_id}}
