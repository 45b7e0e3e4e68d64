"""Risky settings: one analysis over a loaded ``GatewayConfig`` (issue #13, finding 18).

A setting can be valid and still undo what the gateway is for. Each such setting is a ``Risk``:
an id, a severity, the config path and a one-line why.

* ``refuse``: the file does not load (exit 78 like any bad config, naming the field) unless the
  id is listed in the top-level ``acknowledge_risks:``. Acknowledged, it stays visible: printed by
  ``check-config``, logged at start-up and on every reload, counted in a metric.
* ``warn``: loads; printed and logged the same way.

The table of ids is in README.md ("Security defaults").
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, get_args
from urllib.parse import urlsplit

from .auth import AuthPolicy

if TYPE_CHECKING:
    from .schema import GatewayConfig

__all__ = ("RISK_IDS", "Risk", "RiskId", "Severity", "analyse", "describe", "log_risks", "unacknowledged_refusals")

Severity = Literal["refuse", "warn"]

# Every id an operator may write under ``acknowledge_risks:`` (an unknown id is a config error).
RiskId = Literal[
    "front_proxy_any_source",
    "front_proxy_broad_source",
    "trusted_proxies_any_source",
    "trusted_proxies_broad_source",
    "replay_fail_open",
    "issuer_insecure_http",
    "admin_non_loopback",
    "plaintext_listener_non_loopback",
    "open_catch_all_route",
    "unbound_tokens",
    "legacy_jwt_typ",
    "tls_profile_default",
    "decision_plaintext_non_loopback",
    "decision_peers_any_source",
    "decision_peers_broad_source",
    "report_only_enforcement",
    "debug_reason_header",
]
RISK_IDS: Final[tuple[str, ...]] = get_args(RiskId)

# A source range shorter than this is "any source": it covers at least 1/128 of the address space.
_ANY_PREFIX: Final = 8
# Broader than a /16 (IPv4) or /32 (IPv6) is worth a warning: a front proxy is a handful of hosts.
_BROAD_PREFIX: Final = {4: 16, 6: 32}
_MAPPED_V4: Final = ipaddress.IPv6Network("::ffff:0:0/96")


@dataclass(frozen=True, slots=True)
class Risk:
    id: str
    severity: Severity
    path: str
    why: str
    acknowledged: bool = False

    @property
    def label(self) -> str:
        """``refuse`` / ``acknowledged`` / ``warn``: how the risk stands in this config."""
        return "acknowledged" if self.acknowledged else self.severity

    def __str__(self) -> str:
        return f"{self.path}: [{self.id}] {self.why}"


def _breadth(cidr: str) -> tuple[int, int]:
    """(IP version, prefix length), IPv4-mapped IPv6 ranges counted as the IPv4 range they cover."""
    net = ipaddress.ip_network(cidr, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED_V4):
        return 4, net.prefixlen - 96
    return net.version, net.prefixlen


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name (or "" = every interface): assume it can be reached from outside


def _source_ranges(
    risks: list[Risk], cidrs: tuple[str, ...], path: str, prefix: str, what: str, any_is_refused: bool
) -> None:
    for i, cidr in enumerate(cidrs):
        version, length = _breadth(cidr)
        where = f"{path}[{i}]"
        if length < _ANY_PREFIX:
            risks.append(Risk(
                f"{prefix}_any_source", "refuse" if any_is_refused else "warn", where,
                f"{cidr} covers (nearly) every address: anyone who reaches the gateway can {what}",
            ))
        elif length < _BROAD_PREFIX[version]:
            risks.append(Risk(
                f"{prefix}_broad_source", "warn", where,
                f"{cidr} is a broad range: every host in it can {what}; list the proxies' addresses",
            ))


def _insecure_issuer_urls(cfg: GatewayConfig, n: int) -> list[str]:
    iss = cfg.issuers[n]
    urls = [iss.jwks_uri, iss.discovery if isinstance(iss.discovery, str) else None]
    if iss.discovery is True:
        urls.append(iss.issuer)
    if iss.introspection is not None:
        urls.append(iss.introspection.endpoint)
    return [u for u in urls if u and not u.startswith("https://")]


def analyse(cfg: GatewayConfig) -> list[Risk]:
    """Every risky setting in ``cfg``: unacknowledged first, refusals before warnings."""
    risks: list[Risk] = []
    fp = cfg.client_certs.front_proxy
    if fp is not None:
        # With trusted_identities the peer must also hold the proxy's own certificate: then a
        # broad range is a weakness, not a bypass.
        _source_ranges(
            risks, fp.trusted_cidrs, "client_certs.front_proxy.trusted_cidrs", "front_proxy",
            "send a client-certificate header (a stolen certificate-bound token plus the victim's public "
            "certificate in the header passes RFC 8705 binding)",
            any_is_refused=not fp.trusted_identities,
        )
    _source_ranges(
        risks, cfg.listen.trusted_proxies, "listen.trusted_proxies", "trusted_proxies",
        "set X-Forwarded-* (client address, scheme and host the gateway believes)",
        any_is_refused=True,
    )
    if cfg.dpop.replay.on_unavailable == "fail_open_safe_methods":
        risks.append(Risk(
            "replay_fail_open", "refuse", "dpop.replay.on_unavailable",
            "fail_open_safe_methods: while the replay store is down a captured GET/HEAD/OPTIONS DPoP "
            "proof is accepted again and again",
        ))
    for n, iss in enumerate(cfg.issuers):
        if not iss.allow_insecure_http:
            continue
        remote = [u for u in _insecure_issuer_urls(cfg, n) if not _is_loopback_host(urlsplit(u).hostname or "")]
        risks.append(Risk(
            "issuer_insecure_http", "refuse" if remote else "warn", f"issuers[{n}].allow_insecure_http",
            ("keys or introspection answers over plain HTTP from another host: anyone on the path can "
             "forge every token") if remote else "plain HTTP to the authorization server (loopback only: dev/tests)",
        ))
    for n, iss in enumerate(cfg.issuers):
        if iss.allow_legacy_jwt_typ:
            risks.append(Risk(
                "legacy_jwt_typ", "warn", f"issuers[{n}].allow_legacy_jwt_typ",
                "tokens without typ at+jwt are accepted: an ID token of the same issuer may pass as an "
                "access token (RFC 9068 §4, RFC 8725 §3.11)",
            ))
    if not _is_loopback_host(cfg.admin.host):
        risks.append(Risk(
            "admin_non_loopback", "warn", "admin.host",
            f"{cfg.admin.host or '*'}: the admin listener (/metrics, /readyz) has no authentication; "
            "limit who reaches it (NetworkPolicy, firewall)",
        ))
    if cfg.listen.tls is None and not _is_loopback_host(cfg.listen.host):
        risks.append(Risk(
            "plaintext_listener_non_loopback", "warn", "listen.tls",
            f"plain HTTP on {cfg.listen.host or '*'}: tokens and proofs cross the network in clear unless "
            "a TLS-terminating proxy is the only thing that reaches this port",
        ))
    elif cfg.listen.tls is not None and cfg.listen.tls.profile == "default":
        risks.append(Risk(
            "tls_profile_default", "warn", "listen.tls.profile",
            "default: TLS 1.2 cipher suites beyond what FAPI and BCP 195 allow",
        ))
    _decision_risks(risks, cfg)
    for n, route in enumerate(cfg.routes):
        m = route.match
        if route.auth == "none" and m.path_prefix == "/" and m.host is None:
            risks.append(Risk(
                "open_catch_all_route", "warn", f"routes[{n}].auth",
                f"route {route.id!r} forwards every path no other route matches without authentication "
                "(default allow)",
            ))
        if isinstance(route.auth, AuthPolicy) and route.auth.sender_constraint == "none":
            risks.append(Risk(
                "unbound_tokens", "warn", f"routes[{n}].auth.sender_constraint",
                f"route {route.id!r} accepts plain bearer tokens: a stolen token works from anywhere",
            ))
        _report_risks(risks, cfg, n)
    acknowledged = set(cfg.acknowledge_risks)
    marked = [
        Risk(r.id, r.severity, r.path, r.why, acknowledged=True) if r.id in acknowledged else r for r in risks
    ]
    present = {r.id for r in risks}
    for i, rid in enumerate(cfg.acknowledge_risks):
        if rid not in present:
            marked.append(Risk(
                "stale_acknowledgement", "warn", f"acknowledge_risks[{i}]",
                f"{rid} is acknowledged but not present: remove it, so a future {rid} is not waved through",
            ))
    order = {"refuse": 0, "warn": 1}
    return sorted(marked, key=lambda r: (r.acknowledged, order[r.severity]))


def _report_risks(risks: list[Risk], cfg: GatewayConfig, n: int) -> None:
    """Issue #19: report-only enforcement and the debug reason header weaken a route; under the
    fapi TLS profile (production) they are refused unless acknowledged."""
    route = cfg.routes[n]
    if not isinstance(route.auth, AuthPolicy):
        return
    fapi = cfg.listen.tls is not None and cfg.listen.tls.profile == "fapi"
    severity: Severity = "refuse" if fapi else "warn"
    if route.auth.enforcement == "report":
        risks.append(Risk(
            "report_only_enforcement", severity, f"routes[{n}].auth.enforcement",
            f"route {route.id!r} forwards requests it would refuse (report-only: missing, invalid or "
            "unbound tokens reach the upstream, marked X-Auth-Would-Refuse)",
        ))
    if route.auth.debug_reason_header:
        risks.append(Risk(
            "debug_reason_header", severity, f"routes[{n}].auth.debug_reason_header",
            f"route {route.id!r} tells every client why it was refused (X-Auth-Debug-Reason): an "
            "oracle for probing tokens and proofs; sandboxes only",
        ))


def _decision_risks(risks: list[Risk], cfg: GatewayConfig) -> None:
    """The decision listener's callers assert the original request and client certificate."""
    dec = cfg.decision
    if not dec.enabled:
        return
    for name, front in (("grpc", dec.grpc), ("http", dec.http)):
        if front is None:
            continue
        _source_ranges(
            risks, front.trusted_peers, f"decision.{name}.trusted_peers", "decision_peers",
            "assert any request and client certificate to the decision service (an allow for a forged request)",
            any_is_refused=not front.trusted_identities,
        )
        if dec.tls is None and not _is_loopback_host(front.host):
            risks.append(Risk(
                "decision_plaintext_non_loopback", "warn", f"decision.{name}.host",
                f"plain {name} on {front.host or '*'}: the caller is known by its address only, and requests, "
                "tokens and proofs cross the network in clear; use decision.tls with client_auth: required, "
                "or a NetworkPolicy that admits only the proxy's pods",
            ))


def unacknowledged_refusals(cfg: GatewayConfig) -> list[str]:
    """Load errors, one per refused risk that ``acknowledge_risks`` does not list."""
    return [
        f"{r.path}: {r.why}; refused unless acknowledged (acknowledge_risks: [{r.id}])"
        for r in analyse(cfg)
        if r.severity == "refuse" and not r.acknowledged
    ]


def describe(risk: Risk) -> str:
    """One line for ``check-config`` output."""
    return f"{risk.label.upper():<13} {risk.id}  {risk.path}: {risk.why}"


def log_risks(cfg: GatewayConfig, log: logging.Logger) -> list[Risk]:
    """Log each risky setting once (start-up, reload); returns them for the metric."""
    risks = analyse(cfg)
    for r in risks:
        log.warning("risky setting (%s) %s at %s: %s", r.label, r.id, r.path, r.why)
    return risks
