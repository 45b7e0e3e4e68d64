"""Which headers cross the gateway (RFC 9110 §7.6.1, RFC 9112, RFC 7239; checklist PRX-01..05,
PRX-17, AUTHZ-04).

Before auth (``check_request``): a transfer coding other than chunked is 501, our own Via
pseudonym coming back is a loop (508), underscore header names are refused by default.
Toward the upstream: hop-by-hop fields and every field named in ``Connection`` are removed, so are
client-sent copies of forwarding and identity headers (``names.py``, matched by normalised name:
a client must never speak for another identity), method/URL override headers and the client's
credentials unless the route opts in; ``Max-Forwards`` is decremented; then ``X-Forwarded-*``,
``Forwarded`` (every value an RFC 7239 token or quoted-string) and ``Via`` are set by us and the
verified identity is injected. Toward the client: hop-by-hop fields and an upstream's
``DPoP-Nonce`` (only the gateway issues nonces for what it protects, RFC 9449 §9) are removed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from multidict import CIMultiDict, CIMultiDictProxy

from ..errors import HeaderRefusedError, LoopDetectedError, TransferCodingNotImplementedError
from .names import is_identity_header, is_override_header, normalise

if TYPE_CHECKING:
    from ..config import GatewayConfig, RouteConfig

log = logging.getLogger("gateway")

__all__ = (
    "HOP_BY_HOP",
    "HeaderPolicy",
    "default_pseudonym",
    "forwarded_element",
    "forwarded_node",
    "forwarded_value",
    "interaction_id",
)

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
UnderscorePolicy = Literal["reject", "drop", "forward"]

# --- RFC 7239 values ---------------------------------------------------------------------------

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# What a quoted-string can carry (RFC 9110 §5.6.4: qdtext and quoted-pair): HTAB, SP, VCHAR,
# obs-text. Any other control character cannot be represented, so the value is refused.
_UNQUOTABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def forwarded_value(value: str) -> str:
    """``value`` as an RFC 7239 ``value`` (token / quoted-string): as is when it is a token,
    else quoted with ``\\`` and ``"`` escaped, so it can never end the value early and add a
    parameter (``;``) or an element (``,``). Raises ``ValueError`` for control characters."""
    if _TOKEN.match(value):
        return value
    if _UNQUOTABLE.search(value):
        raise ValueError("control character in a Forwarded value")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def forwarded_node(address: str) -> str:
    """RFC 7239 §6 ``node`` for a peer address (unquoted): IPv6 in brackets, ``unknown`` when
    there is no usable address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    return f"[{address}]" if ip.version == 6 else address  # as received: it parsed as an address


def forwarded_element(*, for_: str, proto: str, host: str, by: str | None = None) -> str:
    """One ``forwarded-element`` (RFC 7239 §4); every value is passed through ``forwarded_value``."""
    pairs = [f"for={forwarded_value(for_)}", f"proto={forwarded_value(proto)}", f"host={forwarded_value(host)}"]
    if by is not None:
        pairs.append(f"by={forwarded_value(by)}")
    return ";".join(pairs)


# ``host [":" port]`` as a Host header carries it (RFC 9110 §7.2): a reg-name without the
# sub-delims that separate list items or parameters, or a bracketed IPv6 literal.
_AUTHORITY = re.compile(r"^(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,15}$")

# --- Via pseudonym and loops (RFC 9110 §7.6.2, §7.6.3; PRX-03, PRX-04, PRX-17) ----------------

_VIA_COMMENT = re.compile(r"\([^()]*\)")
_MAX_FORWARDS = re.compile(r"^[0-9]{1,9}$")


def default_pseudonym(cfg: GatewayConfig) -> str:
    """The name this gateway writes in ``Via`` and recognises as itself.

    ``proxy.pseudonym`` when set. Otherwise ``fapi-gateway-`` and 12 hex digits of a SHA-256 over
    the deployment's public identity: ``listen.external_origin``; else the listener certificate's
    public key (replicas share it; another deployment has its own); else this machine's host name
    and port (a sidecar: the pod). A digest, so no internal name leaks (RFC 9110 §7.6.3).
    """
    if cfg.proxy.pseudonym:
        return cfg.proxy.pseudonym
    listen = cfg.listen
    if listen.external_origin:
        material = b"origin:" + listen.external_origin.lower().encode()
    elif listen.tls is not None:
        material = b"spki:" + _public_key_der(listen.tls.cert)
    else:
        material = f"host:{socket.gethostname()}:{listen.port}".encode()
    return "fapi-gateway-" + hashlib.sha256(material).hexdigest()[:12]


