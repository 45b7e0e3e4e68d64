"""Values passed from one pipeline stage to the next.

    AuthRequest --credentials--> Credentials --verify--> VerifiedToken
                --bind--> Binding --policy--> Decision

All are immutable; a stage never reaches into another stage's internals, only into these.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from multidict import CIMultiDictProxy

__all__ = (
    "AuthRequest",
    "Binding",
    "BindingType",
    "BodyReader",
    "Credentials",
    "Decision",
    "PeerCertificate",
    "VerifiedToken",
    "b64url",
    "sha256_b64url",
)

BindingType = Literal["dpop", "mtls", "none"]


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sha256_b64url(data: bytes) -> str:
    return b64url(hashlib.sha256(data).digest())


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The client certificate, from our own handshake (``tls``) or a trusted front proxy (``header``)."""

    der: bytes
    source: Literal["tls", "header"] = "tls"
    # RFC 8705 §3.1: base64url(SHA-256(DER)), computed once per certificate.
    x5t_s256: str = field(default="")

    def __post_init__(self) -> None:
        if not self.x5t_s256:
            object.__setattr__(self, "x5t_s256", sha256_b64url(self.der))


class BodyReader(Protocol):
    """The request body, read on demand by a stage that inspects it (``gateway.authz.body``)."""

    async def read(self, limit: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """What the auth decision needs to know about a request, independent of how it arrived.

    ``url`` is the URL the client saw (external origin + canonical path, no query): the DPoP
    ``htu`` is compared with it. It is built from configuration, or from a Host / trusted
    forwarded header validated against it (``gateway.origin``), never from an unchecked one;
    ``""`` when no origin can be trusted (every proof then fails). ``path`` is the canonical path.
    """

    method: str
    url: str
    path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    peer_cert: PeerCertificate | None
    remote: str | None = None
    # The route's path template parameters (``gateway.routing``): typed, percent-decoded.
    path_params: Mapping[str, str | int] = field(default_factory=dict)
    # The proxy listener's body, for routes that inspect it; None on the decision fronts.
    body: BodyReader | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """The access token and proof as presented. ``scheme`` is normalised (case-insensitive on input)."""

    scheme: Literal["Bearer", "DPoP"]
    token: str
    dpop_proof: str | None = None


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A genuine, live access token (JWT or introspected). Route-independent, so it is cacheable.

    Audience and scope are checked per route by the policy stage, binding by the bind stage.
    """

    issuer: str
    subject: str | None
    client_id: str | None
    audience: tuple[str, ...]
    scopes: frozenset[str]
    expires_at: float
    jti: str | None
    cnf_jkt: str | None
    cnf_x5t_s256: str | None
    source: Literal["jwt", "introspection"]
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Binding:
    """The sender constraint that was proven: which kind and the thumbprint it was proven with."""

    type: BindingType
    thumbprint: str | None = None
    # Headers for the client that the binding stage wants sent, e.g. a fresh DPoP-Nonce (RFC 9449 §8.2);
    # the policy stage copies them into ``Decision.response_headers``.
    response_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """An allowed request: who it is for and what to add toward the upstream and the client."""

    token: VerifiedToken | None
    binding: Binding
    # Verified identity headers for the upstream (names already stripped from the request).
    upstream_headers: tuple[tuple[str, str], ...] = ()
    # Extra response headers for the client, e.g. a fresh DPoP-Nonce (RFC 9449 §8.2).
    response_headers: tuple[tuple[str, str], ...] = ()
    # Report-only routes (gateway.report): the reason code of the refusal that was not enforced.
    would_refuse: str | None = None


ALLOW_ANONYMOUS = Decision(token=None, binding=Binding("none"))
