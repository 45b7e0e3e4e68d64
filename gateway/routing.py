"""Which route a request belongs to: exact path > path template > prefix; longest prefix wins.

Prefixes match on segment boundaries (``/accounts`` matches ``/accounts`` and ``/accounts/1``,
not ``/accountsX``). The path matched is the canonical one (``gateway.canonical``: dot segments,
``//``, ``;`` and ambiguous escapes already refused), the same one the upstream receives; by
default ASCII case is ignored (``paths.case_sensitive``), so ``/API/x`` is an ``/api`` request.

Path templates (issue #16): ``/accounts/{account_id}/transactions`` (``path``) or
``/accounts/{account_id}`` (``path_prefix``, then also ``/accounts/1/anything``). A parameter is a
whole segment, ``{name}`` (text) or ``{name:int}`` / ``{name:uuid}`` (typed: a segment of another
shape does not match, the next route is tried). Precompiled to one regex per route at load. Order:

1. exact paths (``path`` without parameters);
2. templates (``path`` with parameters): the one with more segments, then the one whose first
   differing segment is a literal (then a typed parameter) wins, so ``/a/b/{x}`` beats
   ``/a/{x}/c`` and ``/a/{n:int}`` beats ``/a/{s}``; two templates of the same shape are a
   config error (``config.schema``);
3. prefixes, prefix templates included, by the same rule (more segments first; for plain
   prefixes this is "longest prefix wins").

A parameter never spans ``/``: it is one segment of the canonical path, where ``%2F``, ``%5C``,
``%25`` (double encoding), dot segments and ``;`` are already refused (400). Its value is
percent-decoded (UTF-8) and checked again after decoding (no ``/``, not ``.``/``..``, not empty)
before anything sees it. Literal segments follow ``paths.case_sensitive``; parameter values keep
the client's case (an account id is case-sensitive).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import unquote

from .config import GatewayConfig, RouteConfig, UpstreamConfig
from .config.paths import PARAM_TYPES, parse_template
from .errors import MethodNotAllowedError, RouteNotFoundError

__all__ = ("NO_PARAMS", "PathParams", "Resolved", "Route", "Router")

PathParams = Mapping[str, str | int]
NO_PARAMS: PathParams = MappingProxyType({})

log = logging.getLogger("gateway")


# A parameter's segment: pchars of the canonical path (never '/').
_SEGMENT = {"str": r"[^/]+", "int": r"[0-9]{1,18}", "uuid": r"[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}"}
assert set(_SEGMENT) == set(PARAM_TYPES)


def _compile_template(key: str, *, prefix: bool, fold_case: bool) -> tuple[re.Pattern[str], dict[str, str]]:
    parts: list[str] = []
    types: dict[str, str] = {}
    for seg in parse_template(key):
        if isinstance(seg, str):
            parts.append(re.escape(seg))
        else:
            name, kind = seg
            types[name] = kind
            parts.append(f"(?P<{name}>{_SEGMENT[kind]})")
    body = "/" + "/".join(parts)
    if prefix:
        # Segment boundary, as for plain prefixes: /accounts/{id} matches /accounts/1 and /accounts/1/x.
        body = body[:-1] + "(?:/|$)" if body.endswith("/") else body + "(?:/|$)"
    flags = re.ASCII | (re.IGNORECASE if fold_case else 0)
    return re.compile(body, flags), types


def _param_value(raw: str, kind: str) -> str | int | None:
    """The decoded value, or None when the segment must not match (checked again after decoding)."""
    if "%" in raw:
        try:
            raw = unquote(raw, errors="strict")
        except UnicodeDecodeError:  # canonical_path already refuses these; never guess
            return None
    if not raw or "/" in raw or "\\" in raw or raw in (".", ".."):
        return None
    if kind == "int":
        return int(raw)
    if kind == "uuid":
        return raw.lower()
    return raw


@dataclass(frozen=True, slots=True)
class Resolved:
    """The route for a request and its template parameters (typed, percent-decoded)."""

    route: Route
    params: PathParams = field(default_factory=lambda: NO_PARAMS)


@dataclass(frozen=True, slots=True)
class Route:
    config: RouteConfig
    upstream: UpstreamConfig
    # Sort key (descending): kind (2 exact, 1 template, 0 prefix), segment count, per-segment
    # specificity (2 literal, 1 typed, 0 text), key length, host-specific before any-host.
    rank: tuple[int, int, tuple[int, ...], int, int]
    # The configured path or prefix as compared (lower-cased unless routes are case-sensitive).
    key: str
    # Templates only: the compiled pattern (matched against the path in its original case) and
    # each parameter's type.
    pattern: re.Pattern[str] | None = None
    param_types: Mapping[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.config.id

    def params_for(self, host: str, path: str, folded: str) -> PathParams | None:
        """None: no match; else the parameters (``NO_PARAMS`` for a plain route). ``folded`` is
        ``path`` as literal routes compare it (lower-cased unless case-sensitive)."""
        m = self.config.match
        if m.host is not None and m.host.lower() != host:
            return None
        pattern = self.pattern
        if pattern is None:
            return NO_PARAMS if self.matches_path(host, folded) else None
        found = pattern.fullmatch(path) if m.path is not None else pattern.match(path)
        if found is None:
            return None
        params: dict[str, str | int] = {}
        for name, raw in found.groupdict().items():
            value = _param_value(raw, self.param_types[name])
            if value is None:
                return None
            params[name] = value
        return MappingProxyType(params)

    def matches_path(self, host: str, path: str) -> bool:
        m = self.config.match
        if m.host is not None and m.host.lower() != host:
            return False
        if self.pattern is not None:
            return self.params_for(host, path, path) is not None
        if m.path is not None:
            return path == self.key
        prefix = self.key
        if prefix.endswith("/"):
            return path.startswith(prefix) or path == prefix[:-1]
        return path == prefix or path.startswith(prefix + "/")


class Router:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.fold_case = not cfg.paths.case_sensitive
        # Weaker than the default: say so at every load (issue #13 finding 9).
        if cfg.paths.case_sensitive:
            log.warning("paths.case_sensitive: true: /API/x does not match an /api route; safe only if "
                        "every upstream is case-sensitive too")
        if cfg.paths.allow_trailing_dot:
            log.warning("paths.allow_trailing_dot: true: /api./x is accepted and can miss the /api route; "
                        "unsafe in front of IIS/ASP.NET or Windows file systems")
        routes = []
        for rc in cfg.routes:
            m = rc.match
            key = m.path or m.path_prefix or ""
            segments = parse_template(key)
            templated = any(not isinstance(seg, str) for seg in segments)
            kind = 0 if m.path is None else (1 if templated else 2)
            specificity = tuple(2 if isinstance(seg, str) else (0 if seg[1] == "str" else 1) for seg in segments)
            pattern: re.Pattern[str] | None = None
            types: dict[str, str] = {}
            if templated:
                pattern, types = _compile_template(key, prefix=m.path is None, fold_case=self.fold_case)
            routes.append(Route(rc, cfg.upstream_for(rc),
                                (kind, len(segments), specificity, len(key), 1 if m.host else 0),
                                key.lower() if self.fold_case else key, pattern, MappingProxyType(types)))
        self.routes: tuple[Route, ...] = tuple(sorted(routes, key=lambda r: r.rank, reverse=True))

    def match(self, method: str, host: str, path: str) -> Route:
        """The route for this request; ``host`` is the validated Host name (lower case), ``path``
        the canonical path (``gateway.canonical``)."""
        return self.resolve(method, host, path).route

    def resolve(self, method: str, host: str, path: str) -> Resolved:
        """The route for this request and its path parameters (see the module docstring)."""
        folded = path.lower() if self.fold_case else path
        path_matched = False
        for route in self.routes:
            params = route.params_for(host, path, folded)
            if params is None:
                continue
            methods = route.config.match.methods
            if not methods or method in methods or (method == "HEAD" and "GET" in methods):
                return Resolved(route, params)
            path_matched = True
        if path_matched:
            raise MethodNotAllowedError("method not allowed on this route", reason="method_not_allowed")
        raise RouteNotFoundError("no route for this path", reason="no_route")
