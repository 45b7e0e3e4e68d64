"""A real nginx (the Debian package) started by a test: its own prefix, config and temp paths in a
temporary directory, never the system service. Stopped (and waited for) by the test."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

__all__ = ("Nginx", "free_port", "nginx_binary")

_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def nginx_binary() -> str:
    """The nginx binary, with auth_request; skips LOUDLY (the package to install) when missing."""
    found = shutil.which("nginx") or next((p for p in _CANDIDATES if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.skip("nginx not installed: apt-get install nginx-light (bash .ci/setup dev does it); "
                    "the real-nginx auth_request tests need it")
    out = subprocess.run([found, "-V"], capture_output=True, text=True, check=False)
    if "--with-http_auth_request_module" not in out.stderr + out.stdout:
        pytest.skip(f"{found} has no http_auth_request module: install Debian's nginx-light")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main_conf(prefix: Path, server_conf: Path) -> str:
    """nginx.conf around one server block: every writable path under ``prefix``."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root, workers would drop to nobody
    names = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "\n".join(f"    {name}_temp_path {prefix / 'tmp' / name};" for name in names)
    return f"""{user}worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log {prefix / 'access.log'};
{temp}
    include {server_conf};
}}
"""


class Nginx:
    def __init__(self, prefix: Path, server_conf: str) -> None:
        self.binary = nginx_binary()
        self.prefix = prefix
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        (prefix / "logs").mkdir(exist_ok=True)
        self.server_conf = prefix / "server.conf"
        self.server_conf.write_text(server_conf)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(main_conf(prefix, self.server_conf))
        self.stderr = prefix / "stderr.log"
        self.proc: asyncio.subprocess.Process | None = None

    def _args(self) -> list[str]:
        return [self.binary, "-e", "stderr", "-p", str(self.prefix), "-c", str(self.conf),
                "-g", f"daemon off; pid {self.prefix / 'nginx.pid'}; error_log stderr info;"]

    def check(self) -> None:
        """``nginx -t`` on the config: a config error fails the test with nginx's own message."""
        out = subprocess.run([*self._args(), "-t"], capture_output=True, text=True, check=False)
        assert out.returncode == 0, f"nginx -t failed:\n{out.stderr}"

    async def start(self, port: int) -> None:
        self.check()
        with self.stderr.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(*self._args(), stdout=err, stderr=err)
        for _ in range(200):
            if self.proc.returncode is not None:
                raise AssertionError(f"nginx exited {self.proc.returncode}:\n{self.log()}")
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.025)
                continue
            w.close()
            return
        raise AssertionError(f"nginx did not listen on {port}:\n{self.log()}")

    def log(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()  # SIGTERM: fast shutdown of master and workers
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
