"""``gateway check-config``: where each authz rule applies and what it reads (issue #16 item 6).

Every expression was already compiled and checked at load (syntax, variables, functions: a
problem is a config error with its YAML line); this lists, per route, the methods each rule runs
for and what it compares, so an operator can see the policy as the gateway will apply it.
"""

from __future__ import annotations

from typing import Any

from ..config import AuthPolicy, GatewayConfig, RouteConfig
from ..config.authz import AuthzRule
from ..config.paths import template_params

__all__ = ("describe_rules", "rule_summary")


_SAMPLE_PARAM = {"str": "x", "int": 1, "uuid": "00000000-0000-0000-0000-000000000000"}


def _type_problem(rule: AuthzRule, route: RouteConfig) -> str | None:
    """Evaluate the expression once on values of the variables' declared types (the token with its
    typed fields and an empty authorization_details): a CEL type error (``TypeError``: an operator
    or function applied to the wrong types, e.g. ``request.method + 1``) is reported. A missing
    field or index is not: real tokens and bodies have them."""
    compiled = rule.compiled
    if compiled is None:
        return None
    template = route.match.path or route.match.path_prefix or ""
    params = {name: _SAMPLE_PARAM[kind] for name, kind in template_params(template).items()}
    sample: dict[str, Any] = {
        "token": {"iss": "https://as.example", "sub": "s", "client_id": "c", "aud": ["a"], "scope": ["s"],
                  "authorization_details": []},
        "request": {"method": "GET", "path": template, "params": params, "headers": {}, "query": {}, "body": {}},
        "client": {"client_id": "c", "cert_thumbprint": "", "jkt": ""},
        "route": {"id": route.id},
    }
    try:
        compiled.program.execute(sample)
    except TypeError as exc:
        return str(exc).split(". ")[0]
    except Exception:  # anything else depends on real token or body contents
        return None
    return None


def _parts(rule: AuthzRule) -> list[str]:
    out = []
    rar = rule.authorization_details
    if rar is not None:
        what = [f"type in {list(rar.types)}"]
        if rar.actions:
            what.append(f"actions >= {list(rar.actions)}")
        if rar.datatypes:
            what.append(f"datatypes >= {list(rar.datatypes)}")
        if rar.locations:
            what.append(f"locations ∩ {list(rar.locations)}")
        if rar.identifier is not None:
            what.append(f"identifier == {rar.identifier.label}")
        what += [f"{f.field} == {f.label}" for f in rar.fields]
        out.append("authorization_details: one entry with " + ", ".join(what))
    if rule.consent is not None:
        out.append(f"consent: claim {rule.consent.claim} == {rule.consent.label}")
    compiled = rule.compiled
    if compiled is not None:
        reads = sorted({"token", "request", "client", "route"} & set(compiled.program.variables()))
        extra = [n for n, used in (("headers", compiled.uses_headers), ("query", compiled.uses_query),
                                   ("body", compiled.uses_body)) if used]
        cached = "cached per token and path" if compiled.cacheable else "evaluated per request"
        out.append(f"CEL reading {', '.join(reads)}{' (request ' + ', '.join(extra) + ')' if extra else ''}; "
                   f"{cached}")
    return out


def rule_summary(rule: AuthzRule) -> list[str]:
    """What a rule compares and reads, one line per part (``gateway explain`` shows them too)."""
    return _parts(rule)


def describe_rules(cfg: GatewayConfig) -> list[str]:
    lines: list[str] = []
    for route in cfg.routes:
        policy = route.auth
        if not isinstance(policy, AuthPolicy) or policy.authz is None:
            continue
        authz = policy.authz
        m = route.match
        body = f", body inspected up to {authz.body.max_bytes} bytes" if authz.body is not None else ""
        lines.append(f"  {route.id} ({m.path or m.path_prefix}): refusal 403 {authz.error}{body}")
        for rule in authz.rules:
            methods = ",".join(rule.methods) or ",".join(m.methods) or "every method"
            lines.append(f"    rule {rule.id} [{methods}] -> reason authz_{rule.id}")
            lines.extend(f"      {part}" for part in _parts(rule))
            problem = _type_problem(rule, route)
            if problem is not None:
                lines.append(f"      WARNING: type error on typed sample values: {problem}")
    if lines:
        lines.insert(0, "authz rules:")
    return lines
