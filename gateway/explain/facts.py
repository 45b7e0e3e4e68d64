"""What explain says about each step, in integrator terms (issue #19 §1). Commentary only: the
pass/fail of a step is what the gateway's own stage returned or raised (``core._Tap``); the
comparisons here (exp vs now, htu expected vs received, cnf vs proof key...) show why.

Never echoes a secret: a token or proof is shown as its decoded header and claims (read without
verification, for display) and its SHA-256; a proof's signature and nonce values are not shown.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import TYPE_CHECKING, Any

from ..bind.htu import compare_htu
from ..config import AuthPolicy, GatewayConfig, RouteConfig
from ..errors import GatewayError, OAuthError
from ..model import AuthRequest, Binding, Credentials, Decision, VerifiedToken, sha256_b64url

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

    from .capture import Captured
    from .core import Step

__all__ = ("authz_facts", "binding_facts", "credential_facts", "policy_facts", "request_facts", "route_facts",
           "token_facts")

OK, BAD, NOTE = "ok", "MISMATCH", ""


def _step(name: str, status: str, summary: str) -> Step:
    from .core import Step

    return Step(name, status, summary)


def refusal_text(exc: GatewayError) -> str:
    code = exc.error if isinstance(exc, OAuthError) and exc.error else f"{exc.status}"
    desc = f": {exc.description}" if exc.description else ""
    return f"{code} ({exc.reason}){desc}"


def when(ts: Any, now: float) -> str:
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return f"{ts!r} (not a number)"
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    delta = float(ts) - now
    return f"{iso} ({_duration(abs(delta))} {'from now' if delta >= 0 else 'ago'})"


def _duration(s: float) -> str:
    s = round(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m}m {sec}s" if h else (f"{m}m {sec}s" if m else f"{sec} s")


def _b64json(segment: str) -> dict[str, Any] | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def decode_jws(value: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Header and claims of a compact JWS, unverified (display only)."""
    parts = value.split(".")
    if len(parts) != 3:
        return None
    header, claims = _b64json(parts[0]), _b64json(parts[1])
    if header is None or claims is None:
        return None
    return header, claims


def jwk_thumbprint(jwk: Any) -> str | None:
    """RFC 7638 thumbprint of a public JWK (as ``cnf.jkt`` carries it)."""
    members = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    if not isinstance(jwk, dict) or jwk.get("kty") not in members:
        return None
    try:
        canonical = json.dumps({k: jwk[k] for k in members[jwk["kty"]]}, separators=(",", ":"), sort_keys=True)
    except KeyError:
        return None
    return sha256_b64url(canonical.encode())


def _short(value: str, limit: int = 96) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


# --- request and route ---------------------------------------------------------------------

def request_facts(
    state: Any, cfg: GatewayConfig, captured: Captured, view: Any, req: AuthRequest | None, trusted: bool,
    outcome: object, p: Any,
) -> Step:
    failed = isinstance(outcome, GatewayError) and p.t_auth is None and not _route_failure(outcome, p)
    status = "fail" if failed else "pass"
    summary = refusal_text(outcome) if failed and isinstance(outcome, GatewayError) else (
        f"{captured.method} {_short(captured.target)} on the {state.hosts.scheme} listener")
    step = _step("request", status, summary)
    host = view.headers.getall("Host", [])
    step.facts.append(("Host", ", ".join(host) if host else "(none)", NOTE if len(host) == 1 else BAD))
    step.facts.append(("client address", f"{view.remote or '(not given: --remote)'}; trusted proxy: "
                       f"{'yes' if trusted else 'no'}", NOTE))
    if trusted:
        for name in ("X-Forwarded-Host", "X-Forwarded-Proto"):
            if name in view.headers:
                step.facts.append((name, view.headers[name], NOTE))
    route = p.rt.route.config if p.rt is not None else None
    if req is not None:
        if route is not None and route.external_origin:
            how = f"routes[{_route_index(cfg, route)}].external_origin"
        elif cfg.listen.external_origin:
            how = "listen.external_origin"
        elif not req.url.startswith("/"):
            how = ("X-Forwarded-Proto/-Host from a trusted proxy" if trusted and "X-Forwarded-Host" in view.headers
                   else "the Host header") + " (checked against listen.allowed_hosts / the server certificate's names)"
        else:
            how = ("none: the Host's name or port (absent: the scheme's default) is not one this listener is "
                   "configured or certified for, so no proof can match; set listen.external_origin")
        shown = req.url if not req.url.startswith("/") else "(none trustworthy)"
        step.facts.append(("public URL (DPoP htu)", shown, NOTE if shown != "(none trustworthy)" else BAD))
        step.facts.append(("  derived from", how, NOTE))
    return step


