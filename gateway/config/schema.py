"""The configuration file, as typed, immutable objects.

Pass 1 (this module, pydantic): shapes, types, ranges. Pass 2 (``GatewayConfig`` model validator):
cross-references (route -> upstream, route -> issuer) and conflicts (routes that can never match).
Each section lives in its own module so each pipeline stage owns its settings.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Discriminator, Field, SecretStr, Tag, model_validator

from .auth import AuthPolicy
from .authz import check_authz
from .base import Cidr, FilePath, Model
from .decision import DecisionConfig
from .dpop import DpopConfig, check_workers
from .issuers import IssuerConfig
from .lifecycle import LifecycleConfig
from .listener import ListenerLimits
from .mtls import ClientCertConfig
from .observability import ObservabilityConfig
from .paths import HostEntry, HostName, PathConfig, RoutePath, check_origin_authority, template_shape
from .proxy import ProxyConfig
from .ratelimit import RateLimitsConfig, check_rate_limits
from .revocation import RevocationConfig, check_deny_entries, check_introspect_always
from .risks import RiskId, unacknowledged_refusals
from .signatures import ClientConfig, HttpSignaturesConfig, RouteSignatures, check_signatures

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not a URL (expected http://host[:port][/path] or https://...)")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    return value.rstrip("/")


def upstream_reference_problem(value: str) -> str | None:
    """Why a route's ``upstream`` that is not a name under ``upstreams:`` is no URL either."""
    try:
        _http_url(value)
    except ValueError as exc:
        if "://" in value:  # meant as a URL: say what is wrong with it
            return f"{value!r}: {exc}"
        return f"{value!r} is neither a name under upstreams: nor a URL"
    return None


def _origin(value: str) -> str:
    url = _http_url(value)
    parts = urlsplit(url)
    if parts.path not in ("", "/"):
        raise ValueError("must be an origin (scheme://host[:port]) without a path")
    check_origin_authority(parts.netloc)  # Host is compared with it (gateway.origin)
    return url


HttpUrl = Annotated[str, AfterValidator(_http_url)]
Origin = Annotated[str, AfterValidator(_origin)]
Port = Annotated[int, Field(ge=0, le=65535)]


class ListenerTls(Model):
    cert: FilePath
    key: FilePath
    # Trust anchors for client certificates (one bundle per directory, e.g. per Open Banking directory).
    client_ca: tuple[FilePath, ...] = ()
    client_auth: Literal["required", "optional", "none"] = "optional"
    min_version: Literal["1.2", "1.3"] = "1.2"
    # fapi: TLS 1.2 limited to the suites every FAPI edition and BCP 195 allow; TLS 1.3 allowed.
    profile: Literal["fapi", "default"] = "fapi"

    @model_validator(mode="after")
    def _needs_ca(self) -> ListenerTls:
        if self.client_auth != "none" and not self.client_ca:
            raise ValueError(f"client_auth: {self.client_auth} needs at least one client_ca bundle")
        return self


DecisionConfig.model_rebuild(_types_namespace={"ListenerTls": ListenerTls})


class Listen(Model):
    host: str = "0.0.0.0"  # noqa: S104 - a gateway listens on all interfaces by default
    port: Port = 8443
    # None means plain HTTP: only for a sidecar behind a TLS-terminating front proxy.
    tls: ListenerTls | None = None
    # The origin clients use (what they sign as DPoP htu). Default: derived from host and port.
    external_origin: Origin | None = None
    # Peers allowed to set X-Forwarded-* / client-certificate headers.
    trusted_proxies: tuple[Cidr, ...] = ()
    # Host values accepted besides the external origins' (``name`` or ``name:port``); without an
    # external origin, the DPoP htu is built from a Host on this list.
    allowed_hosts: tuple[HostEntry, ...] = ()
    # Slow-client deadlines and the connection cap (config/listener.py).
    limits: ListenerLimits = ListenerLimits()


class Admin(Model):
    host: str = "127.0.0.1"
    port: Port = 8442  # not 9090: that is Prometheus's own default port
    # Bearer secret for the admin API's write operations (revocation); unset: they are disabled.
    token: Annotated[SecretStr, Field(min_length=32)] | None = None


