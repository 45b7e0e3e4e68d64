"""``gateway explain``: inputs (raw HTTP, curl, HAR), the command line, --at, report-only routes,
never echoing secrets, never touching the shared replay store (issue #19 §1)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.explain import CaptureError, parse_capture
from gateway.explain.cli import parse_time
from tests.conftest import Pki, gateway_yaml
from tests.dpop.e2e_support import AsKey, config_body, proof_for
from tests.dpop.proofs import Signer

pytestmark = pytest.mark.timeout(60)


def test_raw_request() -> None:
    c = parse_capture("GET /accounts?x=1 HTTP/1.1\nHost: api.bank.example\nAuthorization: DPoP abc\n"
                      "X-Long: a\n  b\n\nbody ignored")
    assert (c.method, c.target, c.fmt) == ("GET", "/accounts?x=1", "raw")
    assert c.headers == (("Host", "api.bank.example"), ("Authorization", "DPoP abc"), ("X-Long", "a b"))
    absolute = parse_capture("POST https://api.bank.example:8443/p HTTP/1.1\r\nDPoP: x\r\n\r\n")
    assert absolute.target == "/p" and absolute.headers[0] == ("Host", "api.bank.example:8443")
    with pytest.raises(CaptureError, match="raw HTTP request"):
        parse_capture("hello")
    with pytest.raises(CaptureError, match="not a header line"):
        parse_capture("GET / HTTP/1.1\nno colon here\n\n")


def test_curl_command_line() -> None:
    c = parse_capture("curl -sS --cert client.pem:secret -H 'Authorization: DPoP t' \\\n -H \"DPoP: p\" "
                      "-d '{}' 'https://api.bank.example/payments?a=1'")
    assert (c.method, c.target, c.fmt, c.cert_file) == ("POST", "/payments?a=1", "curl", "client.pem")
    assert c.headers == (("Host", "api.bank.example"), ("Authorization", "DPoP t"), ("DPoP", "p"))
    assert parse_capture("curl -X PUT -H 'Host: other' http://x/y").headers[0] == ("Host", "other")
    assert parse_capture("curl -I https://x/").method == "HEAD"
    with pytest.raises(CaptureError, match="without a URL"):
        parse_capture("curl -H 'A: b'")


def test_har_entries() -> None:
    har = {"log": {"entries": [
        {"request": {"method": "GET", "url": "https://api.bank.example/ok", "headers": []},
         "response": {"status": 200}},
        {"request": {"method": "get", "url": "https://api.bank.example/accounts?q=1",
                     "headers": [{"name": ":authority", "value": "api.bank.example"}, {"name": ":path", "value": "/"},
                                 {"name": "authorization", "value": "DPoP t"}]},
         "response": {"status": 401}},
    ]}}
    c = parse_capture(json.dumps(har))  # the first refused entry by default
    assert (c.method, c.target, c.fmt) == ("GET", "/accounts?q=1", "har")
    assert c.headers == (("Host", "api.bank.example"), ("authorization", "DPoP t"))
    assert parse_capture(json.dumps(har), entry=0).target == "/ok"
    assert parse_capture(json.dumps(har["log"]["entries"][1])).target == "/accounts?q=1"  # a single entry
    with pytest.raises(CaptureError, match="no entry 5"):
        parse_capture(json.dumps(har), entry=5)


def test_parse_time() -> None:
    assert parse_time("1700000000") == 1700000000.0
    assert parse_time("2023-11-14T22:13:20Z") == 1700000000.0
    with pytest.raises(ValueError, match="time zone"):
        parse_time("2023-11-14T22:13:20")


@pytest.fixture
def files(tmp_path: Path, pki: Pki, as_key: AsKey) -> Any:
    def write(body: str, request: str) -> tuple[str, str]:
        cfg = tmp_path / "gateway.yaml"
        cfg.write_text(gateway_yaml(pki, body))
        req = tmp_path / "request.txt"
        req.write_text(request)
        return str(cfg), str(req)

    return write


def _raw(token: str, proof: str, path: str = "/accounts") -> str:
    return f"GET {path} HTTP/1.1\r\nHost: api.bank.example\r\nAuthorization: DPoP {token}\r\nDPoP: {proof}\r\n\r\n"


def test_cli_json_verdict_exit_codes_and_no_secrets(
    files: Any, as_key: AsKey, k1: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    token = as_key.token(jkt=k1.jkt)
    proof = proof_for(k1, token, htu="https://api.bank.example/payments")
    cfg, req = files(config_body(as_key, "http://127.0.0.1:9"), _raw(token, proof))
    assert main(["explain", "--config", cfg, req, "--json"]) == 1
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert doc["verdict"] == "refuse" and doc["answer"]["status"] == 401
    assert doc["answer"]["reason"] == "dpop_htu_mismatch"
    assert 'error="invalid_dpop_proof"' in doc["answer"]["headers"]["WWW-Authenticate"]
    binding = next(s for s in doc["steps"] if s["step"] == "binding")
    facts = {f["what"]: f for f in binding["facts"]}
    assert facts["htu"]["check"] == "MISMATCH" and "https://api.bank.example/payments" in facts["htu"]["value"]
    assert facts["  expected"]["value"].startswith("https://api.bank.example/accounts")
    route = next(s for s in doc["steps"] if s["step"] == "request")
    assert any(f["value"] == "routes[0].external_origin" for f in route["facts"])
    # Never a whole token or proof, nor a signature: claims and hashes only.
    for secret in (token, proof, token.split(".")[2], proof.split(".")[2]):
        assert secret not in out
    # The same request, text output: the same verdict, every step named.
    assert main(["explain", "--config", cfg, req]) == 1
    text = capsys.readouterr().out
    assert "[FAIL] binding" in text and "answer: 401" in text and token not in text and proof not in text


def test_at_replays_the_time_it_was_made(files: Any, as_key: AsKey, k1: Signer,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    then = int(time.time()) - 7200
    token = as_key.token(jkt=k1.jkt, iat=then, exp=then + 300)
    proof = proof_for(k1, token, iat=then)
    cfg, req = files(config_body(as_key, "http://127.0.0.1:9"), _raw(token, proof))
    assert main(["explain", "--config", cfg, req]) == 1  # now: expired
    assert "token_expired" in capsys.readouterr().out
    assert main(["explain", "--config", cfg, req, "--at", str(then + 5)]) == 0  # then: allowed
    out = capsys.readouterr().out
    assert "answer: ALLOWED" in out and "upstream: X-Auth-Subject: cust-123" in out
    # Explaining never consumes the proof: the same one again, same answer.
    assert main(["explain", "--config", cfg, req, "--at", str(then + 5)]) == 0
    capsys.readouterr()


def test_shared_replay_store_is_never_contacted(files: Any, as_key: AsKey, k1: Signer,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A Redis replay store that does not answer: explain does not need it (nor touch it)."""
    dpop = '  replay: {backend: redis, redis: {url: "redis://127.0.0.1:1/0", timeout_s: 0.2}}'
    token = as_key.token(jkt=k1.jkt)
    cfg, req = files(config_body(as_key, "http://127.0.0.1:9", dpop=dpop), _raw(token, proof_for(k1, token)))
    assert main(["explain", "--config", cfg, req]) == 0
    assert "answer: ALLOWED" in capsys.readouterr().out


