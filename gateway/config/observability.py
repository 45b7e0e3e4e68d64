"""``observability:`` — access log and metrics settings (issue: operations).

Placeholder: the operations work fills this in.
"""

from __future__ import annotations

from .base import Model


class ObservabilityConfig(Model):
    pass
