"""A reload that cannot apply part of the file says so (issue #13, finding 20): a real process,
SIGHUP, and the log line, counter and gauge an operator would look at."""

from __future__ import annotations

import signal
import socket
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from .gwproc import GatewayProcess, ThreadedUpstream

pytestmark = pytest.mark.timeout(90)

Start = Callable[..., GatewayProcess]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write(path: Path, upstream: str, *, prefix: str, admin_port: int) -> None:
    path.write_text(textwrap.dedent(f"""
        listen: {{host: 127.0.0.1, port: 0}}
        admin: {{host: 127.0.0.1, port: {admin_port}}}
        lifecycle: {{shutdown_delay_s: 0, reload: {{watch_file: false}}}}
        routes:
          - id: main
            match: {{path_prefix: {prefix}}}
            upstream: "{upstream}"
            auth: none
    """))


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def _eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_reload_with_restart_only_changes_is_partial_not_success(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start
) -> None:
    cfg = tmp_path / "gw.yaml"
    boot_admin = _free_port()
    _write(cfg, threaded_upstream.url, prefix="/a", admin_port=boot_admin)
    gw = gateway_process(cfg).started()
    assert gw.admin_port == boot_admin
    assert gw.metric("gateway_config_restart_required") == 0

    # The routes change (applied) and so does the admin port (needs a restart).
    _write(cfg, threaded_upstream.url, prefix="/b", admin_port=_free_port())
    gw.signal(signal.SIGHUP)
    _eventually(lambda: gw.metric("gateway_config_reloads_total", result="partial") == 1)
    assert gw.metric("gateway_config_reloads_total", result="success") == 0
    assert gw.metric("gateway_config_restart_required") == 1
    line = gw.wait_for(r"WARNING .*config reloaded .* EXCEPT admin\.port")[0]
    assert "restart" in line
    assert _status(gw.base + "/b/1") == 200 and _status(gw.base + "/a/1") == 404
    assert gw.admin_port == boot_admin  # still answering /metrics on the old port

    # A later reload that changes only routes is still partial: the process never moved its port.
    _write(cfg, threaded_upstream.url, prefix="/c", admin_port=_free_port())
    gw.signal(signal.SIGHUP)
    _eventually(lambda: gw.metric("gateway_config_reloads_total", result="partial") == 2)

    # Back to what the process runs with: a plain success, nothing pending.
    _write(cfg, threaded_upstream.url, prefix="/d", admin_port=boot_admin)
    gw.signal(signal.SIGHUP)
    _eventually(lambda: gw.metric("gateway_config_reloads_total", result="success") == 1)
    assert gw.metric("gateway_config_restart_required") == 0
    assert _status(gw.base + "/d/1") == 200
