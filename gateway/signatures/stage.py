"""The HTTP message signature stage: between the auth decision and the upstream, in one place.

    decide (token, binding, policy) -> begin: request signature (headers only, before 100-continue)
        -> exchange.body: body read whole (max_body_bytes) + Content-Digest checked
        -> forward (exactly those bytes; response buffered up to max_response_bytes)
        -> exchange.sign: response signed, then sent

It needs the body and the response, so it is the proxy's: a decision front (ext_authz,
auth_request, forwardAuth) never sees either and refuses signed routes (``decision_refusal``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import http_sf
from aiohttp import web
from multidict import CIMultiDictProxy

from ..errors import SignedRouteNotDecidableError
from .digest import check_content_digest
from .keys import ClientKeys, SigningKeys
from .sign import ResponseSigner, SignedRequestView
from .verify import RequestVerifier, VerifiedSignature, has_content

if TYPE_CHECKING:
    from ..bind.replay import ReplayStore
    from ..config import GatewayConfig, RouteConfig
    from ..model import BodyReader

__all__ = ("Exchange", "SignatureStage", "decision_refusal", "signature_header_names")

def signature_header_names(cfg: GatewayConfig) -> frozenset[str]:
    """Identity headers this stage injects upstream: stripped from every client request."""
    return frozenset(
        r.http_signatures.identity_header.lower() for r in cfg.routes if r.http_signatures.identity_header
    )


def decision_refusal(route: RouteConfig) -> SignedRouteNotDecidableError | None:
    """A decision front cannot check a body digest nor sign a response: refuse, never allow."""
    sig = route.http_signatures
    if sig.request != "off" or sig.response == "on":
        return SignedRouteNotDecidableError(
            "this route uses HTTP message signatures, which only the gateway's proxy can check"
        )
    return None


class Exchange:
    """One request on a signed route: what was verified, and how to forward and sign."""

    __slots__ = ("_max_response", "_signer", "_view", "signature", "upstream_headers")

    def __init__(
        self,
        signature: VerifiedSignature | None,
        view: SignedRequestView,
        signer: ResponseSigner | None,
        max_response: int,
        identity_header: str | None,
    ) -> None:
        self.signature = signature
        self._view = view
        self._signer = signer
        self._max_response = max_response
        self.upstream_headers: tuple[tuple[str, str], ...] = ()
        if identity_header and signature is not None:
            value = http_sf.ser({"keyid": (signature.keyid, {}), "label": (signature.label, {})})
            self.upstream_headers = ((identity_header, value),)

    @property
    def response_limit(self) -> int | None:
        """The forwarder's ``buffer_response``: set when the response is to be signed (not HEAD)."""
        return self._max_response if self._signer is not None and self._view.method != "HEAD" else None

    async def body(self, request: web.BaseRequest, source: BodyReader, *, max_body_bytes: int) -> bytes | None:
        """The request body, read whole and its Content-Digest checked, when a signature covers it
        (the upstream then gets exactly these bytes); None: stream it as usual. ``source`` reads it
        once for every stage that needs it (an authz body rule may have read it already)."""
        sig = self.signature
        if sig is None or not (sig.digest_covered or has_content(request.headers)):
            return None
        body = await source.read(max_body_bytes)
        check_content_digest(request.headers.get("Content-Digest"), body)
        return body

    def sign(self, resp: web.StreamResponse) -> None:
        """Add the response signature to a buffered (not yet sent) response."""
        if self._signer is None or not isinstance(resp, web.Response) or resp.prepared:
            return
        payload = resp.body
        data = payload if isinstance(payload, bytes) else b""
        for name, value in self._signer.headers_for(resp.status, resp.headers, data, self._view):
            resp.headers[name] = value


class SignatureStage:
    """Built once per configuration; ``begin`` is called for every request on a signed route."""

    def __init__(self, cfg: GatewayConfig, replay: ReplayStore | None) -> None:
        self.clients = ClientKeys(cfg.clients)
        self.signing = SigningKeys(cfg.http_signatures)
        self.verifier = RequestVerifier(cfg.http_signatures, self.clients, replay)
        active = self.signing.active
        self._signer = ResponseSigner(active) if active is not None else None
        self.jwks_path = cfg.http_signatures.jwks_path

    @classmethod
    def build(cls, cfg: GatewayConfig, replay: ReplayStore | None) -> SignatureStage | None:
        used = cfg.clients or cfg.http_signatures.signing_keys or any(
            r.http_signatures.request != "off" or r.http_signatures.response == "on" for r in cfg.routes
        )
        return cls(cfg, replay) if used else None

    async def start(self) -> None:
        await self.clients.start()

    async def close(self) -> None:
        await self.clients.close()

    def jwks_response(self, fapi_id: str) -> web.Response:
        return web.Response(
            body=self.signing.jwks_document, content_type="application/jwk-set+json",
            headers={"Cache-Control": "public, max-age=300", "x-fapi-interaction-id": fapi_id},
        )

    async def begin(
        self,
        route: RouteConfig,
        method: str,
        target_uri: str,
        headers: CIMultiDictProxy[str],
        client_id: str | None,
    ) -> Exchange | None:
        """None on a route without signatures; else the verified request (raises on refusal)."""
        sig = route.http_signatures
        if sig.request == "off" and sig.response == "off":
            return None
        verified = None
        if sig.request != "off":
            verified = await self.verifier.verify(method, target_uri, headers, client_id,
                                                  required=sig.request == "required")
        signer = self._signer if sig.response == "on" else None
        return Exchange(verified, SignedRequestView(method, target_uri, headers), signer,
                        sig.max_response_bytes, sig.identity_header)


