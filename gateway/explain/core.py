"""``gateway explain``: why a captured request gets the answer it gets (issue #19 §1).

The verdict is the gateway's own: the state is built from the config by ``app.build_state`` and
the request goes through ``app.authorize`` (Host validation, canonical target, routing, header
checks, CORS, the htu origin, ``AuthPipeline.decide``) and ``app.refusal_response`` (the one
place that writes ``WWW-Authenticate``), exactly as the proxy and the decision fronts run them.
``app.StageOverrides`` only substitutes what must differ for a replay of a captured request:

* the clock (``--at``), read by every stage (token exp/nbf/iat, proof iat, nonces);
* a replay store of its own, whose memory began at the epoch: explaining a proof never consumes
  it in the shared store, and a proof is judged as if first seen (a replay cannot be seen here);
* no revocation sync (Redis), and offline (the default) no network: an issuer whose keys come
  from ``jwks_uri``/discovery, and introspection, need ``--online`` or ``--jwks NAME=FILE``;
* a tap around each stage that records what it received, returned or raised.

What explain adds is commentary in integrator terms (``gateway.explain.facts``): it never decides.
Secrets are never shown: a token or proof appears as its header, its claims and its SHA-256.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ..app import (
    Authorized,
    Progress,
    StageOverrides,
    authorize,
    build_state,
    check_method,
    error_response,
    refusal_response,
)
from ..bind.replay import MemoryReplayStore
from ..config import AuthPolicy, GatewayConfig
from ..errors import ClientCertificateRefusedError, ExpectationFailedError, GatewayError, InvalidTokenError
from ..model import AuthRequest, Binding, Credentials, Decision, PeerCertificate, VerifiedToken
from ..observability.metrics import Metrics
from ..proxy import interaction_id
from ..tls.checks import CertificateChecker, parse_cert_facts
from .capture import Captured
from .facts import (
    authz_facts,
    binding_facts,
    credential_facts,
    policy_facts,
    request_facts,
    route_facts,
    token_facts,
)

__all__ = ("Explanation", "Step", "explain", "offline_config")

STAGES = ("credentials", "token", "binding", "policy")


@dataclass(slots=True)
class Step:
    name: str
    status: str  # pass | fail | skip | undetermined | info
    summary: str
    facts: list[tuple[str, str, str]] = field(default_factory=list)  # (what, value, "ok"/"MISMATCH"/"")


@dataclass(slots=True)
class Explanation:
    request: str
    at: float
    at_given: bool
    steps: list[Step]
    # allow (forwarded) | refuse | would_refuse (report-only: forwarded) | answered (by the gateway
    # itself: preflight, OPTIONS Max-Forwards: 0) | undetermined (offline: keys/introspection needed)
    verdict: str
    status: int | None
    reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    route: str | None = None
    # Report-only routes: what enforcement would have answered.
    enforced: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "request": self.request,
            "at": self.at,
            "verdict": self.verdict,
            "route": self.route,
            "answer": {"status": self.status, "reason": self.reason, "headers": self.headers, "body": self.body},
            "enforced": self.enforced,
            "steps": [
                {"step": s.name, "status": s.status, "summary": s.summary,
                 "facts": [{"what": w, "value": v, "check": c or None} for w, v, c in s.facts]}
                for s in self.steps
            ],
        }


class _Tap:
    """Wraps each stage (same protocol) and records its input, result or refusal."""

    def __init__(self) -> None:
        self.req: AuthRequest | None = None
        self.results: dict[str, object] = {}

    def __call__(self, name: str, stage: Any) -> Any:
        tap = self
        if name == "credentials":
            def extract(req: AuthRequest, policy: AuthPolicy) -> Credentials:
                tap.req = req
                out: Credentials = tap._sync(name, stage, req, policy)
                return out
            return extract
        if name == "policy":
            def check(req: AuthRequest, token: VerifiedToken, binding: Binding, policy: AuthPolicy) -> Decision:
                out: Decision = tap._sync(name, stage, req, token, binding, policy)
                return out
            return check
        if name == "authz":
            async def authz(req: AuthRequest, decision: Decision, cfg: Any, route_id: str, body: object = None) -> None:
                await tap._async(name, stage(req, decision, cfg, route_id, body))
            return authz
        if name == "token":
            class Tokens:
                async def verify(self, token: str, policy: AuthPolicy, *, source: str | None = None) -> VerifiedToken:
                    out: VerifiedToken = await tap._async(name, stage.verify(token, policy, source=source))
                    return out
            return Tokens()

        class Binder:
            async def check(self, req: AuthRequest, creds: Credentials, token: VerifiedToken,
                            policy: AuthPolicy) -> Binding:
                out: Binding = await tap._async(name, stage.check(req, creds, token, policy))
                return out
        return Binder()

    def _sync(self, name: str, fn: Callable[..., Any], *args: object) -> Any:
        try:
            out = fn(*args)
        except GatewayError as exc:
            self.results[name] = exc
            raise
        self.results[name] = out
        return out

    async def _async(self, name: str, coro: Any) -> Any:
        try:
            out = await coro
        except GatewayError as exc:
            self.results[name] = exc
            raise
        self.results[name] = out
        return out


class _Transport(asyncio.BaseTransport):
    """Stands for the listener connection: only its port is asked for (a Host port must be ours)."""

    def __init__(self, port: int | None) -> None:
        super().__init__({"sockname": ("127.0.0.1", port)} if port else {})


@dataclass(frozen=True, slots=True)
class _View:
    """The captured request as ``app.RequestView``."""

    method: str
    headers: CIMultiDictProxy[str]
    remote: str | None
    transport: asyncio.BaseTransport | None
    raw_path: str
    query_string: str
    path: str


def offline_config(cfg: GatewayConfig, jwks: dict[str, str], online: bool) -> tuple[GatewayConfig, frozenset[str]]:
    """``cfg`` with key sources replaced by ``--jwks`` files and, offline, every network source of
    an issuer removed (its keys, discovery, introspection); the names of the issuers removed."""
    issuers = []
    unavailable: set[str] = set()
    for iss in cfg.issuers:
        if iss.name in jwks:
            iss = iss.model_copy(update={"jwks_file": jwks[iss.name], "jwks_uri": None, "discovery": False})
        elif not online and (iss.jwks_uri or iss.discovery or iss.introspection is not None):
            if iss.jwks_uri or iss.discovery or iss.mode == "introspection":
                unavailable.add(iss.name)
            iss = iss.model_copy(update={"jwks_uri": None, "discovery": False, "introspection": None})
        issuers.append(iss)
    return cfg.model_copy(update={"issuers": tuple(issuers)}), frozenset(unavailable)


async def explain(
    cfg: GatewayConfig,
    captured: Captured,
    *,
    cert_pem: bytes | None = None,
    at: float | None = None,
    online: bool = False,
    jwks: dict[str, str] | None = None,
    port: int | None = None,
    remote: str | None = None,
) -> Explanation:
    now = at if at is not None else time.time()
    run_cfg, unavailable = offline_config(cfg, jwks or {}, online)
    tap = _Tap()
    replay = MemoryReplayStore(max_entries=cfg.dpop.replay.max_entries, began=0.0)
    state = build_state(run_cfg, Metrics(), overrides=StageOverrides(
        clock=lambda: now, replay=replay, revocation_sync=False, rate_limits=False, tap=tap))
    await state.start()
    try:
        return await _run(state, cfg, captured, tap, now, at is not None, unavailable, cert_pem,
                          port if port is not None else cfg.listen.port, remote)
    finally:
        await state.close()


def _headers(captured: Captured) -> CIMultiDictProxy[str]:
    out = CIMultiDict[str]()
    for name, value in captured.headers:
        out.add(name, value)
    return CIMultiDictProxy(out)


async def _run(
    state: Any, cfg: GatewayConfig, captured: Captured, tap: _Tap, now: float, at_given: bool,
    unavailable: frozenset[str], cert_pem: bytes | None, port: int | None, remote: str | None,
) -> Explanation:
    headers = _headers(captured)
    raw_path = captured.target
    path, _, query = raw_path.partition("?")
    view = _View(captured.method, headers, remote, _Transport(port), raw_path, query, path)
    cert_der: bytes | None = None
    steps: list[Step] = []
    if cert_pem:
        import ssl

        cert_der = ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii", "replace"))

    front = state.client_certs.front
    shown_der = cert_der  # the certificate the facts describe (the client's, not a front proxy's)

    certs = cfg.client_certs
    # The listener's checker (ClientCertificates.checker) with the same settings and CRLs, on the
    # explained time: a certificate is judged by the dates of --at.
    checker = CertificateChecker(
        crl=state.client_certs.crl, max_chain_depth=certs.max_chain_depth,
        require_client_auth_usage=certs.require_client_auth_usage, on_stale_crl=certs.on_stale_crl,
        clock=lambda: now,
    )

    def peer(authenticates: bool) -> PeerCertificate | None:
        nonlocal shown_der
        try:
            # As ClientCertificates.peer_certificate: our handshake's certificate, unless it (and the
            # address) is a trusted front proxy's, whose certificate header then names the client.
            tls = parse_cert_facts(cert_der, ca_depth=None, source="tls") if cert_der is not None else None
            if front is not None and front.is_trusted(remote, tls):
                if tls is not None:
                    checker.check(tls)
                facts = front.certificate(headers)
                shown_der = facts.peer.der if facts is not None else None
                return checker.check(facts) if facts is not None else None
            # The checks the listener applies after its handshake (dates, usage, depth, CRL); the
            # chain itself is the handshake's job and is not re-verified here.
            return checker.check(tls) if tls is not None else None
        except InvalidTokenError as exc:
            if authenticates:
                raise
            raise ClientCertificateRefusedError(exc.description, reason=exc.reason) from None

    p = Progress()
    fapi_id = interaction_id(headers)
    trusted = state.is_trusted(remote)
    outcome: Authorized | web.Response | GatewayError
    try:
        check_method(captured.method)
        expect = headers.get("Expect")
        if expect is not None and expect.lower() != "100-continue":
            raise ExpectationFailedError("unsupported Expect")
        outcome = await authorize(state, view, p, fapi_id, trusted=trusted, peer_cert=peer,
                                  scheme=state.hosts.scheme, sni=None)
    except GatewayError as exc:
        outcome = exc
    except Exception as exc:  # a bug, as the live handler answers it: 500, no detail to the client
        outcome = GatewayError("internal error")
        steps.append(Step("internal", "fail", f"internal error: {type(exc).__name__} (a bug: please report it)"))

    steps.append(request_facts(state, cfg, captured, view, tap.req, trusted, outcome, p))
    route_cfg = p.rt.route.config if p.rt is not None else None
    steps.append(route_facts(cfg, route_cfg, captured, outcome if p.rt is None else None))
    policy = route_cfg.auth if route_cfg is not None else None
    if route_cfg is not None and isinstance(policy, AuthPolicy) and p.t_auth is not None:
        steps.append(credential_facts(captured, headers, tap.results.get("credentials")))
        steps.append(token_facts(cfg, policy, tap.results, now, unavailable))
        steps.append(binding_facts(cfg, policy, tap.results, tap.req, shown_der, now))
        steps.append(policy_facts(policy, tap.results, captured.method))
        if policy.authz is not None:  # issue #16: RAR, consent and CEL rules after the policy
            steps.append(authz_facts(policy, tap.results, captured.method))
    elif route_cfg is not None and not isinstance(policy, AuthPolicy):
        steps.append(Step("auth", "pass", "auth: none on this route: no token is required"))

    request = f"{captured.method} {captured.target} ({captured.fmt})"
    exp = Explanation(request, now, at_given, steps, "allow", None, route=p.route_id)
    if isinstance(outcome, GatewayError):
        _answer(exp, refusal_response(outcome, p, fapi_id), outcome.reason)
        exp.verdict = "refuse"
    elif isinstance(outcome, web.Response):
        _answer(exp, outcome, None)
        exp.verdict = "answered"
    else:
        decision = outcome.decision
        if decision.would_refuse is not None:
            exp.verdict = "would_refuse"
            exp.reason = decision.would_refuse
            exp.headers = dict(decision.response_headers)
            exp.headers["upstream: X-Auth-Would-Refuse"] = decision.would_refuse
            refused = next((r for r in tap.results.values() if isinstance(r, GatewayError)), None)
            if refused is not None:
                enforced = error_response(refused, p.challenge, fapi_id)
                exp.enforced = {"status": enforced.status, "headers": _shown(enforced)}
        else:
            exp.headers = {f"upstream: {k}": v for k, v in decision.upstream_headers}
            exp.headers.update(dict(decision.response_headers))
    if any(s.status == "undetermined" for s in steps):
        # The offline run's answer is not the gateway's: no answer rather than a made-up one.
        exp.verdict, exp.status, exp.reason, exp.enforced = "undetermined", None, None, None
        exp.headers, exp.body = {}, {}
    return exp


_SHOWN = ("WWW-Authenticate", "DPoP-Nonce", "Retry-After", "X-Auth-Debug-Reason", "Allow")


def _shown(resp: web.Response) -> dict[str, str]:
    return {name: resp.headers[name] for name in _SHOWN if name in resp.headers}


def _answer(exp: Explanation, resp: web.Response, reason: str | None) -> None:
    exp.status = resp.status
    exp.reason = reason
    exp.headers = _shown(resp)
    body = resp.body if isinstance(resp.body, bytes) else b""
    try:
        exp.body = json.loads(body) if body else {}
    except ValueError:
        exp.body = {}
