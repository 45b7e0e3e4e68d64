"""The ``decision:`` section: safe defaults, errors that name file:line and field, risky settings."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.config.risks import analyse
from gateway.errors import ConfigError

BASE = """
listen: {host: 127.0.0.1, port: 0}
admin: {host: 127.0.0.1, port: 0}
routes:
  - id: open
    match: {path_prefix: /open}
    upstream: http://127.0.0.1:9
    auth: none
"""


def test_off_by_default_and_loopback_when_on() -> None:
    assert not parse_config(BASE).decision.enabled
    dec = parse_config(BASE + "decision: {enabled: true}\n").decision
    assert dec.grpc is not None and dec.grpc.host == "127.0.0.1" and dec.grpc.port == 9191
    assert dec.grpc.trusted_peers == ("127.0.0.1/32", "::1/128")
    assert dec.grpc.client_cert.source == "attribute" and dec.http is None and dec.tls is None
    assert dec.grpc.deadline_s > 0 and dec.grpc.max_concurrent > 0 and dec.grpc.max_message_bytes > 0


@pytest.mark.parametrize(("extra", "expected"), [
    ("decision: {enabled: true, grpc: null}\n", "gw.yaml:9: decision: enabled: true needs grpc: and/or http:"),
    ("decision: {enabled: true, grpc: {port: 70000}}\n", "gw.yaml:9: decision.grpc.port"),
    ("decision: {enabled: true, grpc: {trusted_peers: [not-an-ip]}}\n",
     "decision.grpc.trusted_peers[0]: not an IP address"),
    ("decision: {enabled: true, grpc: {trusted_peers: []}}\n", "decision.grpc.trusted_peers"),
    ("decision: {enabled: true, grpc: {deadline_s: 0}}\n", "decision.grpc.deadline_s"),
    ("decision: {enabled: true, grpc: {client_cert: {source: header}}}\n",
     "source: header needs header:"),
    ("decision: {enabled: true, http: {client_cert: {source: attribute}}}\n", "attribute is gRPC only"),
    ("decision: {enabled: true, grpc: {trusted_identities: [{x5t_s256: " + "A" * 43 + "}]}}\n",
     "grpc.trusted_identities needs tls:"),
    ("decision: {enabled: true, grpc: {portt: 1}}\n", "decision.grpc.portt: unknown key"),
])
def test_bad_decision_config_names_the_field(extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + extra, source="gw.yaml")
    assert expected in str(info.value), str(info.value)


def test_non_loopback_plaintext_is_a_warning() -> None:
    cfg = parse_config(BASE + "decision: {enabled: true, grpc: {host: 10.1.2.3, trusted_peers: [10.1.0.0/24]}}\n")
    assert [(r.id, r.severity, r.path) for r in analyse(cfg)] == [
        ("decision_plaintext_non_loopback", "warn", "decision.grpc.host")]


def test_any_source_callers_are_refused_unless_acknowledged() -> None:
    text = BASE + "decision: {enabled: true, grpc: {host: 0.0.0.0, trusted_peers: [0.0.0.0/0]}}\n"
    with pytest.raises(ConfigError, match=r"decision\.grpc\.trusted_peers\[0\].*decision_peers_any_source"):
        parse_config(text, source="gw.yaml")
    cfg = parse_config(text + "acknowledge_risks: [decision_peers_any_source, decision_plaintext_non_loopback]\n")
    assert {r.id for r in analyse(cfg) if r.acknowledged} == {"decision_peers_any_source",
                                                              "decision_plaintext_non_loopback"}


def test_disabled_decision_has_no_risks() -> None:
    cfg = parse_config(BASE + "decision: {enabled: false, grpc: {host: 0.0.0.0, trusted_peers: [0.0.0.0/0]}}\n")
    assert analyse(cfg) == []


MTLS_ROUTE = """
issuers: [{name: as, issuer: 'https://as.example', jwks_uri: 'https://as.example/jwks'}]
routes:
  - id: pay
    match: {path_prefix: /pay}
    upstream: http://127.0.0.1:9
    auth: {issuers: [as], audience: [api], scopes: [pay], sender_constraint: mtls}
"""


def test_mtls_routes_accept_a_decision_front_as_certificate_source() -> None:
    head = "listen: {host: 127.0.0.1, port: 0}\n"
    assert parse_config(head + MTLS_ROUTE + "decision: {enabled: true}\n").decision.has_client_certs
    with pytest.raises(ConfigError, match="mtls needs client certificates"):
        parse_config(head + MTLS_ROUTE + "decision: {enabled: true, grpc: {client_cert: {source: none}}}\n")
    with pytest.raises(ConfigError, match="mtls needs client certificates"):
        parse_config(head + MTLS_ROUTE)
