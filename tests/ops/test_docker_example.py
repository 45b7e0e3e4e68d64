"""The Dockerfile's ``docker run`` example is the one that is tested (issue #21, item 3).

The example is read from the Dockerfile's header comment (mounts, environment, command line), its
mounts are laid out as the container sees them (/etc/gateway/... under a temporary directory, the
image's WORKDIR as working directory), and the config it names goes through ``check-config`` and
is started with ``gateway run`` for one request. Where a container engine works (rootless
``podman`` from Debian, or ``docker``), the image is built and run with exactly that example;
elsewhere that test is skipped, saying why.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.ops.test_image import _instructions

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def _example() -> list[str]:
    """The ``docker run`` example of the Dockerfile's header, as argv (continuations joined)."""
    lines: list[str] = []
    for raw in DOCKERFILE.splitlines():
        if not raw.startswith("#"):
            break
        text = raw.lstrip("#").strip()
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1] + " " + text
        elif text.startswith("docker run "):
            lines.append(text)
    (run,) = lines
    return shlex.split(run)


class Example:
    def __init__(self, argv: list[str]) -> None:
        self.mounts: dict[str, Path] = {}
        self.env: dict[str, str] = {}
        self.ports: list[str] = []
        rest: list[str] = []
        it = iter(argv[2:])
        for arg in it:
            if rest:  # after the image: its command line
                rest.append(arg)
            elif arg == "-v":
                src, dst, *_ = next(it).split(":")
                self.mounts[dst] = Path(src.replace("$PWD", str(REPO)))
            elif arg == "-e":
                name, _, value = next(it).partition("=")
                self.env[name] = value
            elif arg == "-p":
                self.ports.append(next(it))
            elif arg == "--tmpfs":
                next(it)
            elif arg.startswith("-"):
                continue
            else:
                rest.append(arg)
        self.image, *self.command = rest
        self.config = self.command[self.command.index("--config") + 1]


def _image_env() -> dict[str, str]:
    """The final stage's ENV (GATEWAY_ADMIN_PORT and kin)."""
    ins = _instructions()
    final = ins[max(n for n, (i, _) in enumerate(ins) if i == "FROM"):]
    out: dict[str, str] = {}
    for item in shlex.split(" ".join(a for i, a in final if i == "ENV")):
        name, _, value = item.partition("=")
        out[name] = value
    out.pop("PATH", None)  # /opt/gateway/bin: the image's venv, not this machine's
    return out


def _layout(tmp: Path, ex: Example) -> Path:
    """The container's /etc/gateway, built from the example's mounts; returns the config path."""
    for dst, src in ex.mounts.items():
        assert src.is_dir(), f"the example mounts {src}, which does not exist"
        shutil.copytree(src, tmp / dst.lstrip("/"))
    return tmp / ex.config.lstrip("/")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def test_example_names_real_files_and_the_images_command() -> None:
    ex = Example(_example())
    assert ex.image == "fapi-gateway" and ex.command[0] == "run"
    assert ex.mounts["/etc/gateway/config"] == REPO / "config" / "examples" / "docker"
    assert (REPO / "config/examples/docker" / Path(ex.config).name).is_file()
    # The variables the config needs without a default are all passed.
    text = (ex.mounts["/etc/gateway/config"] / Path(ex.config).name).read_text()
    needed = {m.group(1) for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)}
    assert needed and needed <= set(ex.env), needed - set(ex.env)
    assert "GATEWAY_ADMIN_PORT" in _image_env()
    assert f"{_image_env()['GATEWAY_ADMIN_PORT']}:" in " ".join(ex.ports)


