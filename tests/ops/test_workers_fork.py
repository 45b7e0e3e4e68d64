"""Workers forked after the supervisor's imports (issue #20, second round; gateway/supervisor.py).

Linux only (elsewhere workers are spawned). A forked worker shares the supervisor's imported
modules copy-on-write: it has the supervisor's command line (no interpreter was exec'd) and pages
it shares with it. The restart policy and signals are unchanged: a killed worker is replaced by a
new fork that serves, SIGTERM stops them all with status 0.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from .gwproc import ThreadedUpstream
from .test_lifecycle import Start, get, write_config

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only"),
              pytest.mark.timeout(90)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shared_dirty_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Shared_Dirty:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Shared_Dirty line")


def test_workers_are_forked_and_a_killed_one_is_replaced(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start
) -> None:
    port, admin_port = _free_port(), _free_port()
    cfg = write_config(tmp_path / "gw.yaml", threaded_upstream.url, port=port, admin_port=admin_port)
    gw = gateway_process(cfg, workers=2).started(workers=2)
    supervisor = Path(f"/proc/{gw.proc.pid}/cmdline").read_bytes()
    for pid in gw.worker_pids:
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == supervisor, "a worker was exec'd, not forked"
        # The import heap written by the supervisor before the fork is still shared (a spawned
        # worker shares no dirty page: it built its own heap).
        assert _shared_dirty_mb(pid) > 5, _shared_dirty_mb(pid)
    victim = min(gw.worker_pids)
    os.kill(victim, signal.SIGKILL)
    gw.wait_for("restarting it")
    lines = gw.wait_for("gateway listening on", count=3)
    new = int(lines[-1].rsplit("pid", 1)[1])
    assert new not in gw.worker_pids
    assert Path(f"/proc/{new}/cmdline").read_bytes() == supervisor
    assert all(get(f"http://127.0.0.1:{port}/open/{i}") == 200 for i in range(10))
    gw.signal(signal.SIGTERM)
    assert gw.wait(30) == 0
