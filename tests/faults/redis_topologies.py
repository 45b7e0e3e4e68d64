"""Real Redis topologies for the fault tests: a standalone server, Sentinel, Cluster.

Every process is Debian's ``redis-server`` / ``redis-sentinel``, on free ports of 127.0.0.1, in
its own temp dir and its own process group (so that teardown kills it and anything it forked,
e.g. a BGSAVE child, with one ``killpg``). Nothing is persisted: a restarted server is empty.
Missing binaries -> ``pytest.skip`` naming the Debian package (never a silent pass).

* ``Node``: one server; ``stop`` (SIGTERM), ``kill`` (SIGKILL), ``pause``/``resume``
  (SIGSTOP/SIGCONT: a server that accepts connections and answers nothing), ``start`` again.
* ``SentinelSet``: 1 master + 1 replica + 3 sentinels (quorum 2), short ``down-after`` and
  ``failover-timeout``: ``kill_master`` then ``wait_failover``.
* ``Cluster``: 3 masters + 3 replicas made with ``redis-cli --cluster create``; ``master_of(key).kill()``
  then ``wait_failover`` (a replica is promoted after ``cluster-node-timeout``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ("Cluster", "Node", "SentinelSet", "Standalone", "free_port", "need", "redis_cmd", "redis_text")

_PACKAGE = {"redis-server": "redis-server", "redis-cli": "redis-tools", "redis-sentinel": "redis-sentinel"}


def need(*binaries: str) -> dict[str, str]:
    """The path of each binary, or a loud skip naming the Debian package to install."""
    found: dict[str, str] = {}
    for b in binaries:
        path = shutil.which(b)
        if path is None:
            pytest.skip(f"{b} is not installed: apt-get install {_PACKAGE.get(b, b)} (tests/faults need a real one)")
        found[b] = path
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (Redis needs both, and <= 55535)."""
    import random

    for _ in range(200):
        port = random.randint(20000, 45000)  # a port, not a secret
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair for a cluster node")


def redis_cmd(port: int, *args: str, timeout: float = 1.0) -> object:
    """One command over a fresh socket, its whole reply parsed by hiredis (bytes, int, list...).
    For setting up and observing a topology, never for the code under test."""
    import hiredis

    reader = hiredis.Reader()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a.encode()) for a in args))
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a reply")
            reader.feed(chunk)
            reply = reader.gets()
            if reply is not False:
                return reply


def redis_text(port: int, *args: str, timeout: float = 1.0) -> bytes:
    reply = redis_cmd(port, *args, timeout=timeout)
    return reply if isinstance(reply, bytes) else repr(reply).encode()


