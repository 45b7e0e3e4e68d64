"""Library exceptions are translated at the boundary; issuer config is validated at load."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import jwt
import jwt.exceptions
import pytest
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from gateway.config import parse_config
from gateway.errors import ConfigError, GatewayError, InvalidTokenError, KeySourceUnavailableError
from gateway.verify.jose import translate


def _instantiate(cls: type[BaseException]) -> BaseException:
    params = [
        p for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
    ]
    return cls(*(["LIBTEXT"] * len(params)))


def test_every_pyjwt_exception_maps() -> None:
    """Authlib's lesson (InvalidKeyIdError -> 500): walk PyJWT's exception classes, all translate."""
    classes = [c for c in vars(jwt.exceptions).values()
               if isinstance(c, type) and issubclass(c, jwt.exceptions.PyJWTError)]
    assert len(classes) >= 15
    for cls in classes:
        mapped = translate(_instantiate(cls))
        assert isinstance(mapped, GatewayError)
        connection = cls is jwt.exceptions.PyJWKClientConnectionError
        expected = KeySourceUnavailableError if connection else InvalidTokenError
        assert isinstance(mapped, expected), cls
        assert "LIBTEXT" not in mapped.description  # library text never reaches the client


@pytest.mark.parametrize("exc", [InvalidSignature(), UnsupportedAlgorithm("x"), ValueError("x"), TypeError()])
def test_cryptography_exceptions_map(exc: BaseException) -> None:
    assert isinstance(translate(exc), InvalidTokenError)


BASE = """
listen: {external_origin: "https://api.example"}
routes:
  - id: r
    match: {path_prefix: /}
    upstream: http://127.0.0.1:1
    auth: {issuers: [bank], audience: https://api.example}
issuers:
"""


def cfg(issuer: str) -> Any:
    return parse_config(BASE + issuer, source="t.yaml")


def problems(issuer: str) -> str:
    with pytest.raises(ConfigError) as info:
        cfg(issuer)
    return "\n".join(info.value.problems)


def test_issuer_config_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AS_SECRET", "from-env")
    c = cfg("""
  - name: bank
    issuer: https://as.example
    mode: jwt_with_introspection_fallback
    discovery: true
    algorithms: [PS256, RS256]
    introspection:
      client_auth: {method: client_secret_post, client_id: gw, client_secret: "${AS_SECRET}"}
""")
    iss = c.issuers[0]
    assert iss.introspection is not None and iss.introspection.client_auth.client_secret is not None
    assert iss.introspection.client_auth.client_secret.get_secret_value() == "from-env"
    assert "from-env" not in repr(iss)  # secrets stay out of logs


@pytest.mark.parametrize(
    ("issuer", "message"),
    [
        ("  - {name: bank, issuer: https://as.example}", "needs a key source"),
        ("  - {name: bank, issuer: https://as.example, jwks_uri: http://as.example/jwks}", "not https://"),
        ("  - {name: bank, issuer: https://as.example, discovery: true, jwks_uri: https://as.example/j}",
         "only one of"),
        ("  - {name: bank, issuer: https://as.example, discovery: true, algorithms: [HS256]}", "algorithms"),
        ("  - {name: bank, issuer: https://as.example, discovery: true, algorithms: [none]}", "algorithms"),
        ("  - {name: bank, issuer: https://as.example, discovery: true, mode: introspection}",
         "needs an introspection"),
        ("  - {name: bank, issuer: https://as.example, mode: introspection, introspection: "
         "{endpoint: https://as.example/i, client_auth: {method: client_secret_basic, client_id: gw}}}",
         "needs client_secret"),
        ("  - {name: bank, issuer: https://as.example, mode: introspection, introspection: "
         "{client_auth: {method: tls_client_auth, client_id: gw}}}", "needs tls_cert"),
        ("  - {name: bank, issuer: https://as.example, jwks_file: /nonexistent.json}", "file not found"),
    ],
)
def test_issuer_config_errors(issuer: str, message: str) -> None:
    text = problems(issuer)
    assert message in text and "issuers[0]" in text


def test_route_needs_audience() -> None:
    text = BASE.replace(", audience: https://api.example", "")
    text += "  - {name: bank, issuer: https://a.example, discovery: true}"
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert any("audience" in p and "routes[0].auth" in p for p in info.value.problems)


def test_private_key_jwt_key_checked_at_load(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = tmp_path / "k.pem"
    pem.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    block = ("  - {name: bank, issuer: https://as.example, mode: introspection, introspection: "
             "{endpoint: https://as.example/i, client_auth: {method: private_key_jwt, client_id: gw, "
             f"private_key: {pem}, private_key_alg: %s}}}}}}")
    assert cfg(block % "ES256").issuers[0].introspection is not None
    assert "cannot sign PS256" in problems(block % "PS256")
    (tmp_path / "bad.pem").write_text("not a key")
    assert "not an unencrypted PEM" in problems((block % "ES256").replace(str(pem), str(tmp_path / "bad.pem")))
