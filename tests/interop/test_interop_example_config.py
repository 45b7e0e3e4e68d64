"""``config/examples/node-oidc-provider.yaml`` is a valid configuration (no node needed for this).

The scenarios in test_interop_gateway.py run the same file against the real AS.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from gateway.config import parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "node-oidc-provider.yaml"


def test_example_config_parses_with_production_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("gateway.bank.example")
    files = {
        "GATEWAY_TLS_CERT": tmp_path / "gw.crt",
        "GATEWAY_TLS_KEY": tmp_path / "gw.key",
        "CLIENT_CA": tmp_path / "clients-ca.pem",
        "AS_CA": tmp_path / "as-ca.pem",
    }
    leaf.cert_chain_pems[0].write_to_path(str(files["GATEWAY_TLS_CERT"]))
    leaf.private_key_pem.write_to_path(str(files["GATEWAY_TLS_KEY"]))
    ca.cert_pem.write_to_path(str(files["CLIENT_CA"]))
    ca.cert_pem.write_to_path(str(files["AS_CA"]))
    env = {name: str(path) for name, path in files.items()}
    env |= {
        "AS_ISSUER": "https://as.bank.example",
        "PUBLIC_HOST": "api.bank.example",
        "GATEWAY_INTROSPECTION_SECRET": "s3cret-from-the-vault",
        "API_AUDIENCE": "https://api.bank.example/jwt",
        "API_OPAQUE_AUDIENCE": "https://api.bank.example/opaque",
        "UPSTREAM_URL": "http://127.0.0.1:8080",
        "DPOP_NONCE_KEY": "0123456789abcdef0123456789abcdef",
        "SELF_SIGNED_JWKS_URL": "https://directory.bank.example/clients/tpp-1/jwks.json",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    cfg = parse_config(EXAMPLE.read_text(), source=str(EXAMPLE))

    (issuer,) = cfg.issuers
    assert issuer.issuer == "https://as.bank.example"
    assert issuer.mode == "jwt_with_introspection_fallback"
    assert issuer.jwks_uri == "https://as.bank.example/jwks"
    assert issuer.jwks_refetch_cooldown_s == 30
    assert issuer.introspection is not None
    assert issuer.introspection.cache_ttl_s == 60
    assert issuer.introspection.endpoint == "https://as.bank.example/token/introspection"
    assert "RS256" not in issuer.algorithms
    assert cfg.listen.port == 8443
    assert cfg.listen.allowed_hosts == ("api.bank.example",)
    routes = {r.id: r for r in cfg.routes}
    assert set(routes) == {"accounts", "payments", "consents"}
    consents = routes["consents"].auth
    assert not isinstance(consents, str)
    assert consents.sender_constraint == "dpop"
    assert consents.require_dpop_nonce is True
    assert consents.audience == ("https://api.bank.example/jwt", "https://api.bank.example/opaque")
