"""Life cycle of a real gateway process: hot reload (SIGHUP, file change), graceful shutdown
(SIGTERM drains), worker processes sharing one port (SO_REUSEPORT), readiness."""

from __future__ import annotations

import signal
import socket
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from .gwproc import GatewayProcess, ThreadedUpstream

pytestmark = pytest.mark.timeout(90)

Start = Callable[..., GatewayProcess]


def write_config(path: Path, upstream: str, *, prefix: str = "/open", lifecycle: str = "",
                 port: int = 0, admin_port: int = 0, extra: str = "") -> Path:
    path.write_text(textwrap.dedent(f"""
        listen: {{host: 127.0.0.1, port: {port}}}
        admin: {{host: 127.0.0.1, port: {admin_port}}}
        lifecycle: {{shutdown_delay_s: 0, shutdown_grace_s: 10{lifecycle}}}
        upstreams:
          up: {{url: "{upstream}"}}
        routes:
          - id: main
            match: {{path_prefix: {prefix}}}
            upstream: up
            auth: none
          - id: slow
            match: {{path_prefix: /slow}}
            upstream: up
            auth: none
    """) + textwrap.dedent(extra))
    return path


def get(url: str, timeout: float = 10) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_sighup_good_file_changes_routing_bad_file_changes_nothing(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start
) -> None:
    cfg = write_config(tmp_path / "gw.yaml", threaded_upstream.url, prefix="/a",
                       lifecycle=", reload: {watch_file: false}")
    gw = gateway_process(cfg).started()
    assert get(gw.base + "/a/1") == 200 and get(gw.base + "/b/1") == 404

    write_config(cfg, threaded_upstream.url, prefix="/b", lifecycle=", reload: {watch_file: false}")
    gw.signal(signal.SIGHUP)
    eventually(lambda: gw.metric("gateway_config_reloads_total", result="success") == 1)
    assert get(gw.base + "/b/1") == 200 and get(gw.base + "/a/1") == 404

    cfg.write_text(cfg.read_text().replace("upstream: up\n", "upstream: nowhere\n", 1))
    gw.signal(signal.SIGHUP)
    eventually(lambda: gw.metric("gateway_config_reloads_total", result="failure") == 1)
    gw.wait_for("config reload refused")
    assert "routes[0].upstream" in gw.all_output()
    # The running config is untouched.
    assert get(gw.base + "/b/1") == 200 and get(gw.base + "/a/1") == 404
    assert gw.metric("gateway_config_reloads_total", result="success") == 1
    assert gw.proc.poll() is None


def test_file_change_is_reloaded_without_a_signal(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start
) -> None:
    watch = ", reload: {watch_file: true, poll_interval_s: 0.1}"
    cfg = write_config(tmp_path / "gw.yaml", threaded_upstream.url, prefix="/a", lifecycle=watch)
    gw = gateway_process(cfg).started()
    assert get(gw.base + "/b/1") == 404
    # Like a Kubernetes ConfigMap update: a new file swapped in atomically under the same name.
    new = write_config(tmp_path / "gw.yaml.new", threaded_upstream.url, prefix="/b", lifecycle=watch)
    new.replace(cfg)
    eventually(lambda: get(gw.base + "/b/1") == 200)
    assert get(gw.base + "/a/1") == 404
    assert gw.metric("gateway_config_reloads_total", result="success") == 1


def test_in_flight_request_finishes_on_the_config_it_started_with(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start
) -> None:
    other = ThreadedUpstream()
    try:
        cfg = write_config(tmp_path / "gw.yaml", threaded_upstream.url, lifecycle=", reload: {watch_file: false}")
        gw = gateway_process(cfg).started()
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(get(gw.base + "/slow/x?s=1.5")))
        t.start()
        assert threaded_upstream.arrived.wait(10)
        write_config(cfg, other.url, lifecycle=", reload: {watch_file: false}")
        gw.signal(signal.SIGHUP)
        eventually(lambda: gw.metric("gateway_config_reloads_total", result="success") == 1)
        t.join(15)
        assert result == [200]
        assert get(gw.base + "/open/after") == 200
        assert [p for _, p, _ in other.requests] == ["/open/after"]
        assert all(p != "/open/after" for _, p, _ in threaded_upstream.requests)
    finally:
        other.close()


def test_sigterm_drains_an_in_flight_request_then_exits_0(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start
) -> None:
    cfg = write_config(tmp_path / "gw.yaml", threaded_upstream.url)
    cfg.write_text(cfg.read_text().replace("shutdown_delay_s: 0", "shutdown_delay_s: 0.5"))
    gw = gateway_process(cfg).started()
    assert gw.admin("/readyz")[0] == 200
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(get(gw.base + "/slow/x?s=2")))
    t.start()
    assert threaded_upstream.arrived.wait(10)
    gw.signal(signal.SIGTERM)
    # Not ready any more, but still alive while draining.
    eventually(lambda: gw.admin("/readyz")[0] == 503)
    gw.wait_for("draining in-flight requests")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.port), timeout=2).close()
    t.join(20)
    assert result == [200]
    assert gw.wait(20) == 0


def _listening_inodes(port: int) -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(int(fields[9]))
    return inodes


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_workers_share_one_port(
    tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start
) -> None:
    port, admin_port = _free_port(), _free_port()
    cfg = write_config(tmp_path / "gw.yaml", threaded_upstream.url, port=port, admin_port=admin_port)
    gw = gateway_process(cfg, workers=2).started(workers=2)
    assert gw.port == port and len(gw.worker_pids) == 2 and gw.proc.pid not in gw.worker_pids
    listening = _listening_inodes(port)
    # Each worker holds its own listening socket on the same port (SO_REUSEPORT).
    owners = {pid for pid in gw.worker_pids if _socket_inodes(pid) & listening}
    assert owners == gw.worker_pids and len(listening) >= 2
    assert all(get(f"http://127.0.0.1:{port}/open/{i}") == 200 for i in range(20))
    # Whichever worker answers the scrape reports the requests of both (snapshots every second).
    ok = {"route": "main", "method": "read", "status": "200", "reason": "none"}
    eventually(lambda: gw.metric("gateway_requests_total", **ok) == 20
               and gw.metric("gateway_request_duration_seconds_count", route="main") == 20)
    # SIGHUP reaches every worker; SIGTERM stops them all and the supervisor exits 0.
    gw.signal(signal.SIGHUP)
    gw.wait_for("config reloaded", count=2)
    gw.signal(signal.SIGTERM)
    assert gw.wait(30) == 0


def test_readiness_follows_redis(tmp_path: Path, threaded_upstream: ThreadedUpstream, gateway_process: Start) -> None:
    """/readyz is false while the configured Redis replay store does not answer."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    extra = f"""
    dpop:
      replay: {{backend: redis, redis: {{url: "redis://127.0.0.1:{dead}/0"}}}}
    """
    gw = gateway_process(write_config(tmp_path / "gw.yaml", threaded_upstream.url, extra=extra)).started()
    status, body = gw.admin("/readyz")
    assert status == 503 and '"redis": false' in body
    gw2 = gateway_process(write_config(tmp_path / "ok.yaml", threaded_upstream.url)).started()
    status, body = gw2.admin("/readyz")
    assert status == 200 and '"keys": true' in body