def _public_key_der(cert_path: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with open(cert_path, "rb") as fh:
        pem = fh.read()
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return pem  # still stable for one file; the config loader has checked it is readable
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _via_names(values: Iterable[str]) -> Iterable[str]:
    for value in values:
        for member in _VIA_COMMENT.sub("", value).split(","):
            parts = member.split()
            if len(parts) >= 2:
                yield parts[1].lower()


def _connection_tokens(headers: Headers) -> set[str]:
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(normalise(t.strip()) for t in value.split(",") if t.strip())
    return named


# Response headers the client never gets from an upstream (by normalised name).
_RESPONSE_DROP = frozenset(HOP_BY_HOP | {"dpop-nonce"})
# Per-name decisions are cached; header names are client-chosen, so the cache is bounded.
_CACHE_LIMIT = 4096


class HeaderPolicy:
    """Precomputed per route: the names dropped from requests and the identity of this hop."""

    def __init__(
        self,
        *,
        strip: Iterable[str] = (),
        forward_credentials: bool = False,
        forward_override_headers: bool = False,
        underscore_headers: UnderscorePolicy = "reject",
        pseudonym: str = "fapi-gateway",
        server_header: str | None = None,
        relay_upstream_server: bool = False,
    ) -> None:
        # Compared by normalised name: ``X_Auth_User`` is ``X-Auth-User`` to many upstreams.
        drop = set(HOP_BY_HOP) | FORWARDING | {"host", FAPI_INTERACTION_ID, "max-forwards"}
        drop.update(normalise(h) for h in strip)
        if not forward_credentials:
            drop |= CREDENTIALS
        self._drop = frozenset(drop)
        self._overrides = forward_override_headers
        self._underscores = underscore_headers
        self._pseudonym = pseudonym.lower()
        self._via = f"1.1 {pseudonym}"
        # Server toward the client (config/proxy.py): none by default, the upstream's dropped.
        self.server_header = server_header
        self._response_drop = _RESPONSE_DROP if relay_upstream_server else _RESPONSE_DROP | {"server"}
        self._decided: dict[str, bool] = {}
        self._built: dict[tuple[str, str, str], tuple[str, str]] = {}

    @classmethod
    def for_route(
        cls, cfg: GatewayConfig, route: RouteConfig, *, strip: Iterable[str], pseudonym: str
    ) -> HeaderPolicy:
        # Weaker than the defaults, so said out loud each time a config is loaded.
        if route.forward_credentials:
            clear = " in clear text (http://)" if cfg.upstream_for(route).url.startswith("http://") else ""
            log.warning("route %s: forward_credentials: the client's Authorization and DPoP headers "
                        "(live tokens and proofs) are sent to the upstream%s", route.id, clear)
        if route.forward_override_headers:
            log.warning("route %s: forward_override_headers: X-HTTP-Method-Override, X-Original-URL and "
                        "similar reach the upstream; it must not act on them", route.id)
        if cfg.proxy.underscore_headers == "forward" and route is cfg.routes[0]:  # once per load
            log.warning("proxy.underscore_headers: forward: header names with '_' reach the upstream "
                        "(identity headers are still removed under either spelling)")
        return cls(
            strip=strip,
            forward_credentials=route.forward_credentials,
            forward_override_headers=route.forward_override_headers,
            underscore_headers=cfg.proxy.underscore_headers,
            pseudonym=pseudonym,
            server_header=cfg.proxy.server_header,
            relay_upstream_server=cfg.proxy.relay_upstream_server,
        )

    # -- before auth ------------------------------------------------------------------------------

    def check_request(self, incoming: CIMultiDictProxy[str]) -> None:
        """Refusals that need no auth decision: framing we do not implement, a loop, header names."""
        te = incoming.getall("Transfer-Encoding", ())
        if te:
            # aiohttp has refused chunked-not-last and codings without chunked (400); what remains
            # is e.g. ``gzip, chunked``: decoding only the chunked layer and forwarding the rest as
            # plain content would hand the upstream a different body (RFC 9112 §6.1: 501).
            codings = [c.strip().lower() for v in te for c in v.split(",") if c.strip()]
            if codings != ["chunked"]:
                raise TransferCodingNotImplementedError("transfer coding not implemented")
        if "via" in incoming and self._pseudonym in _via_names(incoming.getall("Via")):
            raise LoopDetectedError("request already passed through this gateway")
        if self._underscores == "reject" and any("_" in name for name in incoming):
            raise HeaderRefusedError("header names with underscores are not accepted",
                                     reason="underscore_header_name")
        mf = incoming.getall("Max-Forwards", ())
        if mf and (len(mf) > 1 or not _MAX_FORWARDS.match(mf[0].strip())):
            raise HeaderRefusedError("invalid Max-Forwards", reason="invalid_max_forwards")

    # -- toward the upstream ----------------------------------------------------------------------

    def _decide(self, low: str) -> bool:
        norm = normalise(low)
        ok = not (
            low in self._drop
            or norm in self._drop
            or ("_" in low and (self._underscores != "forward" or norm == "content-length"))
            or is_identity_header(norm)
            or (not self._overrides and is_override_header(norm))
        )
        if len(self._decided) < _CACHE_LIMIT:
            self._decided[low] = ok
        return ok

    def forwards(self, name: str) -> bool:
        """Whether a request header of this name reaches the upstream (a decision front removes the
        others through its proxy, issue #15); Connection-named fields aside."""
        low = name.lower()
        ok = self._decided.get(low)
        return self._decide(low) if ok is None else ok

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
        named = _connection_tokens(incoming) if "connection" in incoming else ()
        decided = self._decided
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in incoming.items():
            low = name.lower()
            ok = decided.get(low)
            if ok is None:
                ok = self._decide(low)
            if not ok or (named and normalise(low) in named):
                continue
            out.add(name, value)
        mf = incoming.get("Max-Forwards")
        if mf is not None and _MAX_FORWARDS.match(mf.strip()):
            out["Max-Forwards"] = str(max(int(mf) - 1, 0))  # RFC 9110 §7.6.2
        addr, forwarded = self._forwarded(client_ip, proto, host)
        out["X-Forwarded-For"] = f"{prior_forwarded_for}, {addr}" if prior_forwarded_for else addr
        out["X-Forwarded-Proto"] = proto
        out["X-Forwarded-Host"] = host
        out["Forwarded"] = forwarded
        self._add_via(out, incoming)
        out[FAPI_INTERACTION_ID] = fapi_id
        for name, value in inject:
            out[name] = value
        return out

    def _forwarded(self, client_ip: str, proto: str, host: str) -> tuple[str, str]:
        """The client address for X-Forwarded-For and our ``Forwarded`` element, checked and built
        once per (peer, proto, host): the same few recur on every request."""
        key = (client_ip, proto, host)
        built = self._built.get(key)
        if built is not None:
            return built
        if not _AUTHORITY.match(host):
            raise HeaderRefusedError("invalid host", reason="invalid_host")
        if not _SCHEME.match(proto):
            raise HeaderRefusedError("invalid forwarded protocol", reason="invalid_forwarded_proto")
        node = forwarded_node(client_ip)
        built = (node.strip("[]"), forwarded_element(for_=node, proto=proto, host=host))
        if len(self._built) >= _CACHE_LIMIT:
            self._built.clear()
        self._built[key] = built
        return built

    # -- toward the client ------------------------------------------------------------------------

    def client_response_headers(self, upstream: Headers) -> CIMultiDict[str]:
        named = _connection_tokens(upstream) if "connection" in upstream else ()
        out: CIMultiDict[str] = CIMultiDict()
        drop = self._response_drop
        for name, value in upstream.items():
            norm = normalise(name)
            if norm in drop or norm in named:
                continue
            out.add(name, value)
        if self.server_header is not None:
            out["Server"] = self.server_header
        self._add_via(out, upstream)
        return out

    def _add_via(self, out: CIMultiDict[str], received: Headers) -> None:
        via = ", ".join(received.getall("Via", ()))  # RFC 9110 §7.6.3: append, keep earlier hops
        out["Via"] = f"{via}, {self._via}" if via else self._via
