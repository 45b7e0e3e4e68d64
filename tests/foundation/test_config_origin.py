"""Config rules from issue #13: a route that accepts DPoP needs a public origin or a Host allowlist
(the htu is never built from an unchecked Host); route paths are canonical; Host allowlist entries
are authorities. Each problem names its field and line."""

from __future__ import annotations

import textwrap

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError

ISSUER = """
issuers: [{name: as, issuer: "https://as.example", jwks_uri: "https://as.example/jwks"}]
"""


def route(auth: str, extra: str = "", match: str = "{path_prefix: /a}") -> str:
    return f"""
routes:
  - id: a
    match: {match}
    upstream: http://127.0.0.1:9
    auth: {auth}{extra}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), source="t.yaml")
    return info.value.problems


@pytest.mark.parametrize("constraint", ["dpop", "any", None])
def test_dpop_route_without_origin_is_refused(constraint: str | None) -> None:
    sc = f", sender_constraint: {constraint}" if constraint else ""  # None: the default (any)
    (problem,) = problems(ISSUER + route(f"{{issuers: [as], audience: x{sc}}}"))
    assert problem.startswith("t.yaml:5: routes[0].external_origin: the route accepts DPoP"), problem
    assert "listen.allowed_hosts" in problem


@pytest.mark.parametrize(
    "origin",
    [
        "listen: {external_origin: 'https://api.example'}\n",
        "listen: {allowed_hosts: [api.example, 'api2.example:8443', '[::1]']}\n",
    ],
)
def test_dpop_route_with_origin_or_allowlist_loads(origin: str) -> None:
    parse_config(origin + ISSUER + route("{issuers: [as], audience: x, sender_constraint: dpop}"))


def test_route_origin_is_enough() -> None:
    parse_config(ISSUER + route("{issuers: [as], audience: x}", "\n    external_origin: https://api.example"))


@pytest.mark.parametrize("auth", ["none", "{issuers: [as], audience: x, sender_constraint: none}"])
def test_routes_without_dpop_need_no_origin(auth: str) -> None:
    parse_config(ISSUER + route(auth))


@pytest.mark.parametrize("entry", ["api.example/x", "u@api.example", "api.example:0", "'*.example'", "'a b'"])
def test_bad_allowed_host_named(entry: str) -> None:
    (problem,) = problems(f"listen: {{allowed_hosts: [{entry}]}}\n" + route("none"))
    assert problem.startswith("t.yaml:1: listen.allowed_hosts[0]: invalid Host"), problem


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ("{path_prefix: /a//b}", "empty segment"),
        ("{path_prefix: /a;b}", "path parameters"),
        ("{path: /a/../b}", "dot segment"),
        ("{path: /%61}", "write '/a'"),
        ("{path_prefix: /a%2fb}", "encoded '/'"),
    ],
)
def test_route_paths_must_be_canonical(match: str, message: str) -> None:
    (problem,) = problems(route("none", match=match))
    assert "routes[0].match.path" in problem and message in problem, problem


def test_routes_differing_only_in_case_collide_unless_case_sensitive() -> None:
    two = route("none") + """
  - id: b
    match: {path_prefix: /A}
    upstream: http://127.0.0.1:9
    auth: none
"""
    (problem,) = problems(two)
    assert "routes[1].match: same match as routes[0]" in problem
    parse_config(two + "paths: {case_sensitive: true}\n")


@pytest.mark.parametrize("origin", ["https://u:p@api.example", "https://u@api.example", "https://api.example:0",
                                    "https://api%2eexample"])
def test_external_origin_must_be_a_plain_authority(origin: str) -> None:
    (problem,) = problems(f"listen: {{external_origin: '{origin}'}}\n" + route("none"))
    assert problem.startswith("t.yaml:1: listen.external_origin:"), problem


@pytest.mark.parametrize("host", ["api.example:443", "api.example/x", "u@api.example", "'a b'"])
def test_route_match_host_must_be_a_host_name(host: str) -> None:
    """match.host is compared with the validated Host name (no port): anything else never matches."""
    (problem,) = problems(route("none", match=f"{{path_prefix: /a, host: {host}}}"))
    assert "routes[0].match.host:" in problem, problem
