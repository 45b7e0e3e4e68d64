"""Response signatures (FAPI 2.0, RFC 9421 §2.4 ``req``): the gateway signs the upstream's answer.

Covered: ``@status``, ``content-digest`` (RFC 9530, sha-256 over the response body as sent),
``content-type`` when present, and from the request ``@method``, ``@target-uri``,
``authorization``, plus ``dpop`` and ``content-digest`` when the request had them; parameters
``created``, ``keyid`` (the active signing key's kid) and ``tag="fapi-2-response"``. The signature
base comes from ``http-message-signatures`` (``prepare``); the signature from our key.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from http_message_signatures import HTTPMessageSigner

from .algorithms import algorithm_for
from .digest import content_digest
from .keys import SigningKey
from .verify import RESPONSE_TAG

__all__ = ("ResponseSigner", "SignedRequestView")

LABEL = "sig"


class SignedRequestView:
    """The request a response answers, as ``req`` components read it."""

    __slots__ = ("headers", "method", "url")

    def __init__(self, method: str, url: str, headers: Mapping[str, str]) -> None:
        self.method = method
        self.url = url
        self.headers = headers


class _Response:
    __slots__ = ("headers", "request", "status_code")

    def __init__(self, status: int, headers: Mapping[str, str], request: SignedRequestView) -> None:
        self.status_code = status
        self.headers = headers
        self.request = request


class ResponseSigner:
    def __init__(self, key: SigningKey) -> None:
        self._key = key
        cls = algorithm_for(key.alg, None)
        assert cls is not None
        self._algorithm = cls(private_key=key.private)
        self._signer = HTTPMessageSigner(signature_algorithm=cls)

    def headers_for(
        self, status: int, headers: Mapping[str, str], body: bytes, request: SignedRequestView
    ) -> list[tuple[str, str]]:
        """``Content-Digest``, ``Signature-Input`` and ``Signature`` for this response. ``headers``:
        the response's other headers (Content-Type is read from them)."""
        digest = content_digest(body)
        view = {k: v for k, v in headers.items() if k.lower() not in ("content-digest", "signature",
                                                                      "signature-input")}
        view["Content-Digest"] = digest
        covered = ["@status", "content-digest"]
        if any(k.lower() == "content-type" for k in view):
            covered.append("content-type")
        covered += ['"@method";req', '"@target-uri";req', '"authorization";req']
        req_headers = request.headers
        if "DPoP" in req_headers:
            covered.append('"dpop";req')
        if "Content-Digest" in req_headers:
            covered.append('"content-digest";req')
        prepared = self._signer.prepare(
            _Response(status, view, request), key_id=self._key.kid, label=LABEL, tag=RESPONSE_TAG,
            created=datetime.fromtimestamp(int(time.time()), UTC), include_alg=False,
            covered_component_ids=covered, use_existing_digest=True,
        )
        signature = base64.b64encode(self._algorithm.sign(prepared.signature_base)).decode("ascii")
        return [
            ("Content-Digest", digest),
            ("Signature-Input", f"{LABEL}={prepared.signature_params}"),
            ("Signature", f"{LABEL}=:{signature}:"),
        ]
