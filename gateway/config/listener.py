"""``listen.limits:`` — how long and how many connections the public listener keeps (slow clients).

    listen:
      limits:
        handshake_timeout_s: 10   # TLS handshake, from accept
        header_timeout_s: 10      # a new connection's first request head, or a head once begun
        idle_timeout_s: 60        # keep-alive: no new request for this long -> closed
        body_timeout_s: 30        # no request-body bytes (or no response progress) for this long
        body_min_rate_bytes_s: 500  # and a body must average this (deadline grows 1 s per 500 B)
        max_connections: 2048     # open connections per listener and worker process

At ``max_connections`` a new connection closes the oldest idle keep-alive connection; if none is
idle it is closed at once (``gateway_connections_closed_total{reason="over_capacity"}``). The cap
bounds memory, at the price of refusing clients while every connection is busy. Size it from the
memory limit: an established TLS connection costs about 50 KB on uvloop (the container image) and
about 280 KB on the plain asyncio loop (its TLS transport keeps a 256 KiB read buffer); 2048 fit
the Helm chart's 256 MiB with uvloop. Connections still in their handshake are not counted (bounded
by ``handshake_timeout_s``; limit the connection rate at the load balancer).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import Model

# Upper bounds keep a typo (600 instead of 60) from turning a deadline back into "forever".
_Deadline = Annotated[float, Field(gt=0, le=600)]


class ListenerLimits(Model):
    handshake_timeout_s: _Deadline = 10.0
    header_timeout_s: _Deadline = 10.0
    idle_timeout_s: _Deadline = 60.0
    body_timeout_s: _Deadline = 30.0
    # A streamed body must also average this rate: its deadline is body_timeout_s plus one second
    # per this many bytes received (Apache mod_reqtimeout's MinRate), so a drip cannot hold an
    # upstream connection for hours by never pausing long enough for the per-read deadline.
    body_min_rate_bytes_s: Annotated[int, Field(ge=1, le=1_000_000_000)] = 500
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 2048