def _route_failure(outcome: object, p: Any) -> bool:
    if not isinstance(outcome, GatewayError) or p.route_id is not None:
        return False
    return outcome.reason == "no_route" or (
        outcome.reason == "method_not_allowed" and "route" in outcome.description)


def _route_index(cfg: GatewayConfig, route: RouteConfig) -> int:
    return next(i for i, r in enumerate(cfg.routes) if r.id == route.id)


def route_facts(cfg: GatewayConfig, route: RouteConfig | None, captured: Captured, failure: object) -> Step:
    if route is None:
        if isinstance(failure, GatewayError) and _route_failure(failure, _NoRoute):
            step = _step("route", "fail", refusal_text(failure))
            path = captured.target.split("?", 1)[0]
            for r in cfg.routes:
                m = r.match
                where = f"path {m.path}" if m.path else f"path_prefix {m.path_prefix}"
                extra = f", host {m.host}" if m.host else ""
                extra += f", methods {','.join(m.methods)}" if m.methods else ""
                step.facts.append((f"route {r.id}", where + extra, NOTE))
            step.facts.append(("request path", path, NOTE))
            return step
        return _step("route", "skip", "not reached")
    m = route.match
    how = f"exact path {m.path}" if m.path else f"longest matching path_prefix {m.path_prefix}"
    step = _step("route", "pass", f"{route.id} (routes[{_route_index(cfg, route)}]): {how}")
    if m.host:
        step.facts.append(("host", m.host, OK))
    step.facts.append(("methods", ",".join(m.methods) or "any", OK))
    if isinstance(route.auth, AuthPolicy):
        a = route.auth
        step.facts.append(("auth", f"issuers {','.join(a.issuers)}; sender_constraint {a.sender_constraint}; "
                           f"enforcement {a.enforcement}", NOTE))
    return step


class _NoRoute:
    route_id = None


# --- credentials -----------------------------------------------------------------------------

def credential_facts(captured: Captured, headers: CIMultiDictProxy[str], result: object) -> Step:
    if isinstance(result, Credentials):
        proof = ", with a DPoP proof" if result.dpop_proof else ""
        step = _step("credentials", "pass", f"{result.scheme} scheme{proof}")
    elif isinstance(result, GatewayError):
        step = _step("credentials", "fail", refusal_text(result))
    else:
        step = _step("credentials", "skip", "not reached")
    auth = headers.getall("Authorization", [])
    step.facts.append(("Authorization headers", str(len(auth)), OK if len(auth) == 1 else BAD))
    for value in auth[:2]:
        scheme, _, token = value.partition(" ")
        step.facts.append(("  scheme", scheme or "(empty)", NOTE))
        if token.strip():
            value = token.strip()
            step.facts.append(("  token", f"{len(value)} characters, sha256 {sha256_b64url(value.encode())}", NOTE))
    proofs = headers.getall("DPoP", [])
    step.facts.append(("DPoP headers", str(len(proofs)), NOTE if len(proofs) <= 1 else BAD))
    return step


# --- token -----------------------------------------------------------------------------------

