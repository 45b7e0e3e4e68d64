"""``config/examples/open-banking-rar.yaml`` is a valid configuration with the rules it documents
(no node needed; tests/interop/test_interop_rar.py runs the same file against the real AS)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from gateway.config import AuthPolicy, parse_config
from gateway.routing import Router

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "open-banking-rar.yaml"


def test_example_parses_and_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("api.bank.example")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "gw.crt"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "gw.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    env = {
        "GATEWAY_TLS_CERT": str(tmp_path / "gw.crt"), "GATEWAY_TLS_KEY": str(tmp_path / "gw.key"),
        "CLIENT_CA": str(tmp_path / "ca.pem"), "AS_CA": str(tmp_path / "ca.pem"),
        "AS_ISSUER": "https://as.bank.example", "PUBLIC_HOST": "api.bank.example",
        "GATEWAY_INTROSPECTION_SECRET": "s3cret", "API_AUDIENCE": "https://api.bank.example/jwt",
        "API_OPAQUE_AUDIENCE": "https://api.bank.example/opaque", "UPSTREAM_URL": "http://127.0.0.1:8080",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = parse_config(EXAMPLE.read_text(), source=str(EXAMPLE))
    routes = {r.id: r for r in cfg.routes}
    assert set(routes) == {"account-balances", "account-transactions", "payments"}
    balances = routes["account-balances"].auth
    assert isinstance(balances, AuthPolicy) and balances.authz is not None
    rule = balances.authz.rules[0]
    assert rule.authorization_details is not None and rule.authorization_details.datatypes == ("balances",)
    assert balances.authz.error == "insufficient_authorization_details"
    payments = routes["payments"].auth
    assert isinstance(payments, AuthPolicy) and payments.authz is not None and payments.authz.body is not None
    assert payments.authz.rules[0].uses_body
    found = Router(cfg).resolve("GET", "api.bank.example", "/accounts/acc-1/transactions")
    assert found.route.id == "account-transactions" and found.params == {"account_id": "acc-1"}


def test_check_config_prints_where_rules_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    test_example_parses_and_routes(tmp_path, monkeypatch)
    assert main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "authz rules:" in out
    assert "rule account_balances [GET] -> reason authz_account_balances" in out
    assert "identifier == path parameter account_id" in out and "consentId == header x-consent-id" in out
    assert "rule payment_consent [POST]" in out and "CEL reading request, token (request body)" in out


def test_readme_worked_examples_are_valid() -> None:
    """The three examples of the README's fine-grained authorization section load as written."""
    import re

    import yaml

    from gateway.config.authz import AuthzConfig

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Fine-grained authorization:", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    examples = re.split(r"\n(?=# \d\.)", block.group(1).strip())
    assert len(examples) == 3
    for text in examples:
        cfg = AuthzConfig.model_validate(yaml.safe_load(text)["authz"])
        assert cfg.rules


def test_check_config_reports_cel_type_errors() -> None:
    from gateway.authz.report import describe_rules

    text = """issuers:
  - {name: as, issuer: "https://as.bank.example", jwks_uri: "https://as.bank.example/jwks"}
listen: {external_origin: "https://api.bank.example"}
routes:
  - id: accounts
    match: {path: "/accounts/{n:int}"}
    upstream: http://127.0.0.1:9
    auth:
      issuers: [as]
      audience: https://api.bank.example
      scopes: [accounts]
      authz:
        rules:
          - {id: wrong, expression: 'request.method + 1 == 2'}
          - {id: int_vs_string, expression: 'request.params.n == "1"'}
          - {id: fine, expression: 'request.params.n == 1 && token.authorization_details.exists(d, d.x == 1)'}
          - {id: depends_on_token, expression: 'token.authorization_details[0].amount > 1'}
"""
    lines = describe_rules(parse_config(text, source="t.yaml"))
    warnings = [n for n, line in enumerate(lines) if "WARNING: type error" in line]
    rules = [n for n, line in enumerate(lines) if line.strip().startswith("rule ")]
    flagged = {lines[max(r for r in rules if r < w)].split()[1] for w in warnings}
    assert flagged == {"wrong"}, lines
