"""A reload is checked against the process it will run in (issue #13 finding 11, OPS-02a).

``gateway run --workers 2`` with the Redis replay store; the file is rewritten to the in-memory
store (valid on its own: ``lifecycle.workers`` is 1) and SIGHUP sent. Before the fix each worker
switched to its own in-memory store, and one proof was accepted by both workers. Now every
worker refuses the reload and the proof is still accepted once only.
"""

from __future__ import annotations

import re
import signal
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dpop.e2e_support import AsKey, config_body, proof_for
from tests.dpop.proofs import es256
from tests.redis_fixture import _free_port

from .gwproc import GatewayProcess, ThreadedUpstream

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

Start = Callable[..., GatewayProcess]


def write(path: Path, as_key: AsKey, upstream: str, replay: str) -> Path:
    # Fixed ports (kept across rewrites): both workers bind the same ones with SO_REUSEPORT;
    # port 0 would give each worker its own.
    old = path.read_text() if path.exists() else ""
    found = re.findall(r"port: (\d+)", old)
    port, admin = (int(found[0]), int(found[1])) if found else (_free_port(), _free_port())
    head = textwrap.dedent(f"""
        listen: {{host: 127.0.0.1, port: {port}}}
        admin: {{host: 127.0.0.1, port: {admin}}}
        lifecycle: {{shutdown_delay_s: 0, shutdown_grace_s: 5, reload: {{watch_file: false}}}}
    """)
    dpop = "  replay: " + replay
    path.write_text(head + config_body(as_key, upstream, dpop=dpop))
    return path


def send(port: int, token: str, proof: str) -> int:
    # urllib opens a new connection per request, so SO_REUSEPORT spreads them over both workers.
    req = urllib.request.Request(f"http://127.0.0.1:{port}/accounts",
                                 headers={"Authorization": f"DPoP {token}", "DPoP": proof,
                                          "Host": "api.bank.example"})  # the route's external_origin
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_reload_to_memory_store_refused_with_two_workers(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start,
    redis_url: str, redis_key_prefix: str,
) -> None:
    as_key = AsKey(tmp_path)
    redis = f'{{backend: redis, redis: {{url: "{redis_url}", key_prefix: "{redis_key_prefix}rw:"}}}}'
    cfg = write(tmp_path / "gw.yaml", as_key, threaded_upstream.url, redis)
    gw = gateway_process(cfg, workers=2).started(workers=2)

    write(cfg, as_key, threaded_upstream.url, "{backend: memory}")
    gw.signal(signal.SIGHUP)
    lines = gw.wait_for("config reload(ed)? ", count=2)
    assert all("refused" in ln for ln in lines), lines
    assert "dpop.replay.backend: memory" in lines[0] and "2 workers" in lines[0]

    signer = es256()
    token = as_key.token(jkt=signer.jkt)
    proof = proof_for(signer, token)
    statuses = [send(gw.port, token, proof) for _ in range(24)]
    assert statuses.count(200) == 1 and statuses.count(401) == 23, statuses
    assert len(threaded_upstream.requests) == 1
    # Still refused when the file is reloaded again (e.g. a later SIGHUP): nothing changed.
    gw.signal(signal.SIGHUP)
    assert all("refused" in ln for ln in gw.wait_for("config reload(ed)? ", count=4))


def test_restarted_worker_refuses_a_memory_store_config(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start,
    redis_url: str, redis_key_prefix: str,
) -> None:
    """A worker restarted by the supervisor loads the file afresh: it is checked against the
    supervisor's worker count too, so it cannot come back with its own in-memory store."""
    import os

    as_key = AsKey(tmp_path)
    redis = f'{{backend: redis, redis: {{url: "{redis_url}", key_prefix: "{redis_key_prefix}rw2:"}}}}'
    cfg = write(tmp_path / "gw.yaml", as_key, threaded_upstream.url, redis)
    gw = gateway_process(cfg, workers=2).started(workers=2)
    write(cfg, as_key, threaded_upstream.url, "{backend: memory}")
    os.kill(min(gw.worker_pids), signal.SIGKILL)
    gw.wait_for("dpop.replay.backend: memory")
    assert gw.wait(30) != 0  # the supervisor gives up on a config error (exit 78) and stops
