"""``check_response`` fills the CheckResponse in place (issue #15, performance): the bytes Envoy
receives must be exactly those of the message built the plain way, field by field, for allows and
denials (including a status Envoy's HttpStatus enum does not define, sent as 403)."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2  # type: ignore[import-untyped]
from envoy.service.auth.v3 import external_auth_pb2  # type: ignore[import-untyped]
from envoy.type.v3 import http_status_pb2  # type: ignore[import-untyped]
from google.rpc import code_pb2, status_pb2  # type: ignore[import-untyped]

from gateway.decision.core import Verdict
from gateway.decision.grpc import check_response

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _opts(pairs: tuple[tuple[str, str], ...]) -> list[Any]:
    return [base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=_OVERWRITE)
            for k, v in pairs]


def reference(v: Verdict) -> Any:
    """The message built with constructors (the implementation before the in-place one)."""
    if v.allowed:
        ok = external_auth_pb2.OkHttpResponse(headers=_opts(v.upstream_add), headers_to_remove=list(v.upstream_remove),
                                              response_headers_to_add=_opts(v.response_headers))
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ok)
    code = v.status if v.status in frozenset(http_status_pb2.StatusCode.values()) else 403
    rpc = (code_pb2.UNAUTHENTICATED if code == 401 else code_pb2.UNAVAILABLE if code == 503
           else code_pb2.PERMISSION_DENIED)
    denied = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=code),
        headers=_opts(tuple((k, x) for k, x in v.response_headers if k.lower() != "content-length")),
        body=v.body.decode("utf-8", "replace"))
    return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=rpc), denied_response=denied)


ALLOW = Verdict(True, 200, (("x-fapi-interaction-id", "6f1c"), ("DPoP-Nonce", "n1")),
                upstream_add=(("x-auth-subject", "alice"), ("x-auth-scope", "accounts"),
                              ("x-fapi-interaction-id", "6f1c")),
                upstream_remove=("authorization", "dpop", "x-auth-client-id"))
DENIALS = [
    Verdict(False, 401, (("WWW-Authenticate", 'DPoP error="invalid_token"'), ("Content-Length", "25"),
                         ("Cache-Control", "no-store")), b'{"error":"invalid_token"}'),
    Verdict(False, 503, (("Retry-After", "1"),), b'{"error":"temporarily_unavailable"}'),
    Verdict(False, 403, (), b""),
    Verdict(False, 499, (("x-fapi-interaction-id", "1"),), b"\xff not utf-8"),  # not in the enum: 403
]


@pytest.mark.parametrize("verdict", [ALLOW, Verdict(True, 200), *DENIALS])
def test_same_bytes_as_the_plain_construction(verdict: Verdict) -> None:
    got, want = check_response(verdict), reference(verdict)
    assert got == want
    assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
    # Envoy reads the status: present (code OK = 0) on an allow, too.
    assert got.HasField("status")
    assert got.WhichOneof("http_response") == ("ok_response" if verdict.allowed else "denied_response")
