"""Which headers cross the gateway (RFC 9110 §7.6.1, RFC 9112; checklist PRX-01..05, AUTHZ-04).

Toward the upstream: hop-by-hop fields and every field named in ``Connection`` are removed, so are
client-sent copies of forwarding and identity headers (a client must never speak for another
identity); then ``X-Forwarded-*``, ``Forwarded`` and ``Via`` are set by us and the verified
identity is injected. Toward the client: hop-by-hop fields are removed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ("HOP_BY_HOP", "HeaderPolicy", "interaction_id")

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Connection",
        "Proxy-Authenticate",
        "Proxy-Authorization",
    )
)

# Forwarding headers the gateway sets itself; client-sent copies never pass (PRX-05).
FORWARDING = frozenset(
    (
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "forwarded",
        "x-real-ip",
    )
)

CREDENTIALS = frozenset(("authorization", "dpop"))

# Headers that carry client or user identity. Upstreams behind gateways often trust them blindly,
# so a client-sent copy never passes (RFC 9700 §4.13 / AUTHZ-04, MTLS-13). The list is
# configurable (``client_certs.strip_headers``); this is the default.
DEFAULT_IDENTITY_HEADERS = (
    "X-Forwarded-Client-Cert",
    "Client-Cert",
    "Client-Cert-Chain",
    "X-Client-Cert",
    "X-SSL-Client-Cert",
    "X-SSL-Client-Verify",
    "X-SSL-Client-S-DN",
    "X-SSL-Client-I-DN",
    "X-SSL-Client-Serial",
    "SSL-Client-Cert",
    "X-Amzn-Mtls-Clientcert",
    "X-Amzn-Mtls-Clientcert-Leaf",
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Groups",
    "X-Remote-User",
    "Remote-User",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Preferred-Username",
    "X-Auth-Request-Groups",
    "X-Userinfo",
    "X-User",
    "X-User-Id",
    "X-Authenticated-User",
    "X-Consumer-Id",
    "X-Consumer-Username",
    "X-Credential-Identifier",
)

FAPI_INTERACTION_ID = "x-fapi-interaction-id"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def new_interaction_id() -> str:
    """A random (version 4) UUID as text, built directly: ``str(uuid.uuid4())`` costs several µs."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def interaction_id(headers: CIMultiDictProxy[str]) -> str:
    """FAPI 1.0 Part 1 §6.2.1 item 11: echo a valid client-sent id (a UUID), else make one."""
    value = headers.get(FAPI_INTERACTION_ID)
    if value is not None and _UUID.match(value):
        return value
    return new_interaction_id()


Headers = CIMultiDictProxy[str] | CIMultiDict[str]


def _connection_tokens(headers: Headers) -> set[str]:
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return named


def _forwardable(headers: Headers, drop: frozenset[str]) -> CIMultiDict[str]:
    """``headers`` without the names in ``drop`` (lower-case) and without every field named in
    ``Connection`` (RFC 9110 §7.6.1). Repeated headers keep their order."""
    named = _connection_tokens(headers) if "connection" in headers else ()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        low = name.lower()
        if low in drop or low in named:
            continue
        out.add(name, value)
    return out


class HeaderPolicy:
    """Precomputed per route: the names dropped from requests and the identity of this hop."""

    def __init__(
        self,
        *,
        strip: Iterable[str] = (),
        forward_credentials: bool = True,
        via: str = "1.1 fapi-gateway",
    ) -> None:
        drop = set(HOP_BY_HOP) | FORWARDING | {"host", FAPI_INTERACTION_ID}
        drop.update(h.lower() for h in strip)
        if not forward_credentials:
            drop |= CREDENTIALS
        self._drop = frozenset(drop)
        self._via = via

    def upstream_request_headers(
        self,
        incoming: CIMultiDictProxy[str],
        *,
        client_ip: str,
        proto: str,
        host: str,
        fapi_id: str,
        inject: Iterable[tuple[str, str]] = (),
        prior_forwarded_for: str | None = None,
    ) -> CIMultiDict[str]:
        """Headers for the upstream request. Repeated headers keep their order."""
        out = _forwardable(incoming, self._drop)
        xff = f"{prior_forwarded_for}, {client_ip}" if prior_forwarded_for else client_ip
        out["X-Forwarded-For"] = xff
        out["X-Forwarded-Proto"] = proto
        out["X-Forwarded-Host"] = host
        node = f'"[{client_ip}]"' if ":" in client_ip else client_ip
        out["Forwarded"] = f'for={node};proto={proto};host="{host}"'
        self._add_via(out, incoming)
        out[FAPI_INTERACTION_ID] = fapi_id
        for name, value in inject:
            out[name] = value
        return out

    def client_response_headers(self, upstream: Headers) -> CIMultiDict[str]:
        out = _forwardable(upstream, HOP_BY_HOP)
        self._add_via(out, upstream)
        return out

    def _add_via(self, out: CIMultiDict[str], received: Headers) -> None:
        via = received.get("Via")
        out["Via"] = f"{via}, {self._via}" if via else self._via