class Timeouts(Model):
    connect_s: Annotated[float, Field(gt=0)] = 5.0
    read_s: Annotated[float, Field(gt=0)] = 30.0
    total_s: Annotated[float, Field(gt=0)] | None = None
    # Idle keep-alive connections are closed after this long; below the 5 s many upstream servers
    # (Node, Express) use, so the gateway rarely reuses a connection the upstream is closing.
    idle_s: Annotated[float, Field(gt=0)] = 4.0


class UpstreamConfig(Model):
    url: HttpUrl
    ca: FilePath | None = None
    client_cert: FilePath | None = None
    client_key: FilePath | None = None
    timeouts: Timeouts = Timeouts()
    pool_size: Annotated[int, Field(ge=1, le=10000)] = 100

    @model_validator(mode="after")
    def _cert_pair(self) -> UpstreamConfig:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        if self.ca and not self.url.startswith("https://"):
            raise ValueError("ca is set but url is not https://")
        return self


def _method(value: str) -> str:
    up = value.upper()
    if up not in HTTP_METHODS:
        raise ValueError(f"unknown HTTP method {value!r}")
    return up


class RouteMatch(Model):
    path_prefix: RoutePath | None = None
    path: RoutePath | None = None
    host: HostName | None = None
    methods: tuple[Annotated[str, AfterValidator(_method)], ...] = ()

    @model_validator(mode="after")
    def _one_path(self) -> RouteMatch:
        if (self.path_prefix is None) == (self.path is None):
            raise ValueError("set exactly one of path_prefix or path")
        return self


class CorsConfig(Model):
    """Browser access to a route (``DPoP``, ``DPoP-Nonce`` and ``WWW-Authenticate`` always included)."""

    allowed_origins: Annotated[tuple[str, ...], Field(min_length=1)]
    allowed_methods: tuple[Annotated[str, AfterValidator(_method)], ...] = ()
    allowed_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age_s: Annotated[int, Field(ge=0, le=86400)] = 600
    allow_credentials: bool = False

    @model_validator(mode="after")
    def _origins(self) -> CorsConfig:
        for origin in self.allowed_origins:
            if origin != "*":
                _origin(origin)
        if self.allow_credentials and "*" in self.allowed_origins:
            raise ValueError("allow_credentials cannot be combined with allowed_origins: ['*']")
        return self


def _auth_kind(value: object) -> str:
    # One branch per shape, so an error names the field that is wrong, not every union branch.
    return "none" if isinstance(value, str) else "policy"


class RouteConfig(Model):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    match: RouteMatch
    # Name of an entry in ``upstreams:``, or an inline URL.
    upstream: str
    # ``none`` switches auth off for this route; it must be written out (default deny).
    auth: Annotated[
        Annotated[AuthPolicy, Tag("policy")] | Annotated[Literal["none"], Tag("none")],
        Discriminator(_auth_kind),
    ]
    max_body_bytes: Annotated[int, Field(ge=0)] = 10 * 1024 * 1024
    # Forward the client's Authorization/DPoP headers upstream. Off: the upstream's logs and APM
    # would hold live tokens (RFC 9700 §4.9); opt in only for a backend that re-checks them.
    forward_credentials: bool = False
    # Forward X-HTTP-Method-Override, X-Original-URL and kin. Off: they would let the upstream act
    # on another method or path than the one authorised here.
    forward_override_headers: bool = False
    # The origin clients use for this route (DPoP htu), overriding listen.external_origin.
    external_origin: Origin | None = None
    # Browser clients: preflights answered here; DPoP-Nonce / WWW-Authenticate exposed.
    cors: CorsConfig | None = None
    # FAPI 2.0 HTTP message signatures on this route (config/signatures.py).
    http_signatures: RouteSignatures = RouteSignatures()


