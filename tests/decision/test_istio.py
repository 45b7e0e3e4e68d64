"""config/examples/istio: the MeshConfig provider, the CUSTOM AuthorizationPolicy and the gateway's
own config agree with each other, and the gateway config decides checks shaped like the Istio
ingress gateway's (client certificate only as XFCC Hash=..., SANITIZE_SET) over real gRPC."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import yaml
from envoy.service.auth.v3 import (  # type: ignore[import-untyped]
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from google.rpc import code_pb2  # type: ignore[import-untyped]

from gateway.config import load_config
from gateway.model import sha256_b64url
from gateway.server import GatewayServer
from tests.conftest import Pki
from tests.dpop.e2e_support import AUD, ISS, AsKey

ISTIO = Path(__file__).resolve().parents[2] / "config" / "examples" / "istio"
# MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider (Istio 1.2x) fields.
_GRPC_PROVIDER_FIELDS = {"service", "port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck",
                         "clearRouteCache"}


def docs(name: str) -> list[Any]:
    return [d for d in yaml.safe_load_all((ISTIO / name).read_text()) if d]


def test_istio_manifests_are_consistent(as_key: AsKey, monkeypatch: pytest.MonkeyPatch) -> None:
    (operator,) = docs("mesh-config.yaml")
    assert operator["apiVersion"] == "install.istio.io/v1alpha1" and operator["kind"] == "IstioOperator"
    mesh = operator["spec"]["meshConfig"]
    (provider,) = mesh["extensionProviders"]
    grpc_provider = provider["envoyExtAuthzGrpc"]
    assert set(grpc_provider) <= _GRPC_PROVIDER_FIELDS, set(grpc_provider) - _GRPC_PROVIDER_FIELDS
    assert grpc_provider["failOpen"] is False
    assert mesh["defaultConfig"]["gatewayTopology"]["forwardClientCertDetails"] == "SANITIZE_SET"

    by_kind: dict[str, list[Any]] = {}
    for d in docs("authorization-policy.yaml"):
        assert d["apiVersion"] in ("security.istio.io/v1", "networking.istio.io/v1"), d["apiVersion"]
        by_kind.setdefault(d["kind"], []).append(d)
    custom = [p for p in by_kind["AuthorizationPolicy"] if p["spec"]["action"] == "CUSTOM"]
    assert len(custom) == 1 and custom[0]["spec"]["provider"]["name"] == provider["name"]
    assert custom[0]["spec"]["rules"], "a CUSTOM policy without rules applies to nothing"
    allow = [p for p in by_kind["AuthorizationPolicy"] if p["spec"]["action"] == "ALLOW"]
    ports = allow[0]["spec"]["rules"][0]["to"][0]["operation"]["ports"]
    assert ports == [str(grpc_provider["port"])]
    assert by_kind["Gateway"][0]["spec"]["servers"][0]["tls"]["mode"] == "MUTUAL"
    assert by_kind["PeerAuthentication"][0]["spec"]["mtls"]["mode"] == "STRICT"

    monkeypatch.setenv("AS_JWKS_FILE", str(as_key.jwks))  # everything else: the file's defaults
    cfg = load_config(ISTIO / "gateway.yaml")
    assert cfg.decision.enabled and cfg.decision.grpc is not None
    assert cfg.decision.grpc.port == grpc_provider["port"]
    assert cfg.decision.grpc.host == "0.0.0.0"  # the sidecar delivers to the pod address
    assert cfg.decision.grpc.deadline_s < float(grpc_provider["timeout"].rstrip("s"))


@pytest.fixture(scope="module")
def as_key(tmp_path_factory: pytest.TempPathFactory) -> AsKey:
    return AsKey(tmp_path_factory.mktemp("as"))


@pytest.fixture
async def stub(as_key: AsKey, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    # The test's own gRPC client stands in for the local sidecar (127.0.0.1 instead of 127.0.0.6).
    for name, value in {"GATEWAY_PORT": "0", "ADMIN_PORT": "0", "DECISION_PORT": "0", "SIDECAR_SOURCE": "127.0.0.1",
                        "ISSUER": ISS, "AS_JWKS_FILE": str(as_key.jwks), "AUDIENCE": AUD}.items():
        monkeypatch.setenv(name, value)
    server = GatewayServer(load_config(ISTIO / "gateway.yaml"))
    await server.start()
    assert server.decision is not None
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.decision.grpc_port}")
    try:
        yield external_auth_pb2_grpc.AuthorizationStub(channel)
    finally:
        await channel.close()
        await server.stop()


def istio_check(path: str, headers: dict[str, str]) -> Any:
    ctx = attribute_context_pb2.AttributeContext
    http = ctx.HttpRequest(method="GET", scheme="https", host="api.bank.example", path=path, headers=headers)
    return external_auth_pb2.CheckRequest(attributes=ctx(request=ctx.Request(http=http)))


def xfcc(der: bytes) -> str:
    # As the ingress gateway writes it with SANITIZE_SET (By, Hash, Subject, URI; no Cert).
    return (f'By=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account;'
            f'Hash={hashlib.sha256(der).hexdigest()};Subject="CN=client-a";URI=')


async def test_istio_shaped_checks(stub: Any, pki: Pki, as_key: AsKey) -> None:
    token = as_key.token(scope="payments", cnf={"x5t#S256": sha256_b64url(pki.client_a.der)})
    auth = {"authorization": f"Bearer {token}"}
    ok = await stub.Check(istio_check("/payments/1", {**auth, "x-forwarded-client-cert": xfcc(pki.client_a.der)}),
                          timeout=5)
    assert ok.status.code == code_pb2.OK, ok.denied_response.body
    assert {o.header.key.lower(): o.header.value for o in ok.ok_response.headers}["x-auth-binding"] == "mtls"
    other = await stub.Check(istio_check("/payments/1", {**auth, "x-forwarded-client-cert": xfcc(pki.client_b.der)}),
                             timeout=5)
    assert other.denied_response.status.code == 401
    missing = await stub.Check(istio_check("/payments/1", auth), timeout=5)
    assert missing.denied_response.status.code == 401
    two = await stub.Check(istio_check("/payments/1", {**auth, "x-forwarded-client-cert":
                                                       xfcc(pki.client_a.der) + "," + xfcc(pki.client_b.der)}),
                           timeout=5)
    assert two.denied_response.status.code == 400  # several XFCC elements: which is the client? refused