def token_facts(
    cfg: GatewayConfig, policy: AuthPolicy, results: dict[str, object], now: float, unavailable: frozenset[str]
) -> Step:
    creds = results.get("credentials")
    result = results.get("token")
    if not isinstance(creds, Credentials):
        return _step("token", "skip", "not reached")
    decoded = decode_jws(creds.token)
    by_iss = {i.issuer: i for i in cfg.issuers if i.name in policy.issuers}
    offline = False
    iss_cfg = None
    if decoded is not None:
        header, claims = decoded
        iss = claims.get("iss")
        iss_cfg = by_iss.get(iss) if isinstance(iss, str) else None
        offline = iss_cfg is not None and iss_cfg.name in unavailable
    else:
        offline = any(n in unavailable for n in policy.issuers)
    if isinstance(result, VerifiedToken):
        step = _step("token", "pass", f"genuine and live ({result.source}, issuer {result.issuer})")
    elif isinstance(result, GatewayError):
        if offline:
            names = ",".join(sorted(n for n in policy.issuers if n in unavailable))
            step = _step("token", "undetermined",
                         f"offline: issuer {names}'s keys or introspection need the network; rerun with --online "
                         f"or --jwks {names.split(',')[0]}=FILE (offline run said: {refusal_text(result)})")
        else:
            step = _step("token", "fail", refusal_text(result))
    else:
        step = _step("token", "skip", "not reached")
    step.facts.append(("sha256", sha256_b64url(creds.token.encode()), NOTE))
    if decoded is None:
        step.facts.append(("format", "opaque (not a JWS): introspected by the route's introspection issuers", NOTE))
        return step
    header, claims = decoded
    step.facts.append(("format", "JWT", NOTE))
    step.facts.append(("typ", repr(header.get("typ")), OK if str(header.get("typ", "")).lower() in
                       ("at+jwt", "application/at+jwt") else BAD))
    alg = header.get("alg")
    step.facts.append(("alg", repr(alg), (OK if alg in iss_cfg.algorithms else BAD) if iss_cfg else NOTE))
    step.facts.append(("kid", repr(header.get("kid")), NOTE))
    iss = claims.get("iss")
    step.facts.append(("iss", repr(iss), OK if iss_cfg else BAD))
    step.facts.append(("  route accepts", ", ".join(f"{i.name} = {i.issuer}" for i in by_iss.values()) or "(none)",
                       NOTE))
    leeway = iss_cfg.leeway_s if iss_cfg else 10.0
    if "exp" in claims:
        exp = claims["exp"]
        good = isinstance(exp, int | float) and not isinstance(exp, bool) and exp > now - leeway
        step.facts.append(("exp", when(exp, now) + f"; leeway {leeway:g} s", OK if good else BAD))
    else:
        step.facts.append(("exp", "(missing)", BAD))
    if "nbf" in claims:
        nbf = claims["nbf"]
        good = isinstance(nbf, int | float) and not isinstance(nbf, bool) and nbf <= now + leeway
        step.facts.append(("nbf", when(nbf, now), OK if good else BAD))
    if "iat" in claims:
        step.facts.append(("iat", when(claims["iat"], now), NOTE))
    step.facts.append(("now", when(now, now).split(" ")[0], NOTE))
    for name in ("sub", "client_id", "aud", "scope", "jti", "cnf"):
        if name in claims:
            step.facts.append((name, _short(json.dumps(claims[name])), NOTE))
    return step


# --- binding ---------------------------------------------------------------------------------