def test_report_only_route(files: Any, as_key: AsKey, k1: Signer, capsys: pytest.CaptureFixture[str]) -> None:
    body = config_body(as_key, "http://127.0.0.1:9").replace(
        "require_dpop_nonce: false}", "require_dpop_nonce: false, enforcement: report}")
    token = as_key.token(jkt=k1.jkt)
    cfg, req = files(body + "acknowledge_risks: [report_only_enforcement]\n",
                     _raw(token, proof_for(k1, token, htm="POST")))
    assert main(["explain", "--config", cfg, req, "--json"]) == 4
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "would_refuse" and doc["answer"]["reason"] == "dpop_htm_mismatch"
    assert doc["answer"]["headers"]["upstream: X-Auth-Would-Refuse"] == "dpop_htm_mismatch"
    assert doc["enforced"]["status"] == 401
    assert 'error="invalid_dpop_proof"' in doc["enforced"]["headers"]["WWW-Authenticate"]


def test_public_url_from_host_and_bad_input(files: Any, as_key: AsKey, k1: Signer,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Without external_origin the htu is built from the (checked) Host: explain says so."""
    body = config_body(as_key, "http://127.0.0.1:9").replace("    external_origin: https://api.bank.example\n", "")
    token = as_key.token(jkt=k1.jkt)
    raw = _raw(token, proof_for(k1, token, htu="https://localhost/accounts")).replace("api.bank.example", "localhost")
    cfg, req = files(body, raw)
    # The listener (--port) is on 443, as the Host implies: the URL is built from the Host.
    assert main(["explain", "--config", cfg, req, "--port", "443"]) == 0
    out = capsys.readouterr().out
    assert "the Host header" in out and "https://localhost/accounts" in out and "answer: ALLOWED" in out, out
    # On 8443 behind a load balancer on 443 (no external_origin): no URL can be trusted, every proof fails.
    assert main(["explain", "--config", cfg, req, "--port", "8443"]) == 1
    out = capsys.readouterr().out
    assert "(none trustworthy)" in out and "set listen.external_origin" in out and "dpop_htu_mismatch" in out, out
    assert main(["explain", "--config", cfg, req, "--jwks", "nobody=/etc/hostname"]) == 2
    assert "no issuer named nobody" in capsys.readouterr().err
    Path(req).write_text("not a request")
    assert main(["explain", "--config", cfg, req]) == 2


WIRE = "abcXYZ019 -._~+/=.,:;\"'\\%\t\x00\xff"


@pytest.mark.timeout(120)
def test_hostile_captures_never_crash(pki: Pki, as_key: AsKey, k1: Signer, tmp_path: Path) -> None:
    """Mutated captures (in the style of tests/dpop/test_e2e_mutations.py): a CaptureError or an
    explanation with a 4xx answer or an allow; never a traceback, never a 5xx."""
    import asyncio

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from gateway.config import parse_config
    from gateway.explain import explain

    cfg = parse_config(gateway_yaml(pki, config_body(as_key, "http://127.0.0.1:9")))
    token = as_key.token(jkt=k1.jkt)
    valid = _raw(token, proof_for(k1, token))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(pos=st.integers(0, len(valid)), cut=st.integers(0, 8), text=st.text(st.sampled_from(WIRE), max_size=8))
    def run(pos: int, cut: int, text: str) -> None:
        mutated = valid[:pos] + text + valid[pos + cut:]
        try:
            captured = parse_capture(mutated)
        except CaptureError:
            return
        exp = asyncio.run(explain(cfg, captured))
        assert exp.verdict in ("allow", "refuse"), exp.steps
        assert exp.status is None or 400 <= exp.status < 500, (mutated, exp.steps)
        assert not any(s.name == "internal" for s in exp.steps)

    run()
