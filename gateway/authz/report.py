"""``gateway check-config``: where each authz rule applies and what it reads (issue #16 item 6).

Every expression was already compiled and checked at load (syntax, variables, functions: a
problem is a config error with its YAML line); this lists, per route, the methods each rule runs
for and what it compares, so an operator can see the policy as the gateway will apply it.
"""

from __future__ import annotations

from ..config import AuthPolicy, GatewayConfig
from ..config.authz import AuthzRule

__all__ = ("describe_rules",)


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
    if lines:
        lines.insert(0, "authz rules:")
    return lines
