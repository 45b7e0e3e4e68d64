"""The canonicaliser (``gateway.canonical``) and the router on its output (issue #13, finding 9).

Table tests for each decision, then properties (hypothesis): no encoding of a protected path
reaches the open catch-all route, and no canonical path that a lenient upstream would read as a
protected path is routed anywhere else.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.canonical import Authority, canonical_target, parse_authority
from gateway.config import parse_config
from gateway.errors import InvalidRequestError, MethodNotAllowedError, RouteNotFoundError
from gateway.routing import Router

ROUTES = """
issuers: [{name: as, issuer: "https://as.example", jwks_uri: "https://as.example/jwks"}]
routes:
  - {id: payments, match: {path_prefix: /payments}, upstream: "http://127.0.0.1:1",
     auth: {issuers: [as], audience: x, sender_constraint: none}}
  - {id: api, match: {path_prefix: /api/}, upstream: "http://127.0.0.1:1",
     auth: {issuers: [as], audience: x, sender_constraint: none}}
  - {id: open, match: {path_prefix: /}, upstream: "http://127.0.0.1:1", auth: none}
"""
PROTECTED = {"payments", "api"}


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(parse_config(ROUTES))


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/", "/"),
        ("/a/b/", "/a/b/"),
        ("/%61%62", "/ab"),  # unreserved decoded
        ("/a%7e%2D%2e%5F", "/a~-._"),
        ("/a%21%24%26%27%28%29%2A%2B%2C%3D%3A%40", "/a!$&'()*+,=:@"),  # sub-delims but ';', ':' '@'
        ("/a%20b", "/a%20b"),  # not a pchar: stays encoded
        ("/a%5bb%5D", "/a%5Bb%5D"),  # hex upper-cased
        ("/caf%c3%a9", "/caf%C3%A9"),  # UTF-8 kept encoded
        ("/%F0%9F%92%B3", "/%F0%9F%92%B3"),
        ("/a?x=%2F&y=;/..//", "/a?x=%2F&y=;/..//"),  # the query is not routed on: as received
        ("/a?", "/a?"),
        ("/API/X", "/API/X"),  # case kept
    ],
)
def test_canonical_form(raw: str, canonical: str) -> None:
    assert str(canonical_target(raw)) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "", "*", "a", "https://evil.example/a", "//a", "/a//b", "/a;b", "/a;", "/a%3Bb", "/a%3bb", "/.", "/./a",
        "/..", "/a/..", "/a/%2e%2E/b", "/a/.%2e", "/a%2fb", "/a%2Fb", "/a%5cb", "/a\\b", "/a%25", "/a%252e",
        "/a%00", "/a%0d%0a", "/a%7f", "/a%3f", "/a%23", "/a%", "/a%4", "/a%zz", "/a%g0", "/%c0%ae", "/%c0%af",
        "/%e0%80%ae", "/%ed%a0%80", "/%ff", "/%c3", "/a b", "/a\"b", "/a<b", "/a|b", "/a^b", "/a{b",
        "/a\u00e9", "/api./x", "/api%2e/x", "/api%20/x", "/x.", "/x..", "/a?b#c", "/a?b c", "/a?\u00e9",
        "/" + "a" * 9000,
    ],
)
def test_refused(raw: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        canonical_target(raw)
    assert info.value.status == 400 and info.value.reason == "bad_path"


def test_trailing_dot_opt_in() -> None:
    assert canonical_target("/api./x%20", allow_trailing_dot=True).path == "/api./x%20"
    with pytest.raises(InvalidRequestError):
        canonical_target("/api/../x", allow_trailing_dot=True)  # never a dot segment


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", Authority("localhost")),
        ("LocalHost:8443", Authority("localhost", 8443)),
        ("api.bank.example:443", Authority("api.bank.example", 443)),
        ("127.0.0.1:1", Authority("127.0.0.1", 1)),
        ("[::1]:8443", Authority("::1", 8443)),
        ("[0:0::1]", Authority("::1")),
        ("svc_a.ns:08443", Authority("svc_a.ns", 8443)),
        ("a:", Authority("a")),  # RFC 3986: an empty port is no port
    ],
)
def test_authority_parsed(value: str, expected: Authority) -> None:
    assert parse_authority(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "", "a/b", "a?", "a#", "a:1/", "u@a", "u:p@a", "a b", " a", "a,b", 'a"', "a;b", "a=b", "a%2e", "a:0",
        "a:65536", "a:-1", "a:+1", "a:1:2", "a:0x1", "[::1", "[::1]x", "[fe80::1%25eth0]", "[v1.x]", "[1.2.3.4]",
        "-a", "a-", "a..b", ".a", "a.", "a" * 64, ("a." * 130) + "a", "\u00e9", "a\tb", "a\x00",
    ],
)
def test_authority_refused(value: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_authority(value)
    assert info.value.status == 400 and info.value.reason == "bad_host"


def test_authority_rendering() -> None:
    assert str(parse_authority("[::1]:8443")) == "[::1]:8443"
    assert str(parse_authority("API.bank.example")) == "api.bank.example"


def _route(router: Router, raw: str) -> str | None:
    """The route id a raw target reaches, or None when refused (400 / 404 / 405)."""
    try:
        target = canonical_target(raw)
        return router.match("GET", "localhost", target.path).id
    except (InvalidRequestError, RouteNotFoundError, MethodNotAllowedError):
        return None


def test_case_folding_is_the_default_and_can_be_switched_off() -> None:
    folded = Router(parse_config(ROUTES))
    exact = Router(parse_config(ROUTES + "paths: {case_sensitive: true}\n"))
    assert _route(folded, "/PAYMENTS/1") == "payments"
    assert _route(exact, "/PAYMENTS/1") == "open"


# --- properties -------------------------------------------------------------------------------

def _overlong(octet: int) -> str:
    return f"%{0xC0 | octet >> 6:02X}%{0x80 | octet & 0x3F:02X}"


def _char(c: str) -> st.SearchStrategy[str]:
    o = ord(c)
    return st.sampled_from([
        c, c.swapcase(), f"%{o:02X}", f"%{o:02x}", f"%25{o:02X}", f"%2525{o:02x}", _overlong(o),
        f"%E0%{0x80 | o >> 6:02X}%{0x80 | o & 0x3F:02X}",  # 3-byte overlong
    ])


SEPARATORS = ["/", "//", "/./", "/x/../", "/..;/", "/.;/", "/%2e/", "/%2E%2e/", "%2F", "%2f", "%5C", "\\",
              "/;/", "/%252F", _overlong(0x2F), "/.%00/", "/%3B/"]
SUFFIXES = ["", "", "", ";", ";x=y", "%3B", "%3bjsessionid=1", ".", "%2e", "%20", "%2520", "%00", "..", "%09", "/"]


@st.composite
def protected_encodings(draw: st.DrawFn) -> str:
    """A spelling of /payments[/...] or /api/... that some upstream would decode to it."""
    segments = draw(st.sampled_from([["payments"], ["payments", "1"], ["api", "x"], ["api", "v1", "accounts"]]))
    out = draw(st.sampled_from(["", "", "/open/..", "/x/%2e%2e", "/open/..;", "/%2e%2e", "//"]))
    for seg in segments:
        out += draw(st.sampled_from(SEPARATORS)) if draw(st.booleans()) else "/"
        out += "".join(draw(_char(c)) if draw(st.integers(0, 4)) == 0 else c for c in seg)
        out += draw(st.sampled_from(SUFFIXES))
    return out


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(protected_encodings())
def test_no_encoding_of_a_protected_path_reaches_the_open_route(router: Router, raw: str) -> None:
    assert _route(router, raw) in (None, *PROTECTED), raw


def _lenient(path: str) -> str:
    """How a permissive upstream could read a path: repeated percent-decoding, overlong UTF-8 and
    backslashes as '/', ';' parameters cut, empty and dot segments resolved, trailing dots and
    spaces trimmed (IIS), case ignored."""
    raw = path.encode("latin-1")
    for _ in range(3):
        raw = unquote_to_bytes(raw)
    raw = raw.replace(b"\xc0\xae", b".").replace(b"\xc0\xaf", b"/").replace(b"\xe0\x80\xae", b".")
    text = raw.decode("latin-1").replace("\\", "/").replace("\x00", "")
    out: list[str] = []
    for seg in text.split("/"):
        seg = seg.split(";", 1)[0]
        if seg not in (".", ".."):
            seg = seg.rstrip(". \t")
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg.lower())
    return "/" + "/".join(out)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(protected_encodings(), st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                                                  max_size=40).map(lambda s: "/" + s)))
def test_what_is_forwarded_is_routed_as_any_upstream_would_read_it(router: Router, raw: str) -> None:
    """Whatever passes the canonicaliser: if a lenient upstream reads the forwarded path as a
    protected one, the gateway routed it to that protected route."""
    try:
        target = canonical_target(raw)
    except InvalidRequestError:
        return
    seen = _lenient(target.path)
    route = router.match("GET", "localhost", target.path).id
    if seen == "/payments" or seen.startswith("/payments/"):
        assert route == "payments", (raw, str(target))
    if seen.startswith("/api/"):
        assert route == "api", (raw, str(target))