class GatewayConfig(Model):
    listen: Listen = Listen()
    admin: Admin = Admin()
    upstreams: dict[str, UpstreamConfig] = {}
    routes: tuple[RouteConfig, ...]
    issuers: tuple[IssuerConfig, ...] = ()
    dpop: DpopConfig = DpopConfig()
    client_certs: ClientCertConfig = ClientCertConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()
    revocation: RevocationConfig = RevocationConfig()
    proxy: ProxyConfig = ProxyConfig()
    paths: PathConfig = PathConfig()
    # The decision service for Envoy/Istio ext_authz, nginx auth_request, Traefik forwardAuth.
    decision: DecisionConfig = DecisionConfig()
    # Risky settings (config/risks.py) that the operator accepts, by id; the rest are refused.
    acknowledge_risks: tuple[RiskId, ...] = ()
    # Per-client limits and per-source abuse budgets (config/ratelimit.py); omitted: none.
    rate_limits: RateLimitsConfig | None = None
    # OAuth clients' signing keys, and the gateway's own (config/signatures.py).
    clients: tuple[ClientConfig, ...] = ()
    http_signatures: HttpSignaturesConfig = HttpSignaturesConfig()

    @model_validator(mode="after")
    def _cross_references(self) -> GatewayConfig:
        problems: list[str] = []
        seen_ids: dict[str, int] = {}
        seen_match: dict[tuple[object, ...], int] = {}
        issuer_names = {i.name for i in self.issuers}
        for n, route in enumerate(self.routes):
            where = f"routes[{n}]"
            if route.id in seen_ids:
                problems.append(f"{where}.id: duplicate of routes[{seen_ids[route.id]}].id ({route.id!r})")
            seen_ids.setdefault(route.id, n)
            if route.upstream not in self.upstreams:
                upstream_problem = upstream_reference_problem(route.upstream)
                if upstream_problem:
                    problems.append(f"{where}.upstream: {upstream_problem}")
            m = route.match
            prefix, path = m.path_prefix, m.path
            # Templates of one shape (names aside) match the same requests (issue #16).
            prefix, path = prefix and template_shape(prefix), path and template_shape(path)
            if not self.paths.case_sensitive:  # the router ignores case: so does "same match"
                prefix, path = prefix and prefix.lower(), path and path.lower()
            key = (prefix, path, m.host, frozenset(m.methods))
            if key in seen_match:
                problems.append(
                    f"{where}.match: same match as routes[{seen_match[key]}]; this route can never match"
                )
            seen_match.setdefault(key, n)
            if isinstance(route.auth, AuthPolicy):
                for k, name in enumerate(route.auth.issuers):
                    if name not in issuer_names:
                        problems.append(f"{where}.auth.issuers[{k}]: no issuer named {name!r} under issuers:")
                if route.auth.sender_constraint == "mtls" and (
                    self.listen.tls is None or self.listen.tls.client_auth == "none"
                ) and self.client_certs.front_proxy is None and not self.decision.has_client_certs:
                    problems.append(
                        f"{where}.auth.sender_constraint: mtls needs client certificates "
                        "(listen.tls.client_auth is none and no front-proxy or decision-front source is configured)"
                    )
                if route.auth.sender_constraint in ("dpop", "any") and not (
                    route.external_origin or self.listen.external_origin or self.listen.allowed_hosts
                ):
                    problems.append(
                        f"{where}.external_origin: the route accepts DPoP (sender_constraint: "
                        f"{route.auth.sender_constraint}) but no public origin is configured; set "
                        f"listen.external_origin, {where}.external_origin or listen.allowed_hosts "
                        "(the DPoP htu is never built from an unchecked Host)"
                    )
                uncovered = route.auth.methods_without_rule(m.methods or HTTP_METHODS)
                if uncovered:
                    problems.append(
                        f"{where}.auth.method_scopes: no scope rule for {', '.join(uncovered)}, which this "
                        "route matches; add them, give scopes: (the default for other methods) "
                        "or limit match.methods"
                    )
                if route.auth.require_dpop_nonce and self.dpop.nonce is None:
                    problems.append(
                        f"{where}.auth.require_dpop_nonce: needs dpop.nonce (shared nonce secrets)"
                    )
                problems.extend(check_introspect_always(where, route.auth, self.issuers))
                problems.extend(check_authz(where, route, decision_fronts=self.decision.enabled))
        # Any authenticated route may see a DPoP-bound token, so the replay store must span workers.
        has_auth = any(isinstance(r.auth, AuthPolicy) for r in self.routes)
        workers_problem = check_workers(self.dpop, self.lifecycle.workers) if has_auth else None
        if workers_problem:
            problems.append(workers_problem)
        problems.extend(check_deny_entries(self.revocation, self.issuers))
        problems.extend(check_rate_limits(self))
        problems.extend(check_signatures(self))
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _risks_acknowledged(self) -> GatewayConfig:
        refused = unacknowledged_refusals(self)
        if refused:
            raise ValueError("\n".join(refused))
        return self

    def upstream_for(self, route: RouteConfig) -> UpstreamConfig:
        return self.upstreams.get(route.upstream) or UpstreamConfig(url=route.upstream)