def binding_facts(
    cfg: GatewayConfig, policy: AuthPolicy, results: dict[str, object], req: AuthRequest | None,
    cert_der: bytes | None, now: float,
) -> Step:
    token = results.get("token")
    creds = results.get("credentials")
    result = results.get("binding")
    if isinstance(result, Binding):
        thumb = f" (thumbprint {result.thumbprint})" if result.thumbprint else ""
        step = _step("binding", "pass", f"{result.type}{thumb}")
    elif isinstance(result, GatewayError):
        step = _step("binding", "fail", refusal_text(result))
    else:
        step = _step("binding", "skip", "not reached")
    step.facts.append(("route sender_constraint", policy.sender_constraint, NOTE))
    cnf_jkt = token.cnf_jkt if isinstance(token, VerifiedToken) else None
    cnf_x5t = token.cnf_x5t_s256 if isinstance(token, VerifiedToken) else None
    if isinstance(token, VerifiedToken):
        step.facts.append(("token cnf.jkt", cnf_jkt or "(none: not DPoP-bound)", NOTE))
        step.facts.append(("token cnf.x5t#S256", cnf_x5t or "(none: not certificate-bound)", NOTE))
    cert_x5t = sha256_b64url(cert_der) if cert_der is not None else None
    if cert_der is not None:
        step.facts.extend(_certificate(cfg, cert_der, now))
    if cnf_x5t or cert_x5t:
        step.facts.append(("client certificate x5t#S256", cert_x5t or "(none presented: --cert PEM)",
                           (OK if cert_x5t == cnf_x5t else BAD) if cnf_x5t else NOTE))
    if isinstance(creds, Credentials) and creds.dpop_proof:
        _proof_facts(step, cfg, creds, cnf_jkt, req, now)
    return step


def _certificate(cfg: GatewayConfig, der: bytes, now: float) -> list[tuple[str, str, str]]:
    """The presented certificate: who, issued by whom, valid when. The chain itself is verified by
    the TLS handshake (not replayed here); a certificate whose issuer is not in client_ca is flagged."""
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return [("client certificate", "not a certificate", BAD)]
    out = [("client certificate", cert.subject.rfc4514_string(), NOTE)]
    anchors: set[str] = set()
    for path in cfg.listen.tls.client_ca if cfg.listen.tls is not None else ():
        try:
            with open(path, "rb") as fh:
                anchors.update(c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(fh.read()))
        except (OSError, ValueError):
            continue
    issuer = cert.issuer.rfc4514_string()
    known = issuer in anchors or cert.issuer == cert.subject
    out.append(("  issuer", issuer + ("" if known else "  (not a CA in listen.tls.client_ca: the handshake may "
                                                         "refuse it unless an intermediate is sent)"),
                NOTE if known else BAD))
    nb, na = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    out.append(("  valid", f"{when(nb, now)} to {when(na, now)}", OK if nb <= now <= na else BAD))
    return out


def _proof_facts(
    step: Step, cfg: GatewayConfig, creds: Credentials, cnf_jkt: str | None, req: AuthRequest | None, now: float
) -> None:
    assert creds.dpop_proof is not None
    step.facts.append(("proof sha256", sha256_b64url(creds.dpop_proof.encode()), NOTE))
    decoded = decode_jws(creds.dpop_proof)
    if decoded is None:
        step.facts.append(("proof", "not a compact JWS with JSON header and claims", BAD))
        return
    header, claims = decoded
    step.facts.append(("proof typ", repr(header.get("typ")), OK if str(header.get("typ", "")).lower().removeprefix(
        "application/") == "dpop+jwt" else BAD))
    alg = header.get("alg")
    step.facts.append(("proof alg", repr(alg), OK if alg in cfg.dpop.algorithms else BAD))
    jkt = jwk_thumbprint(header.get("jwk"))
    step.facts.append(("proof key thumbprint (jkt)", jkt or "(no usable jwk)",
                       (OK if jkt == cnf_jkt else BAD) if cnf_jkt else NOTE))
    htm = claims.get("htm")
    if req is not None:
        step.facts.append(("htm", f"{htm!r}, request method {req.method}", OK if htm == req.method else BAD))
        htu = claims.get("htu")
        if isinstance(htu, str):
            trusted_url = not req.url.startswith("/")
            problem = compare_htu(htu, req.url) if trusted_url else "no public URL could be trusted"
            step.facts.append(("htu", f"received {_short(htu)}", OK if problem is None else BAD))
            expected = req.url if trusted_url else "(none)"
            step.facts.append(("  expected", expected + (f"  ({problem})" if problem else ""), NOTE))
        else:
            step.facts.append(("htu", "(missing)", BAD))
    iat = claims.get("iat")
    if isinstance(iat, int | float) and not isinstance(iat, bool):
        age = now - iat
        ok = -cfg.dpop.iat_future_s <= age <= cfg.dpop.iat_past_s
        step.facts.append(("iat", f"{when(iat, now)}; accepted: {cfg.dpop.iat_past_s} s old to "
                           f"{cfg.dpop.iat_future_s} s ahead (a nonce extends it)", OK if ok else BAD))
    else:
        step.facts.append(("iat", "(missing)", BAD))
    ath = claims.get("ath")
    expected = sha256_b64url(creds.token.encode())
    step.facts.append(("ath", f"{ath!r}" if ath is not None else "(missing)", OK if ath == expected else BAD))
    step.facts.append(("jti", _short(repr(claims.get("jti")), 60) + "  (replay not checked here: explain's own store)",
                       NOTE))
    step.facts.append(("nonce", "present" if "nonce" in claims else "absent", NOTE))


