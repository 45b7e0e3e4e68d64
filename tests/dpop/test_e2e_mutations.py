"""End to end, hostile input (issue #14): a VALID DPoP request through the real gateway (TLS
listener, real token and proof, recording upstream), then one mutation of its Authorization,
DPoP, Host or request target, sent byte for byte. Invariants, for every mutation hypothesis makes:

- never a 5xx, never a connection closed without an answer;
- a mutation that changes the credential bytes (token or proof, beyond the whitespace and scheme
  case HTTP and RFC 6750 let vary) never reaches the upstream;
- a mutated Host reaches the upstream only if it still names this server (the SNI name), and a
  mutated target only if it is still, canonically, the path the proof was signed for.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.canonical import parse_authority
from gateway.errors import InvalidRequestError

from ..foundation.rawhttp import raw_request
from .e2e_support import AsKey, config_body, proof_for
from .proofs import Signer

pytestmark = pytest.mark.timeout(180)

# Header bytes a client can put on the wire (latin-1), but no CR/LF: splitting a request into
# two is the request-smuggling suite's subject, not this one's.
WIRE = st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\r\n")
PARTS = ("Authorization", "DPoP", "Host", "target")


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, str, int, int, str]:
    """(part, operation, position fraction, length, text): applied to the valid value by ``_mutate``."""
    part = draw(st.sampled_from(PARTS))
    op = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "append", "case"]))
    pos = draw(st.integers(min_value=0, max_value=10_000))
    length = draw(st.integers(min_value=1, max_value=8))
    text = draw(st.text(WIRE, min_size=1, max_size=8) | st.sampled_from(
        ["=", ".", " ", "\t", ",", "%2e", "/..", "%00", "\x00", "A", "\xff", "DPoP ", "Bearer ", ":443", "?a=1"]))
    return part, op, pos, length, text


def _mutate(value: str, op: str, pos: int, length: int, text: str) -> str:
    i = pos % (len(value) + 1)
    if op == "replace":
        return value[:i] + text + value[i + length:]
    if op == "insert":
        return value[:i] + text + value[i:]
    if op == "delete":
        return value[:i] + value[i + length:]
    if op == "truncate":
        return value[:i]
    if op == "append":
        return value + text
    return value[:i] + value[i:i + length].swapcase() + value[i + length:]


def _same_credentials(part: str, mutated: str, token: str, proof: str) -> bool:
    """The credential bytes are unchanged: what RFC 9110 (OWS around a field value) and RFC 6750
    §2.1 / RFC 9449 §7.1 (case-insensitive scheme, 1*SP) allow to vary."""
    value = mutated.strip(" \t")
    if part == "Authorization":
        m = re.fullmatch(r"([^ ]+) +(.*)", value)
        return m is not None and m.group(1).lower() == "dpop" and m.group(2) == token
    return value == proof


def _names_this_server(host: str) -> bool:
    try:
        return parse_authority(host.strip(" \t")).name == "localhost"  # the SNI the client sent
    except InvalidRequestError:
        return False


@pytest.fixture
async def gw(gateway: Any, upstream: Any, as_key: AsKey) -> Any:
    return await gateway(config_body(as_key, upstream.url))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations())
async def test_mutated_valid_request_is_refused_or_still_valid(
    gw: Any, upstream: Any, as_key: AsKey, k1: Signer, pki: Any, mutation: tuple[str, str, int, int, str]
) -> None:
    part, op, pos, length, text = mutation
    ctx = pki.client_context()
    token = as_key.token(jkt=k1.jkt)
    valid = {"Authorization": f"DPoP {token}", "DPoP": proof_for(k1, token), "Host": f"localhost:{gw.port}",
             "target": "/accounts"}

    # The unmutated request passes (with its own proof: a proof is single-use).
    before = len(upstream.requests)
    status, _ = await raw_request(gw.port, ctx, "/accounts", host=valid["Host"], headers=[
        ("Authorization", valid["Authorization"]), ("DPoP", proof_for(k1, token))])
    assert status == 200 and len(upstream.requests) == before + 1

    sent = dict(valid)
    sent[part] = _mutate(valid[part], op, pos, length, text)
    before = len(upstream.requests)
    status, raw = await raw_request(gw.port, ctx, sent["target"], host=sent["Host"], headers=[
        ("Authorization", sent["Authorization"]), ("DPoP", sent["DPoP"])])
    forwarded = len(upstream.requests) > before
    event(f"{part}: {'forwarded' if forwarded else f'refused {status}'}")  # --hypothesis-show-statistics

    assert 0 < status < 500, (part, sent[part], raw[:300])
    if part in ("Authorization", "DPoP") and not _same_credentials(part, sent[part], token, valid["DPoP"]):
        assert not forwarded and 400 <= status < 500, (part, sent[part], status)
    if part == "Host" and forwarded:
        assert _names_this_server(sent["Host"]), sent["Host"]
    if part == "target" and forwarded:
        assert upstream.last.raw_path.split("?", 1)[0] == "/accounts", (sent["target"], upstream.last.raw_path)
    if forwarded:
        assert status == 200
