"""check-config in one run: a type or key error in one section does not hide the cross-field
findings (mTLS needs client certificates, DPoP needs a public origin) of independent sections, and a
finding that could depend on a field in error is held back rather than guessed."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import load_config, parse_config
from gateway.errors import ConfigError

ISSUER = """issuers:
  - name: as
    issuer: https://as.example
    jwks_uri: https://as.example/jwks
"""


def _problems(text: str, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="c.yaml", **kw)  # type: ignore[arg-type]
    return err.value.problems


def test_type_error_elsewhere_does_not_hide_cross_field_findings() -> None:
    cfg = ISSUER + """dpop:
  iat_past_s: soon
routes:
  - id: card
    match: {path_prefix: /card}
    upstream: http://127.0.0.1:1
    auth: {issuers: [as], scopes: [a], audience: https://api.example, sender_constraint: mtls}
  - id: pay
    match: {path_prefix: /pay}
    upstream: http://127.0.0.1:1
    auth: {issuers: [as], scopes: [a], audience: https://api.example, sender_constraint: dpop}
"""
    problems = _problems(cfg)
    text = "\n".join(problems)
    assert "c.yaml:6: dpop.iat_past_s: Input should be a valid integer" in text
    assert "c.yaml:11: routes[0].auth.sender_constraint: mtls needs client certificates" in text
    assert "c.yaml:12: routes[1].external_origin: the route accepts DPoP" in text
    assert len(problems) == 3, problems


def test_findings_about_a_route_in_error_are_held_back() -> None:
    # routes[0] loses its whole match: its findings could be artefacts; routes[2] keeps its index.
    cfg = ISSUER + """routes:
  - id: a
    upstream: http://127.0.0.1:1
    auth: {issuers: [as], scopes: [a], audience: https://api.example, sender_constraint: dpop}
  - id: b
    match: {path_prefix: /b}
    upstream: http://127.0.0.1:1
    auth: {issuers: [as], scopes: [a], audience: https://api.example, sender_constraint: dpop, max_age: 3}
  - id: c
    match: {path_prefix: /c}
    upstream: http://127.0.0.1:1
    auth: {issuers: [as], scopes: [a], audience: https://api.example, sender_constraint: dpop}
"""
    text = "\n".join(_problems(cfg))
    assert "routes[0].match: required field is missing" in text
    assert "routes[1].auth.max_age: unknown key" in text
    assert "routes[2].external_origin: the route accepts DPoP" in text
    assert "routes[0].external_origin" not in text
    assert "routes[1].external_origin" not in text


def test_findings_that_name_a_section_in_error_are_held_back() -> None:
    # listen is in error, and the mTLS finding reads listen.tls: it waits for listen to be fixed.
    cfg = ISSUER + """listen:
  port: high
  external_origin: https://api.example
routes:
  - id: a
    match: {path_prefix: /a}
    upstream: http://127.0.0.1:1
    auth: {issuers: [as], scopes: [a], audience: https://api.example, sender_constraint: mtls}
"""
    problems = _problems(cfg)
    assert [p for p in problems if "listen.port" in p] == problems, problems


def test_missing_files_do_not_hide_cross_field_findings(tmp_path: Path) -> None:
    (tmp_path / "gw.yaml").write_text(ISSUER + """listen:
  tls: {cert: nothere.pem, key: nothere-key.pem, client_auth: none}
routes:
  - id: a
    match: {path_prefix: /a}
    upstream: http://127.0.0.1:1
    auth: {issuers: [as], scopes: [a], audience: https://api.example, sender_constraint: dpop}
""")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "gw.yaml")
    text = "\n".join(err.value.problems)
    assert "listen.tls.cert: file not found" in text
    assert "routes[0].external_origin: the route accepts DPoP" in text


def test_a_valid_config_still_loads() -> None:
    cfg = parse_config(ISSUER + """listen: {external_origin: https://api.example}
routes:
  - {id: a, match: {path_prefix: /a}, upstream: http://127.0.0.1:1,
     auth: {issuers: [as], scopes: [a], audience: https://api.example, sender_constraint: dpop}}
""")
    assert cfg.routes[0].id == "a"
