"""The README's first command, ``gateway demo``, run for real: every call its banner suggests works.

Ports are moved off the defaults with the environment variables the dev config reads, so the test
never collides with a demo a developer has running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.dpop.proofs import ath, es256

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "certs" / "dev"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def demo() -> Iterator[dict[str, int]]:
    gw, admin, echo, issuer = _free_ports(4)
    env = {**os.environ, "GATEWAY_PORT": str(gw), "GATEWAY_ADMIN_PORT": str(admin),
           "DEMO_ECHO_PORT": str(echo), "DEMO_ISSUER_PORT": str(issuer)}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    banner = ""
    deadline = time.monotonic() + 30
    while "Stop with Ctrl-C" not in banner and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner += line
    try:
        assert "demo is running" in banner, banner
        yield {"gw": gw, "admin": admin, "issuer": issuer}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _session(client: str | None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise override verify
    s.verify = str(DEV / "ca.pem")
    if client:
        s.cert = (str(DEV / f"{client}.pem"), str(DEV / f"{client}-key.pem"))
    return s


def test_open_route_and_bare_challenge(demo: dict[str, int]) -> None:
    r = _session("client-a").get(f"https://localhost:{demo['gw']}/echo/hello")
    assert r.status_code == 200 and r.json()["upstream"] == "demo-echo"
    r = _session(None).get(f"https://localhost:{demo['gw']}/accounts")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer") and "DPoP algs=" in r.headers["WWW-Authenticate"]


def test_certificate_bound_token_flow(demo: dict[str, int]) -> None:
    a = _session("client-a")
    token = a.post(f"https://localhost:{demo['issuer']}/token",
                   data={"grant_type": "client_credentials", "scope": "accounts"}).json()["access_token"]
    r = a.get(f"https://localhost:{demo['gw']}/accounts/42", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    forwarded = dict(r.json()["headers"])
    assert forwarded["X-Auth-Binding"] == "mtls"
    r = _session("client-b").get(f"https://localhost:{demo['gw']}/accounts/42",
                                 headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_dpop_bound_token_flow(demo: dict[str, int]) -> None:
    key = es256()
    token_url = f"https://localhost:{demo['issuer']}/token"
    proof = key.proof(htm="POST", htu=token_url, drop=("ath",))
    resp = _session(None).post(token_url, data={"grant_type": "client_credentials", "scope": "payments"},
                               headers={"DPoP": proof}).json()
    assert resp["token_type"] == "DPoP"
    token = resp["access_token"]
    url = f"https://localhost:{demo['gw']}/payments"
    headers = {"Authorization": f"DPoP {token}", "DPoP": key.proof(htm="POST", htu=url, ath=ath(token))}
    r = _session(None).post(url, headers=headers, json={"amount": "10.00"})
    assert r.status_code == 200, r.text
    r = _session(None).post(url, headers=headers, json={"amount": "10.00"})  # the same proof again
    assert r.status_code == 401 and 'error="invalid_dpop_proof"' in r.headers["WWW-Authenticate"]


def test_admin_endpoints(demo: dict[str, int]) -> None:
    base = f"http://127.0.0.1:{demo['admin']}"
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
    assert "gateway_requests_total" in requests.get(f"{base}/metrics", timeout=5).text


