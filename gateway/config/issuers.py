"""``issuers:`` — who may issue access tokens and how their tokens are verified (issue: tokens).

Placeholder: the token-verification work fills this in.
"""

from __future__ import annotations

from .base import Model


class IssuerConfig(Model):
    name: str
    issuer: str
