"""``lifecycle:`` — worker processes, graceful shutdown and config hot reload (issue: operations).

    lifecycle:
      workers: 1              # processes sharing the listen port (SO_REUSEPORT)
      shutdown_delay_s: 0     # after SIGTERM: not ready, still serving (endpoints propagate)
      shutdown_grace_s: 20    # then: listener closed, in-flight requests get this long
      reload:
        watch_file: true      # also reload when the file changes (SIGHUP always reloads)
        poll_interval_s: 2

``--workers N`` on the command line overrides ``workers``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import Model


class ReloadConfig(Model):
    watch_file: bool = True
    poll_interval_s: Annotated[float, Field(ge=0.1, le=3600)] = 2.0


class LifecycleConfig(Model):
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    shutdown_delay_s: Annotated[float, Field(ge=0, le=300)] = 0.0
    shutdown_grace_s: Annotated[float, Field(gt=0, le=3600)] = 20.0
    reload: ReloadConfig = ReloadConfig()
