"""How request paths and Host are read (``gateway.canonical``): the ``paths:`` section and the
listener's Host allowlist entries.

    paths:
      case_sensitive: false       # default: routes match ignoring ASCII case (see below)
      allow_trailing_dot: false   # default: /api./x and /api%20/x are refused (400)
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from ..canonical import canonical_path, parse_authority
from ..errors import InvalidRequestError
from .base import Model


class PathConfig(Model):
    # false (default): route prefixes match ignoring ASCII case, so /API/x cannot miss the /api
    # route, fall through to a less protected one and then be served as /api/x by a
    # case-insensitive upstream (IIS, ASP.NET, Spring with some settings). The path is still
    # forwarded, and compared with the DPoP htu, exactly as the client wrote it. true: routes
    # are case-sensitive (RFC 3986); only safe when every upstream is case-sensitive too.
    case_sensitive: bool = False
    # true: accept a segment ending in '.' or a space. IIS/ASP.NET and Windows file systems drop
    # them, so /api./x would be served as /api/x after missing the /api route.
    allow_trailing_dot: bool = False


# Path template parameters (issue #16, ``gateway.routing``): a whole segment ``{name}`` or
# ``{name:type}``. The name is what rules refer to (``{path: account_id}``, CEL ``request.params``).
PARAM_TYPES = frozenset({"str", "int", "uuid"})
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,31})(?::([a-z]+))?\}")
TemplateSegment = str | tuple[str, str]


def parse_template(value: str) -> list[TemplateSegment]:
    """A route path's segments: literal text, or ``(name, type)`` for a parameter. Assumes a
    validated route path (``RoutePath``)."""
    out: list[TemplateSegment] = []
    for seg in value[1:].split("/"):
        m = _PARAM.fullmatch(seg)
        out.append((m.group(1), m.group(2) or "str") if m else seg)
    return out


def template_params(value: str) -> dict[str, str]:
    """Parameter name -> type of a route path (empty for a plain path)."""
    return {seg[0]: seg[1] for seg in parse_template(value) if not isinstance(seg, str)}


def template_shape(value: str) -> str:
    """The path with parameter names dropped: two templates of one shape match the same requests."""
    return "/" + "/".join(seg if isinstance(seg, str) else "{:" + seg[1] + "}" for seg in parse_template(value))


def _route_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must start with /")
    if "{" in value or "}" in value:
        names: set[str] = set()
        for seg in value[1:].split("/"):
            if "{" not in seg and "}" not in seg:
                continue
            m = _PARAM.fullmatch(seg)
            if m is None:
                raise ValueError(f"{seg!r}: a template parameter is a whole segment, {{name}} or {{name:type}}")
            if m.group(2) is not None and m.group(2) not in PARAM_TYPES:
                raise ValueError(f"{seg!r}: unknown parameter type (one of {', '.join(sorted(PARAM_TYPES))})")
            if m.group(1) in names:
                raise ValueError(f"{seg!r}: parameter {m.group(1)!r} appears twice")
            names.add(m.group(1))
        # The literal parts must be canonical like any route path: check with each parameter
        # replaced by a plain segment.
        literal = _PARAM.sub("p", value)
    else:
        literal = value
    try:
        canonical = canonical_path(literal, allow_trailing_dot=True)
    except InvalidRequestError as exc:
        raise ValueError(f"{exc.description}: route paths are matched against canonical request paths") from None
    if canonical != literal:
        raise ValueError(f"not in canonical form: write {canonical!r}")
    return value


def _host_entry(value: str) -> str:
    try:
        return str(parse_authority(value))
    except InvalidRequestError as exc:
        raise ValueError(f"{exc.description}: expected host or host:port") from None


def _host_name(value: str) -> str:
    entry = _host_entry(value)
    if parse_authority(entry).port is not None:
        raise ValueError("a host name without a port: routes match the Host name only")
    return parse_authority(entry).name


def check_origin_authority(netloc: str) -> None:
    """An origin's ``host[:port]`` must be what a valid Host header could say (no userinfo, port 0...)."""
    _host_entry(netloc)


# A route's path or path prefix: canonical, so that the router compares like with like.
RoutePath = Annotated[str, AfterValidator(_route_path)]
# One accepted Host: a DNS name or IP literal, optionally with a port.
HostEntry = Annotated[str, AfterValidator(_host_entry)]
# A route's ``match.host``: a name as Host would carry it, lower-cased, without a port.
HostName = Annotated[str, AfterValidator(_host_name)]
