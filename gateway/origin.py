"""Which public URL a request was sent to (issue #13, findings 2 and 3; PRX-10, DPOP-14).

``Host`` (or, from a trusted proxy only, ``X-Forwarded-Host`` / ``X-Forwarded-Proto``) is parsed
as an RFC 3986 authority (``gateway.canonical.parse_authority``: no path, query, userinfo or
quoting; 400 otherwise) and must name this listener:

* port: absent, the listener's own port, or the port of a configured external origin or
  ``listen.allowed_hosts`` entry (400 otherwise: ``Host: api:1`` is another server's URL). An
  absent port means the scheme's default (RFC 3986 §6.2.3): accepted (a load balancer on :443 in
  front of the listener is common), but an htu is built from it only when that port is ours;
* name: one of the external origins' hosts or ``listen.allowed_hosts`` when any is configured;
  else (TLS, no origin) one of the server certificate's names; else anything well-formed (plain
  HTTP without an origin: no route there may accept DPoP, the config refuses it). 421 otherwise;
* SNI: where the client sent one (and no trusted proxy speaks for it), Host must be that name.

The DPoP ``htu`` is then compared with the configured external origin, or, without one, with an
origin built only from these validated parts; when the name could not be checked at all, with
no URL (every proof fails: closed). Only the validated authority reaches ``X-Forwarded-Host`` and
``Forwarded``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from multidict import CIMultiDictProxy

from .canonical import Authority, parse_authority
from .config import GatewayConfig
from .errors import InvalidRequestError, MisdirectedRequestError
from .tls.names import ServerNames, sni_of

__all__ = ("HostPolicy", "PublicRequest")

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class PublicRequest:
    """The validated public side of a request: what the client addressed, and over which scheme."""

    authority: Authority
    proto: str
    # True when name and port are ones this gateway is configured (origins, allowlist) or
    # certified to serve: only then may an htu origin be built from them.
    checked: bool

    def origin(self, configured: str | None) -> str:
        """The origin the DPoP htu is compared with ("" = none is trustworthy: proofs fail)."""
        if configured is not None:
            return configured
        return f"{self.proto}://{self.authority}" if self.checked else ""


class _Request(Protocol):
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def transport(self) -> Any: ...


class HostPolicy:
    """Per configuration: the names and ports this listener answers to."""

    def __init__(self, cfg: GatewayConfig, server_names: ServerNames | None) -> None:
        listen = cfg.listen
        self.scheme = "https" if listen.tls is not None else "http"
        names: set[str] = set()
        ports: set[int] = set()
        for origin in (listen.external_origin, *(r.external_origin for r in cfg.routes)):
            if origin is not None:
                parts = urlsplit(origin)
                names.add(parse_authority(parts.netloc).name)
                ports.add(parts.port or _DEFAULT_PORTS[parts.scheme])
        for entry in listen.allowed_hosts:
            allowed = parse_authority(entry)
            names.add(allowed.name)
            if allowed.port is not None:
                ports.add(allowed.port)
        self.names = frozenset(names)
        self.ports = frozenset(ports)
        self.server_names = server_names

    def check(
        self, request: _Request, *, trusted: bool, scheme: str | None = None, sni: str | None = None
    ) -> PublicRequest:
        """Raises 400 (malformed, wrong port) or 421 (another server's name).

        ``scheme``/``sni``: for a decision front (issue #15), how the request reached the proxy
        that asks us (that proxy's listener, not ours); None on the public listener."""
        headers = request.headers
        hosts = headers.getall("Host", ())
        if len(hosts) != 1:  # RFC 9112 §3.2: none, or more than one, is a 400
            raise InvalidRequestError("exactly one Host header is required", reason="bad_host")
        authority = parse_authority(hosts[0])
        proto = scheme or self.scheme
        forwarded = False
        if trusted:
            xfp = headers.get("X-Forwarded-Proto")
            if xfp is not None:
                proto = xfp.split(",", 1)[0].strip().lower()
                if proto not in _DEFAULT_PORTS:
                    raise InvalidRequestError("invalid X-Forwarded-Proto", reason="bad_host")
            xfh = headers.get("X-Forwarded-Host")
            if xfh is not None:
                authority = parse_authority(xfh.split(",", 1)[0].strip())
                forwarded = True
        port = authority.port
        listener_port = _listener_port(request)
        if port is not None and port not in self.ports and port != listener_port:
            raise InvalidRequestError("invalid Host (not this server's port)", reason="bad_host")
        name = authority.name
        if self.names:
            if name not in self.names:
                raise MisdirectedRequestError("this server does not serve that host")
            checked = True
        elif self.server_names is not None and not forwarded:
            if not self.server_names.match(authority.host):
                raise MisdirectedRequestError("this server does not serve that host")
            checked = True
        else:
            checked = False
        if not trusted:
            if scheme is None:
                sni = sni_of(request.transport)
            if sni is not None and sni != name:
                raise MisdirectedRequestError("Host does not name the TLS server name (SNI)")
        effective = port if port is not None else _DEFAULT_PORTS[proto]
        return PublicRequest(authority, proto, checked and (effective in self.ports or effective == listener_port))


def _listener_port(request: _Request) -> int | None:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2 and isinstance(sockname[1], int):
        return sockname[1]
    return None
