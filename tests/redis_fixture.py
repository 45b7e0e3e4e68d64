"""Real Redis for tests (register with ``pytest_plugins = ["redis_fixture"]`` or import the fixtures).

* ``redis_url`` (session): the machine's Redis at 127.0.0.1:6379 when it answers, otherwise a
  ``redis-server`` started for the session on a free port; skips with the reason when neither works.
* ``redis_key_prefix`` (session): a unique key prefix, so runs sharing one Redis never collide.
* ``own_redis`` (function): a private ``redis-server`` that a test may stop and restart (never
  stop the machine's Redis).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest

__all__ = ("RedisProcess", "own_redis", "redis_key_prefix", "redis_url")

_MACHINE = ("127.0.0.1", 6379)


def _answers_ping(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A ``redis-server`` owned by the test: no persistence, bound to 127.0.0.1, fixed port across restarts."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = _free_port()
        self._dir = tempfile.mkdtemp(prefix="gw-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        self._proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self._dir, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {self._proc.returncode}")
            if _answers_ping("127.0.0.1", self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer PING in time")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def _start_own() -> RedisProcess:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no Redis: 127.0.0.1:6379 does not answer and redis-server is not on PATH "
                    "(apt-get install redis-server)")
    proc = RedisProcess(binary)
    try:
        proc.start()
    except (OSError, RuntimeError) as exc:
        proc.cleanup()
        pytest.skip(f"no Redis: 127.0.0.1:6379 does not answer and redis-server failed to start ({exc})")
    return proc


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if _answers_ping(*_MACHINE):
        yield f"redis://{_MACHINE[0]}:{_MACHINE[1]}/0"
        return
    proc = _start_own()
    try:
        yield proc.url
    finally:
        proc.cleanup()


@pytest.fixture(scope="session")
def redis_key_prefix() -> str:
    return f"gwtest:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    proc = _start_own()
    try:
        yield proc
    finally:
        proc.cleanup()
