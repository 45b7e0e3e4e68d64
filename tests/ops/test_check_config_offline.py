"""``gateway check-config --no-files`` on the config the Helm chart renders, as is: its certificate
paths (/etc/gateway/tls/...) exist only in the pod, so without the flag it cannot be checked
offline (issue #21, item 6). With it, the same file is accepted and a real mistake still fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("helm_python", reason="dev extra helm-python-sdk (real Helm engine) missing")

from tests.ops.test_helm_chart import CHART, one, render

REPO = Path(__file__).resolve().parents[2]
POD_ENV = {"POD_IP": "10.1.2.3", "GATEWAY_DPOP_NONCE_SECRET": "n" * 48, "GATEWAY_REDIS_PASSWORD": "pw"}


def _check(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **POD_ENV}
    return subprocess.run([sys.executable, "-m", "gateway", "check-config", *flags, str(path)], env=env,
                          capture_output=True, text=True, timeout=60)


def test_chart_rendered_config_checks_offline(tmp_path: Path) -> None:
    rendered = tmp_path / "gateway.yaml"
    rendered.write_text(one(render(CHART), "ConfigMap")["data"]["gateway.yaml"])
    with_files = _check(rendered)
    assert with_files.returncode == 78 and "file not found: /etc/gateway/tls/" in with_files.stderr
    offline = _check(rendered, "--no-files")
    assert offline.returncode == 0 and "OK" in offline.stdout, offline.stderr
    # Still a check: a wrong key fails with --no-files too.
    rendered.write_text(rendered.read_text().replace("routes:", "route:", 1))
    broken = _check(rendered, "--no-files")
    assert broken.returncode == 78 and "route: unknown key (did you mean `routes`?)" in broken.stderr
