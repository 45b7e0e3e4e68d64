"""Response signatures (FAPI 2.0, RFC 9421 §2.4 ``req``): the gateway signs the upstream's answer.

Covered: ``@status``, ``content-digest`` (RFC 9530, sha-256 over the response body as sent),
``content-type`` when present, and from the request ``@method``, ``@target-uri``,
``authorization``, plus ``dpop`` and ``content-digest`` when the request had them; parameters
``created``, ``keyid`` (the active signing key's kid) and ``tag="fapi-2-response"``. The signature
base comes from ``http-message-signatures`` (``base.signature_base``); the signature from our key.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from typing import Any

from http_message_signatures._components import _parse_component_ids
from http_sf.compat import Item

from . import base
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


class ResponseSigner:
    def __init__(self, key: SigningKey) -> None:
        self._key = key
        cls = algorithm_for(key.alg, None)
        assert cls is not None
        self._cls = cls
        self._algorithm = cls(private_key=key.private)
        # Covered component lists: a handful of variants per configuration (content-type, dpop,
        # request digest present or not), each parsed once by the library's own parser.
        self._covered: dict[tuple[str, ...], tuple[tuple[Any, dict[str, Any]], ...]] = {}

    def _components(self, covered: tuple[str, ...]) -> list[Item]:
        parsed = self._covered.get(covered)
        if parsed is None:
            parsed = tuple((n.value, dict(n.params)) for n in _parse_component_ids(covered))
            self._covered[covered] = parsed
        return base.components(parsed)  # fresh items: the library may hold on to them

    def headers_for(
        self, status: int, headers: Mapping[str, str], body: bytes, request: SignedRequestView
    ) -> list[tuple[str, str]]:
        """``Content-Digest``, ``Signature-Input`` and ``Signature`` for this response. ``headers``:
        the response's other headers (Content-Type is read from them)."""
        digest = content_digest(body)
        lines = [("content-digest", digest)]
        covered: tuple[str, ...] = ("@status", "content-digest")
        content_type = [v for k, v in headers.items() if k.lower() == "content-type"]
        if content_type:
            covered += ("content-type",)
            lines += [("content-type", v) for v in content_type]
        covered += ('"@method";req', '"@target-uri";req', '"authorization";req')
        req_headers = request.headers
        req_fields = ["authorization"]
        if "DPoP" in req_headers:
            covered += ('"dpop";req',)
            req_fields.append("dpop")
        if "Content-Digest" in req_headers:
            covered += ('"content-digest";req',)
            req_fields.append("content-digest")
        items = self._components(covered)
        req_view = base.MessageView(request.method, request.url, base.field_lines(req_headers, req_fields))
        params = {"created": int(time.time()), "keyid": self._key.kid, "tag": RESPONSE_TAG}
        signature_base, signature_params = base.signature_base(
            base.ResponseView(status, base.FieldLines(lines), req_view), items, params, self._cls)
        signature = base64.b64encode(self._algorithm.sign(signature_base)).decode("ascii")
        return [
            ("Content-Digest", digest),
            ("Signature-Input", f"{LABEL}={signature_params}"),
            ("Signature", f"{LABEL}=:{signature}:"),
        ]
