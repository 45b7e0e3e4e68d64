"""``dpop:`` — DPoP proof verification, nonces and the replay store (issue: DPoP).

Placeholder: the DPoP work fills this in.
"""

from __future__ import annotations

from .base import Model


class DpopConfig(Model):
    pass
