"""A route's ``auth:`` block: which tokens it accepts (issue: tokens fills in audience/scopes).

``auth: none`` must be written out to switch auth off on a route (default deny).
"""

from __future__ import annotations

from typing import Literal

from .base import Model

SenderConstraint = Literal["dpop", "mtls", "any", "none"]


class AuthPolicy(Model):
    issuers: tuple[str, ...] = ()
    sender_constraint: SenderConstraint = "any"
