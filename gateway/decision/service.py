"""The decision listeners of one gateway process: started and stopped with the server (issue #15).

``GatewayServer`` calls ``DecisionService.start`` after its own listener is up and ``stop`` when
it stops; readiness includes ``decision`` (every configured front is listening). Each front
serves the server's current ``GatewayState`` (a reload swaps it for the next check) and records
through the server's ``Observer`` (the same metrics and access log, with the front's mode).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..admin import Readiness
from ..app import StateHolder
from ..config.decision import DecisionConfig
from ..observability.observer import Observer
from .core import Verdict, check

__all__ = ("DecisionService",)

log = logging.getLogger("gateway.decision")


class Front(Protocol):
    port: int

    @property
    def serving(self) -> bool: ...
    async def start(self) -> None: ...
    async def stop(self, grace_s: float | None = None) -> None: ...


class DecisionService:
    def __init__(
        self, cfg: DecisionConfig, holder: StateHolder, observer: Observer, *, reuse_port: bool = False,
        readiness: Readiness | None = None,
    ) -> None:
        self.cfg = cfg
        self.fronts: dict[str, Front] = {}
        decide: Callable[..., Awaitable[Verdict]] = check
        if holder.current.cfg.observability.tracing.enabled:  # OpenTelemetry: not imported when off
            from ..observability.tracing import traced_check

            decide = traced_check(check)  # a SERVER span per check (unchanged if not set up)
        if cfg.grpc is not None:
            from .grpc import GrpcFront  # grpcio is only imported when the gRPC front is on

            self.fronts["grpc"] = GrpcFront(holder, observer, cfg, reuse_port=reuse_port, decide=decide)
        if cfg.http is not None:
            # Envoy ext_authz HTTP mode, nginx auth_request, Traefik forwardAuth (decision/http.py);
            # readiness: its /readyz answers what the admin port's does.
            from .http import DecisionHttpFront

            self.fronts["http"] = DecisionHttpFront(holder, observer, cfg, readiness=readiness, reuse_port=reuse_port,
                                                    decide=decide)

    @property
    def grpc_port(self) -> int:
        front = self.fronts.get("grpc")
        return front.port if front is not None else 0

    @property
    def http_port(self) -> int:
        front = self.fronts.get("http")
        return front.port if front is not None else 0

    async def start(self) -> None:
        try:
            for front in self.fronts.values():
                await front.start()
        except BaseException:
            await self.stop(0)
            raise

    def ready(self) -> bool:
        return all(f.serving for f in self.fronts.values())

    async def stop(self, grace_s: float | None = None) -> None:
        for name, front in self.fronts.items():
            try:
                await front.stop(grace_s)
            except Exception:  # stopping one front must not keep the others open
                log.exception("decision: stopping the %s front failed", name)