def _wait(what: str, ok: Callable[[], bool], timeout_s: float, *, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class Node:
    """One ``redis-server`` (or sentinel) process in its own process group; fixed port across restarts."""

    def __init__(self, root: Path, *, args: tuple[str, ...] = (), sentinel: bool = False, port: int | None = None,
                 conf: str = "") -> None:
        self.port = port or free_port()
        self.dir = root / str(self.port)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._args = args
        self._sentinel = sentinel
        self._conf = conf
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> Node:
        conf = self.dir / ("sentinel.conf" if self._sentinel else "redis.conf")
        # Sentinel rewrites its config file, so it gets a fresh one on every start.
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n{self._conf}")
        binary = need("redis-sentinel")["redis-sentinel"] if self._sentinel else need("redis-server")["redis-server"]
        argv = [binary, str(conf)]
        if not self._sentinel:
            argv += ["--save", "", "--appendonly", "no", "--protected-mode", "yes", *self._args]
        self.proc = subprocess.Popen(
            argv, cwd=self.dir, stdout=open(self.dir / "log", "ab"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"redis on {self.port} exited ({proc.returncode}): {self.log_tail()}")
            return redis_cmd(self.port, "PING", timeout=0.3) == b"PONG"

        _wait(f"redis on port {self.port}", up, timeout_s)
        return self

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "log").read_text(errors="replace")[-n:]
        return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, the whole group: no shutdown, no goodbye to clients or replicas."""
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)  # a stopped process still dies of SIGKILL; CONT keeps ps tidy
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None


class _Topology:
    """Subclasses build in ``_build``: a failure half-way kills what was started (no stray servers)."""

    def __init__(self, *args: object, **kw: object) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gw-faults-redis-"))
        self.nodes: list[Node] = []
        try:
            self._build(*args, **kw)
        except BaseException:
            self.close()
            raise

    def _build(self, *args: object, **kw: object) -> None:
        raise NotImplementedError

    def node(self, **kw: object) -> Node:
        n = Node(self.root, **kw)  # type: ignore[arg-type]
        self.nodes.append(n)
        return n

    def close(self) -> None:
        for n in self.nodes:
            with contextlib.suppress(Exception):
                n.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> _Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Standalone(_Topology):
    def _build(self) -> None:  # type: ignore[override]
        self.server = self.node().start()


class SentinelSet(_Topology):
    """Master + replica + 3 sentinels watching service ``mymaster`` with quorum 2."""

    SERVICE = "mymaster"

    def __init__(self, *, down_after_ms: int = 400, failover_timeout_ms: int = 2000) -> None:
        super().__init__(down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms)

    def _build(self, *, down_after_ms: int, failover_timeout_ms: int) -> None:  # type: ignore[override]
        need("redis-server", "redis-sentinel")
        self.master = self.node().start()
        self.replica = self.node(args=("--replicaof", "127.0.0.1", str(self.master.port))).start()
        replica = self.replica.port
        _wait("replica in sync", lambda: b"master_link_status:up" in redis_text(replica, "INFO", "replication"), 10)
        conf = (
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {self.SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {self.SERVICE} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.SERVICE} 1\n"
            "sentinel resolve-hostnames no\n"
        )
        self.sentinels = [self.node(sentinel=True, conf=conf).start() for _ in range(3)]

        def settled() -> bool:
            # Each sentinel knows the replica and the two other sentinels before anything is killed.
            for s in self.sentinels:
                reply = redis_cmd(s.port, "SENTINEL", "MASTER", self.SERVICE, timeout=0.5)
                info = dict(zip(reply[::2], reply[1::2], strict=True)) if isinstance(reply, list) else {}
                if info.get(b"num-other-sentinels") != b"2" or info.get(b"num-slaves") != b"1":
                    return False
            return True

        _wait("sentinels to discover each other and the replica", settled, 15, interval=0.1)

    @property
    def sentinel_addrs(self) -> list[str]:
        return [s.addr for s in self.sentinels]

    def master_port(self) -> int:
        """The master as the first sentinel that answers sees it."""
        for s in self.sentinels:
            with contextlib.suppress(OSError):
                reply = redis_cmd(s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE, timeout=0.5)
                if isinstance(reply, list):
                    return int(reply[1])
        raise AssertionError("no sentinel answers")

    def kill_master(self) -> Node:
        self.master.kill()
        return self.master

    def wait_failover(self, timeout_s: float = 20.0) -> int:
        """Until the sentinels name the replica as master and it says it is one; its port."""
        old = self.master.port

        def promoted() -> bool:
            return self.master_port() != old and b"role:master" in redis_text(self.replica.port, "INFO", "replication")

        _wait("sentinel failover", promoted, timeout_s, interval=0.1)
        return self.master_port()


class Cluster(_Topology):
    """3 masters + 3 replicas (``cluster-replicas 1``), short node timeout so a failover is quick."""

    def __init__(self, *, replicas: bool = True, node_timeout_ms: int = 1000) -> None:
        super().__init__(replicas=replicas, node_timeout_ms=node_timeout_ms)

    def _build(self, *, replicas: bool, node_timeout_ms: int) -> None:  # type: ignore[override]
        bins = need("redis-server", "redis-cli")
        args = ("--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-config-file", "nodes.conf", "--cluster-require-full-coverage", "yes")
        count = 6 if replicas else 3
        for _ in range(count):
            self.node(args=args, port=cluster_port()).start()
        create = [bins["redis-cli"], "--cluster", "create", *(n.addr for n in self.nodes),
                  "--cluster-replicas", "1" if replicas else "0", "--cluster-yes"]
        out = subprocess.run(create, capture_output=True, timeout=60, check=False)
        if out.returncode != 0:
            raise AssertionError(f"redis-cli --cluster create failed: {out.stdout[-2000:]!r} {out.stderr[-2000:]!r}")
        self.wait_ok()
        if replicas:
            # A replica that never finished its first sync cannot be promoted: wait for all of them.
            def synced() -> bool:
                infos = [redis_text(n.port, "INFO", "replication") for n in self.nodes]
                return sum(b"master_link_status:up" in i for i in infos) == count // 2

            _wait("every cluster replica in sync", synced, 20, interval=0.1)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def wait_ok(self, timeout_s: float = 20.0) -> None:
        live = [n for n in self.nodes if n.running]

        def ok() -> bool:
            return all(b"cluster_state:ok" in redis_text(n.port, "CLUSTER", "INFO", timeout=0.5) for n in live)

        _wait("cluster_state:ok on every live node", ok, timeout_s, interval=0.1)

    def master_of(self, key: str) -> Node:
        """The node serving ``key``'s slot (asked of any live node: CLUSTER KEYSLOT + CLUSTER SLOTS)."""
        live = next(n for n in self.nodes if n.running)
        slot = redis_cmd(live.port, "CLUSTER", "KEYSLOT", key)
        slots = redis_cmd(live.port, "CLUSTER", "SLOTS")
        assert isinstance(slot, int) and isinstance(slots, list)
        for entry in slots:
            lo, hi, master = entry[0], entry[1], entry[2]
            if lo <= slot <= hi:
                port = int(master[1])
                return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node serves slot {slot}")

    def wait_failover(self, old: Node, key: str, timeout_s: float = 20.0) -> Node:
        """Until a replica serves ``key``'s slot in place of the dead ``old`` and the cluster is ok."""

        def moved() -> bool:
            return self.master_of(key).port != old.port

        _wait("cluster failover (a replica promoted)", moved, timeout_s, interval=0.1)
        self.wait_ok(timeout_s)
        return self.master_of(key)
