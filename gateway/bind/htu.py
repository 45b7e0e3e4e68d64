"""The DPoP ``htu`` comparison: RFC 9449 §4.3 check 9 with RFC 3986 §6.2.2 / §6.2.3 normalisation.

Query and fragment are ignored on both sides (RFC 9449 §4.3; the OIDF FAPI 2.0 suite sends an
``htu`` carrying ``?x=1#f`` and expects success). Normalisation: scheme and host lower-cased,
the default port dropped, percent-encodings of unreserved characters decoded (in the path also
the sub-delims, ``:`` and ``@`` that ``gateway.canonical`` decodes in the request path, which the
request URL is built from) and the others upper-cased, dot segments removed, an empty path made
``/``. The path stays case-sensitive.
Userinfo is refused: a proof has no business naming credentials.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..canonical import DECODED_IN_PATHS

__all__ = ("NormalizedUrl", "compare_htu", "normalize_url", "strip_query_fragment")

_DEFAULT_PORTS = {"http": "80", "https": "443"}
# RFC 3986 §2: every character a URI may contain (reserved, unreserved, '%').
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PORT = re.compile(r"[0-9]{0,5}")


@dataclass(frozen=True, slots=True)
class NormalizedUrl:
    scheme: str
    host: str
    port: str  # "" when it is the scheme's default
    path: str

    def __str__(self) -> str:
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{self.host}{port}{self.path}"


def strip_query_fragment(url: str) -> str:
    cut = len(url)
    for sep in ("?", "#"):
        i = url.find(sep)
        if 0 <= i < cut:
            cut = i
    return url[:cut]


def _pct_normalize(text: str, decoded: frozenset[str] = _UNRESERVED) -> str:
    """RFC 3986 §6.2.2.1/§6.2.2.2: decode ``decoded`` characters, upper-case the remaining escapes."""
    if "%" not in text:
        return text
    if text.count("%") != len(_PCT.findall(text)):
        raise ValueError("bad percent-encoding")

    def repl(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        return char if char in decoded else "%" + m.group(1).upper()

    return _PCT.sub(repl, text)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, on an absolute path."""
    if "." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def normalize_url(url: str) -> NormalizedUrl:
    """Normalise an absolute http(s) URL, query and fragment dropped; ``ValueError`` if it is not one."""
    if _URI_CHARS.fullmatch(url) is None:
        raise ValueError("characters not allowed in a URI")
    url = strip_query_fragment(url)
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise ValueError("not an http(s) URL")
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    if "@" in authority:
        raise ValueError("userinfo is not allowed")
    if authority.startswith("["):  # IPv6 literal
        end = authority.find("]")
        if end < 0:
            raise ValueError("bad IPv6 literal")
        host, port_part = authority[: end + 1], authority[end + 1 :]
        if port_part and not port_part.startswith(":"):
            raise ValueError("bad authority")
        port = port_part[1:]
    else:
        host, _, port = authority.partition(":")
    if not host:
        raise ValueError("no host")
    if _PORT.fullmatch(port) is None or (port and int(port) > 65535):
        raise ValueError("bad port")
    # RFC 3986 §6.2.3: an empty port and the default port are the same; so is a leading zero.
    port = str(int(port)) if port else ""
    if port == _DEFAULT_PORTS[scheme]:
        port = ""
    host = _pct_normalize(host).lower()
    path = _remove_dot_segments(_pct_normalize(path, DECODED_IN_PATHS)) if path else "/"
    return NormalizedUrl(scheme, host, port, path)


def compare_htu(htu: str, request_url: str) -> str | None:
    """``None`` when ``htu`` names ``request_url``; otherwise which part differs (client-safe text).

    ``request_url`` is the URL the client saw (trusted: built from configuration). The fast path
    is an exact match, the normal case for a well-behaved client.
    """
    if strip_query_fragment(htu) == strip_query_fragment(request_url):
        return None
    try:
        claimed = normalize_url(htu)
    except ValueError as exc:
        return f"htu is not a usable absolute URL ({exc})"
    try:
        expected = normalize_url(request_url)
    except ValueError:
        # A request path outside RFC 3986 (raw bytes...) cannot be named by any htu: refuse.
        return "htu does not match the request URI"
    if claimed == expected:
        return None
    for part in ("scheme", "host", "port", "path"):
        if getattr(claimed, part) != getattr(expected, part):
            return f"htu does not match the request URI ({part} differs)"
    return "htu does not match the request URI"  # pragma: no cover - the loop covers every field
