"""Fixtures for the operations tests: a threaded upstream and real gateway processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .gwproc import GatewayProcess, ThreadedUpstream


@pytest.fixture
def threaded_upstream() -> Iterator[ThreadedUpstream]:
    up = ThreadedUpstream()
    yield up
    up.close()


@pytest.fixture
def gateway_process() -> Iterator[Callable[..., GatewayProcess]]:
    """``gateway_process(config_path, workers=None)`` starts ``python -m gateway run``; stopped after."""
    started: list[GatewayProcess] = []

    def start(config: Path, *, workers: int | None = None, env: dict[str, str] | None = None) -> GatewayProcess:
        gp = GatewayProcess(config, workers=workers, env=env)
        started.append(gp)
        return gp

    yield start
    for gp in started:
        gp.stop()
