"""The container image, tested without a Docker engine: the Dockerfile's shape, its HEALTHCHECK
command run for real, and the ENTRYPOINT run from a fresh, non-editable install of the project."""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    logical = ""
    for raw in DOCKERFILE.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        word, _, rest = logical.partition(" ")
        out.append((word.upper(), rest.strip()))
        logical = ""
    return out


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_dockerfile_shape() -> None:
    ins = _instructions()
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) >= 2 and froms[-1].endswith("AS runtime") and "slim" in DOCKERFILE
    final = ins[max(n for n, (i, _) in enumerate(ins) if i == "FROM"):]
    final_runs = " ".join(a for i, a in final if i == "RUN")
    # No compilers and no package installs in the final stage; pip is removed from the venv.
    for banned in ("apt-get install", "gcc", "build-essential"):
        assert banned not in final_runs
    assert "pip uninstall --yes pip" in final_runs
    (user,) = [a for i, a in final if i == "USER"]
    assert user.split(":")[0] not in ("0", "root") and int(user.split(":")[0]) >= 10000
    assert _exec_form(next(a for i, a in final if i == "ENTRYPOINT")) == ["gateway"]
    assert _exec_form(next(a for i, a in final if i == "CMD"))[0] == "run"
    volumes = _exec_form(next(a for i, a in final if i == "VOLUME"))
    assert "/tmp" in volumes and "/etc/gateway/config" in volumes and "/etc/gateway/tls" in volumes
    env = " ".join(a for i, a in final if i == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # nothing is written to the read-only root fs
    ignore = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "**" and "!gateway/" in ignore


def _locked(path: Path, *, here_only: bool = False) -> dict[str, str]:
    """name -> version of every package pinned in a lock file (``here_only``: those whose
    environment marker holds for this interpreter)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", line)
        if m and not (here_only and m.group(3) and not Marker(m.group(3)).evaluate()):
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def test_locks_cover_pyproject() -> None:
    """Each lock pins every requirement pyproject.toml names for it, at a version its range allows
    (a range changed without `bash .ci/lock` fails here), and every pin carries hashes."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {
        "requirements.txt": [*project["dependencies"], *extras["uvloop"], *extras["redis"], *extras["decision"],
                             *extras["otel"]],
        "requirements-dev.txt": [*project["dependencies"], *extras["dev"]],
    }
    for lock, reqs in wanted.items():
        pins = _locked(REPO / lock)
        text = (REPO / lock).read_text()
        assert len(pins) == len(re.findall(r"(?m)^\S+==", text))
        assert all(block.count("--hash=sha256:") for block in re.split(r"(?m)^(?=\S+==)", text)[1:]), lock
        for spec in reqs:
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            assert name in pins, f"{lock}: {name} is not locked (run bash .ci/lock)"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"{lock}: {name}=={pins[name]} is outside {req.specifier} (run bash .ci/lock)")


def _healthcheck_argv() -> list[str]:
    (args,) = [a for i, a in _instructions() if i == "HEALTHCHECK"]
    cmd = args[args.index("CMD") + 3:].strip()
    argv = _exec_form(cmd)
    assert argv[0] == "python"  # no curl in a slim image
    return [sys.executable, *argv[1:]]


def test_healthcheck_command_probes_the_admin_port() -> None:
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        ok = subprocess.run(_healthcheck_argv(), env={**os.environ, "GATEWAY_ADMIN_PORT": str(port)},
                            capture_output=True, timeout=20)
        assert ok.returncode == 0, ok.stderr
    finally:
        server.shutdown()
        server.server_close()
    down = subprocess.run(_healthcheck_argv(), env={**os.environ, "GATEWAY_ADMIN_PORT": str(port)},
                          capture_output=True, timeout=20)
    assert down.returncode != 0


def _build_stage_runs() -> list[str]:
    """The build stage's RUN commands, as shell text."""
    ins = _instructions()
    froms = [n for n, (i, _) in enumerate(ins) if i == "FROM"]
    build = ins[froms[0]:froms[1]]
    assert build[0][1].endswith("AS build")
    return [a for i, a in build if i == "RUN"]


def test_image_installs_only_from_the_hash_pinned_lock() -> None:
    runs = " ".join(_build_stage_runs())
    installs = [seg.strip() for seg in runs.split("&&") if re.search(r"\bpip install ", seg)]
    assert installs, runs
    for cmd in installs:
        # Either everything hash-checked from a lock, or the project alone without its deps.
        assert ("--require-hashes -r requirements" in cmd) or ("--no-deps --no-build-isolation ." in cmd), cmd
    assert "cyclonedx-py environment" in runs and "/opt/gateway/sbom.cdx.json" in runs


@pytest.mark.slow
def test_entrypoint_runs_from_a_fresh_install(tmp_path: Path) -> None:
    """The image's build stage, run for real without Docker: its RUN commands (with /opt paths
    moved under tmp_path) build the venv from the hash-pinned lock and write the SBOM; then
    ``gateway --help`` and ``gateway check-config`` from that install, not from the repo."""
    env_dir = tmp_path / "gateway"
    gw = env_dir / "bin" / "gateway"
    # Copy the sources first so the build never writes into the shared work tree (build/, *.egg-info).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt", "requirements-sbom.txt"):
        (src / name).write_bytes((REPO / name).read_bytes())
    subprocess.run(["cp", "-r", str(REPO / "gateway"), str(src / "gateway")], check=True)
    # Without PYTHONPATH: a test run that sets it (a worktree) would import that tree's gateway
    # instead of the fresh install under test.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip_env = {**clean, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for run in _build_stage_runs():
        cmd = (run.replace("/opt/gateway", str(env_dir)).replace("/opt/sbom", str(tmp_path / "sbom"))
               .replace("python -m venv", f"{shlex.quote(sys.executable)} -m venv"))
        built = subprocess.run(["bash", "-c", cmd], cwd=src, env=pip_env, capture_output=True, text=True,
                               timeout=600)
        assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]

    # The SBOM names every locked runtime package at its locked version, and the gateway itself.
    sbom = json.loads((env_dir / "sbom.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    listed = {(c["name"].lower().replace("_", "-"), c["version"]) for c in sbom["components"]}
    locked = _locked(REPO / "requirements.txt", here_only=True)
    locked.pop("setuptools")  # a build-time requirement, removed from the image's venv
    missing = {(n, v) for n, v in locked.items() if (n, v) not in listed}
    assert not missing, missing
    assert any(n == "fapi-gateway" for n, _ in listed)

    where = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"],
                           cwd=tmp_path, env=clean, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(env_dir)), where.stdout

    help_ = subprocess.run([str(gw), "--help"], env=clean, capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "check-config" in help_.stdout

    check = subprocess.run([str(gw), "check-config", "config/dev.yaml"], cwd=REPO, env=clean,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "OK" in check.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: []\nlisten: {port: 99999}\n")
    refused = subprocess.run([str(gw), "check-config", str(bad)], env=clean, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 78 and "listen.port" in refused.stderr
    # The image's default command line parses (run --config FILE) with the installed CLI.
    (cmd,) = [a for i, a in _instructions() if i == "CMD"]
    assert shlex.join(_exec_form(cmd)).startswith("run --config /etc/gateway/config/")
