"""config/examples/tpp-quotas/gateway.yaml loads (with stand-in files and secrets) and means what it says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "tpp-quotas" / "gateway.yaml"


def test_tpp_quota_example_loads(pki: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"GATEWAY_TLS_CERT": pki.server_cert, "GATEWAY_TLS_KEY": pki.server_key,
                        "GATEWAY_CLIENT_CA": pki.ca_pem, "GATEWAY_ADMIN_TOKEN": "t" * 40,
                        "DPOP_NONCE_KEY": "n" * 40}.items():
        monkeypatch.setenv(name, str(value))
    cfg = load_config(str(EXAMPLE))
    rl = cfg.rate_limits
    assert rl is not None and rl.backend == "redis" and rl.source_budget is not None
    assert [lim.id for lim in rl.limits_for("payments")] == ["tpp-burst", "psu-payments", "tpp-daily-payments"]
    assert rl.headers_for("accounts") and rl.source_budget.fail == "closed"
    assert all(lim.fail == "open" for lim in rl.limits)
