"""A route's ``auth.authz:`` block: fine-grained authorization after scopes (issue #16).

Every rule that applies to the request's method must hold; the first that does not refuses the
request with 403 and names the rule (``reason: authz_<id>`` in metrics and the access log).

    auth:
      ...
      authz:
        error: insufficient_authorization_details   # or insufficient_scope (RFC 6750 clients), or
                                                    # insufficient_authorization (draft -06: 401 +
                                                    # authorization_remediation)
        rules:
          - id: account_access
            methods: [GET]                          # default: every method of the route
            authorization_details:                  # RFC 9396: ONE entry must satisfy all of:
              types: [account_information]          #   type is one of these
              actions: [read]                       #   actions include all of these
              locations: [https://api.bank.example] #   locations include one of these
              datatypes: [balances]                 #   datatypes include all of these
              identifier: {path: account_id}        #   identifier == the path parameter
              fields:                               #   a named field (dotted; a list: contains)
                - {field: accounts, path: account_id}
            consent: {claim: openbanking_intent_id, header: x-consent-id}   # claim == header / path param
            expression: >-                          # CEL (gateway.authz.cel), must be true
              request.params.account_id in token.authorization_details.map(d, d.identifier)
        body: {max_bytes: 65536}                    # expose the JSON body to CEL as request.body

``path:`` names a template parameter of the route's ``match`` (``gateway.routing``); ``header:``
a request header that must be present exactly once. An expression is compiled here, at load, so a
syntax error, an unknown variable or an unknown function is a config error at its YAML line.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from .base import Model
from .paths import template_params

if TYPE_CHECKING:
    from ..authz.cel import CompiledExpression
    from .schema import RouteConfig

__all__ = ("AuthzConfig", "AuthzRule", "BodyInspection", "ConsentBinding", "FieldMatch", "RarCheck", "ValueRef",
           "check_authz")

_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_FIELD_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FIELD_PATH = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]{0,63}(?:\.[A-Za-z_$][A-Za-z0-9_$-]{0,63}){0,7}$")
# Rule ids become the refusal's reason code ``authz_<id>`` (a metrics label: [a-z0-9_]{1,48}).
RuleId = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,40}$")]
NonEmpty = Annotated[str, Field(min_length=1, max_length=512)]


def _one_or_many(value: object) -> object:
    return value if isinstance(value, list | tuple) else (value,)


def _method(value: str) -> str:
    if value not in _HTTP_METHODS:
        raise ValueError(f"{value!r} is not an upper-case HTTP method")
    return value


def _header(value: str) -> str:
    if not _FIELD_NAME.match(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value.lower()


def _field_path(value: str) -> str:
    if not _FIELD_PATH.match(value):
        raise ValueError(f"{value!r} is not a field name (dotted names, at most 8 levels)")
    return value


Strings = Annotated[tuple[NonEmpty, ...], BeforeValidator(_one_or_many)]


class ValueRef(Model):
    """Where the value a token field must equal comes from: a path parameter or a header."""

    path: str | None = None
    header: Annotated[str, AfterValidator(_header)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ValueRef:
        if (self.path is None) == (self.header is None):
            raise ValueError("set exactly one of path (a template parameter) or header")
        return self

    @property
    def label(self) -> str:
        return f"path parameter {self.path}" if self.path is not None else f"header {self.header}"


class FieldMatch(ValueRef):
    """A named field of the authorization_details entry (``accounts``, ``consentId``,
    ``creditorAccount.identification``): equal to the value, or a list containing it."""

    field: Annotated[str, AfterValidator(_field_path)]


class RarCheck(Model):
    """RFC 9396 §2: one ``authorization_details`` entry must satisfy every condition given."""

    types: Annotated[Strings, Field(min_length=1)]
    actions: Strings = ()
    locations: Strings = ()
    datatypes: Strings = ()
    identifier: ValueRef | None = None
    fields: tuple[FieldMatch, ...] = ()

    # Precomputed once per (frozen) config object, so nothing is rebuilt per request.
    @cached_property
    def type_set(self) -> frozenset[str]:
        return frozenset(self.types)

    @cached_property
    def action_set(self) -> frozenset[str]:
        return frozenset(self.actions)

    @cached_property
    def datatype_set(self) -> frozenset[str]:
        return frozenset(self.datatypes)

    @cached_property
    def location_set(self) -> frozenset[str]:
        return frozenset(self.locations)

    @cached_property
    def refs(self) -> tuple[ValueRef, ...]:
        """The request values compared: ``identifier`` first, then each of ``fields``."""
        return ((self.identifier,) if self.identifier is not None else ()) + self.fields


class ConsentBinding(ValueRef):
    """A consent / intent id claim (``consent_id``, ``openbanking_intent_id``) bound to the request."""

    claim: NonEmpty


def _expression(value: str) -> str:
    from ..authz.cel import compile_expression

    compile_expression(value)  # raises ValueError naming the problem: a config error at this line
    return value


class AuthzRule(Model):
    id: RuleId
    methods: tuple[Annotated[str, AfterValidator(_method)], ...] = ()
    authorization_details: RarCheck | None = None
    consent: ConsentBinding | None = None
    expression: Annotated[str, AfterValidator(_expression)] | None = None

    @model_validator(mode="after")
    def _something(self) -> AuthzRule:
        if self.authorization_details is None and self.consent is None and self.expression is None:
            raise ValueError("a rule needs at least one of authorization_details, consent or expression")
        return self

    def applies_to(self, method: str) -> bool:
        m = self.methods
        return not m or method in m or (method == "HEAD" and "GET" in m)

    @cached_property
    def compiled(self) -> CompiledExpression | None:
        """The expression, compiled once per (frozen) config object."""
        from ..authz.cel import compile_expression

        return compile_expression(self.expression) if self.expression is not None else None

    @cached_property
    def uses_body(self) -> bool:
        return self.compiled is not None and self.compiled.uses_body


class BodyInspection(Model):
    """Opt-in: the request body, when JSON, is read (at most ``max_bytes``) and given to CEL as
    ``request.body``. A body over the limit, not JSON, or not an object refuses the request."""

    max_bytes: Annotated[int, Field(ge=1, le=1024 * 1024)] = 64 * 1024


class AuthzConfig(Model):
    # draft-zehavi-oauth-rar-metadata-04 (the one issue #16 names): 403
    # insufficient_authorization_details. insufficient_scope: RFC 6750 §3.1, for clients that only
    # know RFC 6750. insufficient_authorization: the draft since -05, 401 with
    # authorization_remediation (the details to ask for, from the rule and the request).
    error: Literal["insufficient_authorization_details", "insufficient_scope", "insufficient_authorization"] = (
        "insufficient_authorization_details"
    )
    rules: Annotated[tuple[AuthzRule, ...], Field(min_length=1, max_length=64)]
    body: BodyInspection | None = None

    @model_validator(mode="after")
    def _unique_ids(self) -> AuthzConfig:
        seen: set[str] = set()
        for n, rule in enumerate(self.rules):
            if rule.id in seen:
                raise ValueError(f"rules[{n}].id: duplicate rule id {rule.id!r}")
            seen.add(rule.id)
        return self

    def rules_for(self, method: str) -> tuple[AuthzRule, ...]:
        found = self._by_method.get(method)
        if found is None:
            return tuple(r for r in self.rules if r.applies_to(method))
        return found

    @cached_property
    def _by_method(self) -> dict[str, tuple[AuthzRule, ...]]:
        return {m: tuple(r for r in self.rules if r.applies_to(m)) for m in _HTTP_METHODS}

    @cached_property
    def uses_body(self) -> bool:
        return any(r.uses_body for r in self.rules)


def _refs(rule: AuthzRule) -> list[tuple[str, ValueRef]]:
    out: list[tuple[str, ValueRef]] = []
    rar = rule.authorization_details
    if rar is not None:
        if rar.identifier is not None:
            out.append(("authorization_details.identifier", rar.identifier))
        out.extend((f"authorization_details.fields[{k}]", f) for k, f in enumerate(rar.fields))
    if rule.consent is not None:
        out.append(("consent", rule.consent))
    return out


def check_authz(where: str, route: RouteConfig, *, decision_fronts: bool) -> list[str]:
    """Cross-checks that need the route: ``path:`` references name a template parameter of its
    match; body rules need ``body:`` and cannot run on a decision front, which never sees bodies."""
    policy: Any = route.auth
    authz: AuthzConfig | None = getattr(policy, "authz", None)
    if authz is None:
        return []
    problems: list[str] = []
    base = f"{where}.auth.authz"
    template = route.match.path or route.match.path_prefix or ""
    params = template_params(template)
    methods = set(route.match.methods) or _HTTP_METHODS
    for n, rule in enumerate(authz.rules):
        for sub, ref in _refs(rule):
            if ref.path is not None and ref.path not in params:
                known = ", ".join(sorted(params)) or "none"
                problems.append(
                    f"{base}.rules[{n}].{sub}.path: {ref.path!r} is not a parameter of this route's match "
                    f"(parameters: {known})"
                )
        if rule.methods and not set(rule.methods) & (methods | ({"HEAD"} if "GET" in methods else set())):
            problems.append(f"{base}.rules[{n}].methods: none of them is matched by this route; the rule never applies")
        if rule.uses_body and authz.body is None:
            problems.append(
                f"{base}.rules[{n}].expression: reads request.body; opt in with {base}.body (bounded JSON inspection)"
            )
    if authz.body is not None and decision_fronts:
        problems.append(
            f"{base}.body: the decision fronts (decision.enabled) never see request bodies, so a body rule "
            "could not be enforced there; serve this route from the proxy only, or drop the body rule"
        )
    return problems
