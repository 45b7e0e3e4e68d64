"""Per-request bookkeeping for the request handler: metrics and the access log in one call.

The handler records a few timestamps and calls ``Observer.finished`` once, in ``finally``; this
keeps the hot path to a handful of attribute reads, two counter/histogram updates and, when the
access log is on, one ``json.dumps``. The ``Observer`` lives on the request handler
(``app.GatewayHandler``) and outlives config reloads; the server swaps its ``access_log`` when a
reload changes that section.
"""

from __future__ import annotations

import time
from typing import Protocol

from ..model import Decision, VerifiedToken
from .accesslog import AccessLog, AccessRecord
from .metrics import Metrics

__all__ = ("CLIENT_CLOSED", "Observer")

# nginx's convention for "the client went away before we answered".
CLIENT_CLOSED = 499


class Request(Protocol):
    """What is recorded of a request: an aiohttp request, or a decision front's OriginalRequest."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def query_string(self) -> str: ...
    @property
    def remote(self) -> str | None: ...


class Observer:
    __slots__ = ("access_log", "metrics")

    def __init__(self, metrics: Metrics, access_log: AccessLog | None = None) -> None:
        self.metrics = metrics
        self.access_log = access_log

    def finished(
        self,
        request: Request,
        *,
        started: float,
        route_id: str | None,
        status: int,
        reason: str | None,
        decision: Decision | None,
        interaction_id: str | None,
        auth_s: float | None = None,
        upstream_status: int | None = None,
        upstream_s: float | None = None,
        mode: str = "proxy",
        refused_token: VerifiedToken | None = None,
        limit: str | None = None,
        signature: tuple[str, str] | None = None,
    ) -> None:
        """Count and log one finished request. ``started`` is a ``time.perf_counter()`` value."""
        elapsed = time.perf_counter() - started
        method = request.method
        metrics = self.metrics
        metrics.route(route_id, mode).finished(method, status, reason, elapsed, auth_s, upstream_s)
        if reason == "replay_store_unavailable":
            # The replay store failed this request (RFC 9449 §11.1 check impossible: refused).
            metrics.replay_store_error()
        log = self.access_log
        if log is None or not log.enabled:
            return
        # A refusal after verification (binding_mismatch, insufficient_scope) still names the token.
        token = decision.token if decision is not None else refused_token
        binding = decision.binding if decision is not None else None
        log.emit(
            AccessRecord(
                method=method,
                path=request.path,
                query=request.query_string,
                status=status,
                latency_s=elapsed,
                route=route_id,
                reason=reason,
                client_id=token.client_id if token is not None else None,
                binding=binding.type if binding is not None else None,
                thumbprint=binding.thumbprint if binding is not None else None,
                interaction_id=interaction_id,
                upstream_status=upstream_status,
                upstream_latency_s=upstream_s,
                remote=request.remote,
                jti=token.jti if token is not None else None,
                mode=mode,
                sub=token.subject if token is not None else None,
                would_refuse=decision.would_refuse if decision is not None else None,
                limit=limit,
                signature_keyid=signature[0] if signature is not None else None,
                signature_label=signature[1] if signature is not None else None,
            )
        )