def test_example_config_checks_in_the_image_layout(tmp_path: Path) -> None:
    ex = Example(_example())
    config = _layout(tmp_path, ex)
    out = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--strict", str(config)],
                         cwd=tmp_path / "etc" / "gateway", env=_env({**_image_env(), **ex.env}),
                         capture_output=True, text=True, timeout=60)
    # --strict fails only on the warning the example means to show (admin on 0.0.0.0 in a container).
    assert out.returncode == 78 and "OK" in out.stdout, out.stderr
    assert "admin_non_loopback" in out.stdout and "1 risky setting(s) not acknowledged" in out.stderr
    plain = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(config)],
                           cwd=tmp_path / "etc" / "gateway", env=_env({**_image_env(), **ex.env}),
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stderr
    # Without the example's -e flags: every missing variable is named, with its line.
    without = {k: v for k, v in os.environ.items() if k not in ex.env} | {"PYTHONPATH": str(REPO)}
    bare = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(config)],
                          cwd=tmp_path, env=without, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 78
    for name in ex.env:
        assert f"environment variable {name} is not set" in bare.stderr, bare.stderr


def test_example_runs_in_the_image_layout(tmp_path: Path) -> None:
    """``gateway run`` on the example, as the container would run it: one request, its challenge."""
    ex = Example(_example())
    config = _layout(tmp_path, ex)
    gw, admin = _free_port(), _free_port()
    env = _env({**_image_env(), **ex.env, "GATEWAY_PORT": str(gw), "GATEWAY_ADMIN_PORT": str(admin),
                "PUBLIC_ORIGIN": f"https://localhost:{gw}"})
    proc = subprocess.Popen([sys.executable, "-m", "gateway", *ex.command[:1], "--config", str(config)],
                            cwd=tmp_path / "etc" / "gateway", env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{admin}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        s = requests.Session()
        s.trust_env = False
        r = s.get(f"https://localhost:{gw}/accounts", verify=str(REPO / "certs/dev/ca.pem"), timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _engine() -> str | None:
    for engine in ("podman", "docker"):
        if shutil.which(engine) and subprocess.run([engine, "info"], capture_output=True, timeout=60).returncode == 0:
            return engine
    return None


@pytest.mark.slow
def test_example_in_a_real_container(tmp_path: Path) -> None:
    engine = _engine()
    if engine is None:
        pytest.skip("no working container engine (podman or docker: `apt-get install podman` for rootless "
                    "podman); the image layout tests above still ran the example")
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE, re.M)
    assert base is not None
    image = base.group(1)
    if subprocess.run([engine, "image", "inspect", image], capture_output=True, timeout=60).returncode != 0:
        pulled = subprocess.run([engine, "pull", "-q", image], capture_output=True, text=True, timeout=600)
        if pulled.returncode != 0:
            why = (pulled.stderr.strip().splitlines() or ["?"])[-1]
            pytest.skip(f"{engine} works but cannot get the base image {image} ({why[:200]}); the image "
                        "layout tests above still ran the example")
    ex = Example(_example())
    tag = f"fapi-gateway-test:{os.getpid()}"
    built = subprocess.run([engine, "build", "-t", tag, str(REPO)], capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    gw = _free_port()
    argv = _example()
    argv[0] = engine
    argv = [a.replace("$PWD", str(REPO)) for a in argv]
    argv[argv.index("8443:8443")] = f"127.0.0.1:{gw}:8443"
    argv[argv.index("8442:8442")] = f"127.0.0.1:{_free_port()}:8442"
    argv = [a if not a.startswith("PUBLIC_ORIGIN=") else f"PUBLIC_ORIGIN=https://localhost:{gw}" for a in argv]
    argv[argv.index(ex.image)] = tag
    argv.insert(2, "-d")
    started = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status != 401:
            try:
                status = requests.get(f"https://localhost:{gw}/accounts", verify=str(REPO / "certs/dev/ca.pem"),
                                      timeout=2).status_code
            except requests.RequestException:
                time.sleep(0.5)
        assert status == 401, subprocess.run([engine, "logs", cid], capture_output=True, text=True).stderr
    finally:
        subprocess.run([engine, "rm", "-f", cid], capture_output=True, timeout=60)
        subprocess.run([engine, "rmi", "-f", tag], capture_output=True, timeout=120)
