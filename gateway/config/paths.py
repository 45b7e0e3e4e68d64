"""How request paths and Host are read (``gateway.canonical``): the ``paths:`` section and the
listener's Host allowlist entries.

    paths:
      case_sensitive: false       # default: routes match ignoring ASCII case (see below)
      allow_trailing_dot: false   # default: /api./x and /api%20/x are refused (400)
"""

from __future__ import annotations

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


def _route_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must start with /")
    try:
        canonical = canonical_path(value, allow_trailing_dot=True)
    except InvalidRequestError as exc:
        raise ValueError(f"{exc.description}: route paths are matched against canonical request paths") from None
    if canonical != value:
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
