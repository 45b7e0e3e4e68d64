"""The host names a listener serves, read from its certificate (RFC 6125 style matching), and
the SNI name each TLS connection asked for.

Used when no ``external_origin`` or ``allowed_hosts`` is configured: a request's Host must be one
of these names, so a client cannot make the gateway rebuild a foreign URL as "the URL it signed"
(DPoP ``htu``). Where the client sent SNI, Host must name the same server (RFC 9110 §7.4: 421).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

__all__ = ("ServerNames", "hostname", "remember_sni", "server_names", "sni_of")

# SSLObject -> the SNI host name of its ClientHello. Server-side SSLObjects do not expose it, so
# the listening context's sni_callback records it here; weak keys: gone with the connection.
_SNI: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def remember_sni(ssl_object: Any, server_name: str | None) -> None:
    """Called from the listener's ``sni_callback``."""
    if server_name:
        _SNI[ssl_object] = server_name.lower().rstrip(".")


def sni_of(transport: Any) -> str | None:
    """The SNI name the client sent on this connection, or None (no TLS, no SNI, IP literal)."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return _SNI.get(ssl_object) if ssl_object is not None else None


def hostname(host: str) -> str:
    """``Host`` without its port, lower case; IPv6 literals lose their brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass(frozen=True, slots=True)
class ServerNames:
    exact: frozenset[str]
    wildcard_parents: frozenset[str]  # "*.bank.example" -> "bank.example"

    def match(self, host: str) -> bool:
        name = hostname(host)
        if not name:
            return False
        if name in self.exact:
            return True
        head, _, parent = name.partition(".")
        return bool(head) and parent in self.wildcard_parents


def server_names(cert_file: str | Path) -> ServerNames:
    """DNS and IP subject alternative names of the first certificate in ``cert_file``."""
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    exact: set[str] = set()
    wild: set[str] = set()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for dns in san.get_values_for_type(x509.DNSName):
            dns = dns.lower().rstrip(".")
            if dns.startswith("*."):
                wild.add(dns[2:])
            else:
                exact.add(dns)
        for ip in san.get_values_for_type(x509.IPAddress):
            exact.add(str(ip))
    else:  # legacy certificate without SANs: its common name is the only name it has
        for attr in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
            exact.add(str(attr.value).lower())
    return ServerNames(frozenset(exact), frozenset(wild))
