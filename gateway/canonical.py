"""One reading of the request target and of ``Host``, made once, before anything uses them.

Route matching, the DPoP ``htu`` path and the request target sent upstream all come from
``canonical_target``; routing, ``htu`` and ``X-Forwarded-Host``/``Forwarded`` from
``parse_authority``. A form that a later decoder (the upstream, a framework, a file system) could
read differently from the gateway is refused with 400, never passed on (issue #13, findings 2/9).

Path decisions (RFC 3986 §6.2.2 syntax-based normalisation, then refusal):

* percent-encoded unreserved characters, sub-delims other than ``;``, ``:`` and ``@`` are
  decoded (``/%70ayments`` is ``/payments``); other escapes keep their octet, hex upper-cased;
* refused: ``;`` (path parameters: Tomcat/Spring strip ``..;``), encoded ``/ \\ ; % ? #`` and
  control octets (``%2F``, ``%5C``, ``%3B``, double encoding ``%25``, ``%00``), malformed escapes,
  escaped octets that are not valid UTF-8 (overlong ``%C0%AE``, surrogates), empty segments
  (``//``; a trailing ``/`` is kept), dot segments (``.``/``..``, also ``%2e``), raw characters
  outside RFC 3986, and by default a segment ending in ``.`` or space (IIS/ASP.NET trim them:
  ``/api./x`` would be served as ``/api/x``);
* the query is forwarded as received (it takes no part in routing) but may not hold a fragment,
  controls or non-ASCII characters.

Case is kept; whether routes match case-insensitively is the router's setting (``paths``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import InvalidRequestError

__all__ = (
    "DECODED_IN_PATHS", "MAX_TARGET", "Authority", "Target", "canonical_path", "canonical_target", "parse_authority"
)

MAX_TARGET = 8192  # aiohttp's request-line limit; also bounds the work done here

_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
# pchar minus ";" (RFC 3986 §3.3): legal as is, and decoded when percent-encoded (the DPoP htu
# comparison decodes the same set, so a proof names the path the way the router reads it).
_PLAIN = DECODED_IN_PATHS = frozenset(_UNRESERVED + "!$&'()*+,=:@")
# Octets that may only appear percent-encoded and stay so: printable ASCII that is not a pchar.
_KEEP_ENCODED = frozenset(b" \"<>[]^`{|}")
_HEX = frozenset("0123456789abcdefABCDEF")
_QUERY_BAD = re.compile(r"[^\x21-\x7e]|#")
# Already canonical and unambiguous when it also holds no '.': the common case, checked at C speed.
_SIMPLE = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,=:@]+)+/?|/")


def _bad(what: str) -> InvalidRequestError:
    return InvalidRequestError(f"unsupported request path ({what})", reason="bad_path")


@dataclass(frozen=True, slots=True)
class Target:
    """The canonical request target: ``path`` (routing, htu) and the raw ``query`` (``None``: no ``?``)."""

    path: str
    query: str | None

    def __str__(self) -> str:
        return self.path if self.query is None else f"{self.path}?{self.query}"


def _segment(raw: str, *, allow_trailing_dot: bool) -> str:
    """One path segment in canonical form; raises on every form listed in the module docstring."""
    out: list[str] = []
    utf8 = bytearray()  # escaped non-ASCII octets of the current run, checked as UTF-8
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == "%":
            h = raw[i + 1 : i + 3]
            if len(h) != 2 or h[0] not in _HEX or h[1] not in _HEX:
                raise _bad("malformed percent-encoding")
            octet = int(h, 16)
            i += 3
            if octet >= 0x80:
                utf8.append(octet)
                continue
            _flush(utf8, out)
            ch = chr(octet)
            if ch in _PLAIN:
                out.append(ch)
            elif octet in _KEEP_ENCODED:
                out.append(f"%{octet:02X}")
            else:  # / \ ; % ? # and controls: a later decoder could split or re-decode on them
                raise _bad(f"encoded {'control octet' if octet < 0x20 or octet == 0x7F else repr(ch)}")
            continue
        _flush(utf8, out)
        if c not in _PLAIN:
            raise _bad("';' path parameters" if c == ";" else "character not allowed in a path")
        out.append(c)
        i += 1
    _flush(utf8, out)
    seg = "".join(out)
    if seg in (".", ".."):
        raise _bad("dot segment")
    if not allow_trailing_dot and (seg.endswith(".") or seg.endswith("%20")):
        raise _bad("segment ends with a dot or space")
    return seg


def _flush(utf8: bytearray, out: list[str]) -> None:
    if not utf8:
        return
    try:
        bytes(utf8).decode("utf-8", errors="strict")  # refuses overlong forms and surrogates
    except UnicodeDecodeError:
        raise _bad("escaped octets are not valid UTF-8") from None
    out.append("".join(f"%{b:02X}" for b in utf8))
    utf8.clear()


def canonical_path(path: str, *, allow_trailing_dot: bool = False) -> str:
    """The canonical form of an absolute path (no query); ``InvalidRequestError`` if refused."""
    if "." not in path and _SIMPLE.fullmatch(path) is not None:
        return path
    if not path.startswith("/"):
        raise _bad("not an absolute path")
    if len(path) > MAX_TARGET:
        raise _bad("too long")
    segments = path[1:].split("/")
    last = len(segments) - 1
    out = []
    for k, raw in enumerate(segments):
        if not raw:
            if k != last:  # "//": collapsing it would forward another path than the client sent
                raise _bad("empty segment")
            out.append("")
            continue
        out.append(_segment(raw, allow_trailing_dot=allow_trailing_dot))
    return "/" + "/".join(out)


def canonical_target(raw: str, *, allow_trailing_dot: bool = False) -> Target:
    """The request target (origin-form, RFC 9112 §3.2.1) in canonical form, or 400."""
    if len(raw) > MAX_TARGET:
        raise _bad("too long")
    path, sep, query = raw.partition("?")
    if sep and _QUERY_BAD.search(query):
        raise _bad("character not allowed in the query")
    return Target(canonical_path(path, allow_trailing_dot=allow_trailing_dot), query if sep else None)


# --- Host (RFC 9112 §3.2, RFC 3986 §3.2.2) ---------------------------------------------------------

# LDH labels (underscore tolerated for internal names), already lower-cased. No percent-encoding,
# no sub-delims: nothing that could close a quoted string or start a parameter downstream.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_REG_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class Authority:
    """A validated ``host [":" port]``: ``name`` lower-case (IPv6 without brackets), ``port`` or None."""

    name: str
    port: int | None = None

    @property
    def host(self) -> str:
        return f"[{self.name}]" if ":" in self.name else self.name

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def _bad_host(what: str) -> InvalidRequestError:
    return InvalidRequestError(f"invalid Host ({what})", reason="bad_host")


def parse_authority(value: str) -> Authority:
    """``Host`` / ``X-Forwarded-Host`` as an RFC 3986 authority without userinfo; 400 otherwise."""
    if not value or len(value) > 261:
        raise _bad_host("empty" if not value else "too long")
    text = value.lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _bad_host("unterminated IPv6 literal")
        literal = text[1:end]
        try:
            if "%" in literal:  # a zone id names an interface of the client, not this server
                raise ValueError(literal)
            name = str(ipaddress.IPv6Address(literal))
        except ValueError:
            raise _bad_host("bad IPv6 literal") from None
        rest = text[end + 1 :]
    else:
        name, colon, port_text = text.partition(":")
        rest = colon + port_text
        if len(name) > 253 or _REG_NAME.fullmatch(name) is None:
            raise _bad_host("not a host name")
    port: int | None = None
    if rest:
        if rest[0] != ":":
            raise _bad_host("unexpected characters after the host")
        if rest[1:]:
            if _PORT.fullmatch(rest[1:]) is None or not 0 < int(rest[1:]) <= 65535:
                raise _bad_host("bad port")
            port = int(rest[1:])
    return Authority(name, port)
