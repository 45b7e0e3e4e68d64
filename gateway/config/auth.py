"""A route's ``auth:`` block: which tokens it accepts and what they must allow.

``auth: none`` must be written out to switch auth off on a route (default deny).

    auth:
      issuers: [bank-as]
      audience: https://api.bank.example          # one or a list; aud must contain one of them
      scopes: [accounts]                          # all required (RFC 6749 §3.3 tokens, case-sensitive)
      any_of: [payments:write, payments:admin]    # optionally: at least one of these too
      method_scopes: {POST: [payments:write]}     # per-method override of ``scopes``; without
                                                  # ``scopes`` every matched method needs a rule
      client_ids: [tpp-1]                         # optional allowlist of the token's client_id
      required_claims: {acr: [urn:bank:sca]}      # optional claim values (one of the listed)
      sender_constraint: dpop                     # dpop | mtls | any | none
      require_dpop_nonce: false                   # true: proofs must carry a DPoP server nonce
      introspect: always                          # also introspect JWTs (revocation within the
                                                  # introspection cache TTL); default: auto
      enforcement: enforce                        # enforce | report: report runs the whole decision
                                                  # but forwards what it would refuse (issue #19;
                                                  # a risk: refused under the fapi TLS profile)
      debug_reason_header: false                  # sandboxes: X-Auth-Debug-Reason on refusals
      authz: {rules: [...]}                       # RFC 9396 details, consent binding, CEL (config/authz.py)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cached_property
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from .authz import AuthzConfig
from .base import Model

SenderConstraint = Literal["dpop", "mtls", "any", "none"]

_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# RFC 6749 §3.3 scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
# RFC 9110 §5.1 field-name (token)
_FIELD_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _one_or_many(value: object) -> object:
    return value if isinstance(value, list | tuple) else (value,)


def _scope(value: str) -> str:
    if not _SCOPE_TOKEN.match(value):
        raise ValueError(f"{value!r} is not a scope token (RFC 6749 §3.3: no spaces, quotes or backslashes)")
    return value


def _header_name(value: str | None) -> str | None:
    if value is not None and not _FIELD_NAME.match(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


Scope = Annotated[str, AfterValidator(_scope)]
Scopes = Annotated[tuple[Scope, ...], BeforeValidator(_one_or_many)]
HeaderName = Annotated[str | None, AfterValidator(_header_name)]
ClaimValue = str | int | bool


class IdentityHeaders(Model):
    """Names of the headers that carry verified facts to the upstream; ``null`` switches one off.

    Any client-sent header with one of these names is removed before forwarding.
    """

    subject: HeaderName = "X-Auth-Subject"
    client_id: HeaderName = "X-Auth-Client-Id"
    scope: HeaderName = "X-Auth-Scope"
    issuer: HeaderName = "X-Auth-Issuer"
    binding: HeaderName = "X-Auth-Binding"
    thumbprint: HeaderName = "X-Auth-Cnf-Thumbprint"
    jti: HeaderName = "X-Auth-Token-Id"

    @property
    def names(self) -> tuple[str, ...]:
        values = (
            self.subject, self.client_id, self.scope, self.issuer, self.binding, self.thumbprint, self.jti
        )
        return tuple(v for v in values if v)


class AuthPolicy(Model):
    issuers: Annotated[tuple[str, ...], BeforeValidator(_one_or_many)] = ()
    sender_constraint: SenderConstraint = "any"
    # RFC 9068 §4 / RFC 9700 §2.3: aud must contain one of these, exactly.
    audience: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], BeforeValidator(_one_or_many)] = ()
    scopes: Scopes = ()
    any_of: Scopes = ()
    method_scopes: dict[str, Scopes] = {}
    client_ids: Annotated[tuple[str, ...], BeforeValidator(_one_or_many)] = ()
    required_claims: dict[str, Annotated[tuple[ClaimValue, ...], BeforeValidator(_one_or_many)]] = {}
    realm: str | None = None
    identity_headers: IdentityHeaders = IdentityHeaders()
    # RFC 9449 §9: every DPoP proof on this route must carry a server nonce (needs dpop.nonce).
    require_dpop_nonce: bool = False
    # ``auto``: JWTs are verified locally, other tokens introspected. ``always``: a JWT is also
    # introspected (after local verification; both must agree), so a revoked JWT stops here within
    # the issuer's introspection cache TTL (issue #13). Every issuer of the route needs introspection.
    introspect: Literal["auto", "always"] = "auto"
    # ``report`` (issue #19, gateway.report): the decision runs in full, a refusal is counted,
    # logged and forwarded with X-Auth-Would-Refuse; a DPoP replay is refused all the same.
    enforcement: Literal["enforce", "report"] = "enforce"
    # Sandboxes: the refusal's reason code in an X-Auth-Debug-Reason response header.
    debug_reason_header: bool = False
    # Fine-grained authorization after scopes (issue #16, gateway.authz).
    authz: AuthzConfig | None = None

    @model_validator(mode="after")
    def _complete(self) -> AuthPolicy:
        if not self.issuers:
            raise ValueError("issuers: name at least one entry of issuers: whose tokens are accepted")
        if not self.audience:
            raise ValueError(
                "audience: required (the identifier this resource server expects in aud; RFC 9068 §4)"
            )
        for method, scopes in self.method_scopes.items():
            if method.upper() not in _HTTP_METHODS or method != method.upper():
                raise ValueError(f"method_scopes: {method!r} is not an upper-case HTTP method")
            if not scopes:
                raise ValueError(f"method_scopes.{method}: list at least one scope")
        for claim, values in self.required_claims.items():
            if claim in ("aud", "scope", "client_id", "iss"):
                raise ValueError(f"required_claims.{claim}: use audience/scopes/client_ids/issuers instead")
            if not values:
                raise ValueError(f"required_claims.{claim}: list at least one accepted value")
        return self

    # Precomputed once per (frozen) policy object, so nothing is rebuilt per request.
    @cached_property
    def audience_set(self) -> frozenset[str]:
        return frozenset(self.audience)

    @cached_property
    def client_id_set(self) -> frozenset[str]:
        return frozenset(self.client_ids)

    @cached_property
    def _scopes_by_method(self) -> dict[str, frozenset[str]]:
        out = {m: frozenset(s) for m, s in self.method_scopes.items()}
        # HEAD is a GET without a body: it needs what GET needs unless configured.
        if "GET" in out and "HEAD" not in out:
            out["HEAD"] = out["GET"]
        return out

    def required_scopes(self, method: str) -> frozenset[str] | None:
        """The scopes ``method`` needs; ``None``: no rule for it, so it is refused (fail closed)."""
        found = self._scopes_by_method.get(method)
        return found if found is not None else self._default_scopes

    @cached_property
    def _default_scopes(self) -> frozenset[str] | None:
        # method_scopes without scopes: a method with no rule must not pass on no scope. Written
        # out, ``scopes: []`` is the deliberate "other methods need none".
        if self.method_scopes and "scopes" not in self.model_fields_set:
            return None
        return frozenset(self.scopes)

    def methods_without_rule(self, methods: Iterable[str]) -> list[str]:
        """Which of ``methods`` (a route's, or every method) this policy has no scope rule for."""
        return sorted(m for m in set(methods) if self.required_scopes(m) is None)

    @cached_property
    def any_of_set(self) -> frozenset[str]:
        return frozenset(self.any_of)