# --- policy ----------------------------------------------------------------------------------

def policy_facts(policy: AuthPolicy, results: dict[str, object], method: str) -> Step:
    token = results.get("token")
    result = results.get("policy")
    if isinstance(result, Decision):
        step = _step("policy", "pass", "audience, scopes, client and claims as the route requires")
    elif isinstance(result, GatewayError):
        step = _step("policy", "fail", refusal_text(result))
    else:
        step = _step("policy", "skip", "not reached")
    if not isinstance(token, VerifiedToken):
        step.facts.append(("route audience", ", ".join(policy.audience), NOTE))
        return step
    step.facts.append(("aud", f"token {list(token.audience)} vs route {list(policy.audience)}",
                       BAD if policy.audience_set.isdisjoint(token.audience) else OK))
    required = policy.required_scopes(method)
    if required is None:
        step.facts.append(("scopes", f"no scope rule for {method} on this route: refused", BAD))
    else:
        missing = sorted(required - token.scopes)
        step.facts.append(("scopes", f"{method} needs {sorted(required) or 'none'}; token has {sorted(token.scopes)}"
                           + (f"; missing {missing}" if missing else ""), BAD if missing else OK))
    if policy.any_of:
        step.facts.append(("any_of", f"one of {list(policy.any_of)}",
                           BAD if policy.any_of_set.isdisjoint(token.scopes) else OK))
    if policy.client_ids:
        step.facts.append(("client_id", f"{token.client_id!r} vs allowed {list(policy.client_ids)}",
                           OK if token.client_id in policy.client_id_set else BAD))
    for claim, accepted in policy.required_claims.items():
        value = token.claims.get(claim)
        step.facts.append((f"claim {claim}", f"{_short(json.dumps(value))} vs accepted {list(accepted)}",
                           OK if value in accepted else BAD))
    return step


# --- authz (issue #16) ---------------------------------------------------------------------------

def authz_facts(policy: AuthPolicy, results: dict[str, object], method: str) -> Step:
    """The route's ``auth.authz`` rules: which apply to the method, and the one that refused."""
    from ..authz.report import rule_summary

    assert policy.authz is not None
    result = results.get("authz")
    if "authz" not in results:
        step = _step("authz", "skip", "not reached")
    elif isinstance(result, GatewayError):
        step = _step("authz", "fail", refusal_text(result))
    else:
        step = _step("authz", "pass", "every authz rule for this method holds")
    failed = result.reason if isinstance(result, GatewayError) else None
    for rule in policy.authz.rules_for(method):
        check = BAD if failed == f"authz_{rule.id}" else (OK if "authz" in results and failed is None else NOTE)
        step.facts.append((f"rule {rule.id}", "; ".join(rule_summary(rule)), check))
    return step
