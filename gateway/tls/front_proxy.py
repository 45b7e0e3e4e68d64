"""The client certificate as forwarded by a trusted TLS-terminating front proxy.

Formats: RFC 9440 §2 ``Client-Cert`` / ``Client-Cert-Chain`` (RFC 8941 §3.3.5 byte sequences),
Envoy ``X-Forwarded-Client-Cert`` (``Hash=``, ``Cert=``, ``Chain=``), NGINX
``$ssl_client_escaped_cert`` (url-encoded PEM), PEM with folded newlines, base64 DER, AWS ALB
``X-Amzn-Mtls-Clientcert`` (url-encoded PEM, leaf first) and Traefik ``passTLSClientCert``
(``X-Forwarded-Tls-Client-Cert``: base64 DER list).

RFC 8705 §6.5 leaves the proxy-to-gateway channel out of scope; RFC 9700 §4.13 requires that
such headers be honoured only from the authenticated hop. So a header counts only when the peer
is trusted (source address and/or the proxy's own TLS certificate); anyone else's copy is ignored
(and stripped by the proxy stage). A trusted proxy's malformed header is 400, never a 500.

The proxy's certificate is best pinned by thumbprint (``x5t_s256``): exactly one certificate. A
subject DN names whatever any trusted issuer puts in a certificate, so DN trust is logged as a
warning at start-up and only counts for a CA-issued certificate, never for a self-signed one (a
client's registered self-signed certificate can carry any DN it likes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import logging
import math
import re
from urllib.parse import unquote

from cachetools import TTLCache
from multidict import CIMultiDictProxy

from ..config.mtls import FrontProxyConfig
from ..errors import InvalidRequestError
from ..model import PeerCertificate, b64url
from .checks import CertFacts, parse_cert_facts

__all__ = (
    "FrontProxy",
    "parse_der_b64",
    "parse_pem_certs",
    "parse_rfc9440",
    "parse_rfc9440_chain",
    "parse_traefik",
    "parse_url_pem",
    "parse_xfcc",
)

log = logging.getLogger(__name__)

_PEM = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)
_WS = re.compile(r"\s+")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_STD_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_MALFORMED = "malformed client certificate header"


def _b64(text: str) -> bytes:
    text = _WS.sub("", text)
    if "-" in text or "_" in text:  # tolerate base64url
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    der = base64.b64decode(text, validate=True)
    if not der:
        raise ValueError("empty certificate")
    return der


def parse_pem_certs(text: str) -> list[bytes]:
    """DER of every PEM certificate in ``text``; newlines may be folded into spaces or tabs."""
    blocks = _PEM.findall(text)
    if not blocks:
        raise ValueError("no PEM certificate")
    return [_b64(body) for body in blocks]


def parse_url_pem(value: str) -> list[bytes]:
    """URL-encoded PEM (NGINX ``$ssl_client_escaped_cert``, AWS ALB; '+' is literal there)."""
    return parse_pem_certs(unquote(value, errors="strict"))


def parse_der_b64(value: str) -> bytes:
    return _b64(value)


def parse_traefik(value: str) -> list[bytes]:
    """Traefik ``passTLSClientCert`` (``pem: true``): each certificate's PEM body without armour
    or newlines (base64 DER), comma-separated, leaf first. Traefik 2 URL-escapes the value
    (``url.QueryEscape``: ``+ / =`` as ``%2B %2F %3D``), Traefik 3 sends it as it is; both are read
    (base64 holds no ``%``, and a ``+`` is base64's own, never an escaped space)."""
    text = unquote(value, errors="strict") if "%" in value else value
    parts = [p.strip() for p in text.split(",")]
    if any(not p or not _STD_B64.fullmatch(p) for p in parts):
        raise ValueError("not a list of base64 certificates")
    return [_b64(p) for p in parts]


def _sf_binary(item: str) -> bytes:
    # RFC 8941 §3.3.5: ":" base64 ":"; parameters (";...") are not used by RFC 9440.
    item = item.strip()
    if len(item) < 3 or item[0] != ":" or item[-1] != ":" or ";" in item:
        raise ValueError("not a structured-field byte sequence")
    body = item[1:-1]
    if not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", body):
        raise ValueError("not base64")
    return _b64(body)


def parse_rfc9440(value: str) -> bytes:
    """RFC 9440 §2.2 ``Client-Cert``: one byte sequence holding the DER certificate."""
    return _sf_binary(value)


def parse_rfc9440_chain(value: str) -> list[bytes]:
    """RFC 9440 §2.3 ``Client-Cert-Chain``: a list of byte sequences (comma-separated)."""
    return [_sf_binary(member) for member in value.split(",") if member.strip()]


def _split_unquoted(text: str, sep: str) -> list[str]:
    out: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            buf.append(ch)
            escaped = True
        elif ch == '"':
            buf.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    if quoted:
        raise ValueError("unterminated quoted string")
    out.append("".join(buf))
    return out


def _unquote_value(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_xfcc(value: str) -> tuple[bytes | None, str | None, list[bytes]]:
    """Envoy XFCC -> (leaf DER or None, x5t#S256 from ``Hash`` or None, chain DERs after the leaf).

    Exactly one element is accepted: with several, which one is the client depends on how every
    hop was configured (an edge that appends instead of sanitising lets the client add its own),
    so we refuse to guess. Configure the edge with ``forward_client_cert_details: SANITIZE_SET``.
    """
    elements = [e for e in _split_unquoted(value, ",") if e.strip()]
    if len(elements) != 1:
        raise ValueError("expected exactly one XFCC element")
    fields: dict[str, str] = {}
    for pair in _split_unquoted(elements[0], ";"):
        if not pair.strip():
            continue
        key, eq, raw = pair.partition("=")
        if not eq:
            raise ValueError("XFCC pair without '='")
        fields.setdefault(key.strip().lower(), _unquote_value(raw))
    der = parse_url_pem(fields["cert"])[0] if "cert" in fields else None
    x5t: str | None = None
    if "hash" in fields:
        digest = fields["hash"]
        if not _HEX64.match(digest):
            raise ValueError("XFCC Hash is not a hex SHA-256")
        x5t = b64url(bytes.fromhex(digest))
        if der is not None and hashlib.sha256(der).hexdigest() != digest.lower():
            raise ValueError("XFCC Hash does not match Cert")
    chain: list[bytes] = []
    if "chain" in fields:
        chain = parse_url_pem(fields["chain"])[1:]  # Envoy's Chain starts with the leaf
    if der is None and x5t is None:
        raise ValueError("XFCC element has neither Cert nor Hash")
    return der, x5t, chain


def _hash_only(x5t: str) -> CertFacts:
    # Only the thumbprint is known: dates, usage and revocation were the proxy's to check.
    return CertFacts(
        peer=PeerCertificate(der=b"", source="header", x5t_s256=x5t),
        not_before=-math.inf,
        not_after=math.inf,
        subject="",
        issuer="",
        serial=-1,
        usage_ok=True,
        ca_depth=None,
    )


class FrontProxy:
    """Decides whether a request comes from the trusted proxy, and reads the certificate it forwarded."""

    def __init__(self, cfg: FrontProxyConfig) -> None:
        self.header = cfg.header_name
        self.chain_header = cfg.chain_header
        self._format = cfg.format
        self._max_bytes = cfg.max_header_bytes
        self._nets = tuple(ipaddress.ip_network(c, strict=False) for c in cfg.trusted_cidrs)
        self._x5ts = frozenset(i.x5t_s256 for i in cfg.trusted_identities if i.x5t_s256)
        self._subjects = frozenset(i.subject for i in cfg.trusted_identities if i.subject)
        if self._subjects:
            log.warning(
                "client_certs.front_proxy.trusted_identities: %d entr%s trust the front proxy by subject DN; "
                "any CA in listen.tls.client_ca can issue that DN. Prefer x5t_s256 (the SHA-256 "
                "thumbprint of the proxy's certificate)",
                len(self._subjects), "y" if len(self._subjects) == 1 else "ies",
            )
        self._by_remote: TTLCache[str, bool] = TTLCache(maxsize=4096, ttl=300)
        # Header value(s) -> facts, or None for a value known to be malformed.
        self._parsed: TTLCache[tuple[str, str | None], CertFacts | None] = TTLCache(maxsize=4096, ttl=300)

    def _remote_trusted(self, remote: str | None) -> bool:
        if not self._nets:
            return True
        if not remote:
            return False
        hit = self._by_remote.get(remote)
        if hit is None:
            try:
                ip = ipaddress.ip_address(remote.split("%", 1)[0])
            except ValueError:
                hit = False
            else:
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                hit = any(ip in net for net in self._nets)
            self._by_remote[remote] = hit
        return hit

    def _identity_trusted(self, proxy_tls: CertFacts | None) -> bool:
        if not self._x5ts and not self._subjects:
            return True
        if proxy_tls is None:
            return False
        if proxy_tls.peer.x5t_s256 in self._x5ts:
            return True
        # DN only for a certificate a CA issued: not self-issued, and at least one CA above it in
        # the verified chain when that is known (a resumed session has none).
        issued = proxy_tls.issuer != proxy_tls.subject and (proxy_tls.ca_depth is None or proxy_tls.ca_depth >= 1)
        return issued and proxy_tls.subject in self._subjects

    def is_trusted(self, remote: str | None, proxy_tls: CertFacts | None) -> bool:
        """Both configured conditions hold: source address in range AND the proxy's own cert matches."""
        return self._remote_trusted(remote) and self._identity_trusted(proxy_tls)

    def certificate(self, headers: CIMultiDictProxy[str]) -> CertFacts | None:
        """The forwarded client certificate (None: the proxy's client sent none). 400 if malformed."""
        values = headers.getall(self.header, ())
        if not values:
            return None
        chain_value: str | None = None
        if self.chain_header:
            chain_values = headers.getall(self.chain_header, ())
            chain_value = ", ".join(chain_values) if chain_values else None
        if len(values) != 1:
            raise InvalidRequestError(_MALFORMED, reason="client_cert_header_malformed")
        key = (values[0], chain_value)
        try:
            facts = self._parsed[key]
        except KeyError:
            facts = self._parse(*key)
            self._parsed[key] = facts
        if facts is None:
            raise InvalidRequestError(_MALFORMED, reason="client_cert_header_malformed")
        return facts

    def _parse(self, value: str, chain_value: str | None) -> CertFacts | None:
        if len(value) + len(chain_value or "") > self._max_bytes:
            return None
        try:
            x5t: str | None = None
            chain: list[bytes] | None = None
            der: bytes | None
            if self._format == "rfc9440":
                der = parse_rfc9440(value)
                if chain_value is not None:
                    chain = parse_rfc9440_chain(chain_value)
            elif self._format == "xfcc":
                der, x5t, xchain = parse_xfcc(value)
                chain = xchain or None
            elif self._format == "traefik":
                certs = parse_traefik(value)
                der, chain = certs[0], (certs[1:] or None)
            elif self._format in ("nginx", "aws_alb"):
                certs = parse_url_pem(value)
                der, chain = certs[0], (certs[1:] or None)
            elif self._format == "pem":
                certs = parse_pem_certs(value)
                der, chain = certs[0], (certs[1:] or None)
            else:
                der = parse_der_b64(value)
            if der is None:
                assert x5t is not None
                return _hash_only(x5t)
            return parse_cert_facts(der, ca_depth=len(chain) if chain is not None else None, source="header")
        except (ValueError, binascii.Error, UnicodeError):
            return None
