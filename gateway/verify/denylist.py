"""Denied signing keys and tokens (issue #13): the local view every request is checked against.

Two layers: the config's ``revocation.deny`` list (one per gateway state, replaced on reload) and
the runtime denials made through the admin API (``SharedDenials``: carried across reloads, and
mirrored from Redis by ``gateway.revocation`` when several processes share one). Keys are
``(issuer name, kid|jti)``. A check is a dict probe per layer, skipped while nothing is denied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..config.revocation import DenyEntry

__all__ = ("Denials", "DenyList", "SharedDenials")

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Denials:
    """One layer: denied kids, and denied jtis with their expiry (None: no expiry)."""

    kids: frozenset[Key] = frozenset()
    jtis: Mapping[Key, float | None] = field(default_factory=dict)

    @classmethod
    def from_entries(cls, entries: Iterable[DenyEntry]) -> Denials:
        kids: set[Key] = set()
        jtis: dict[Key, float | None] = {}
        for e in entries:
            if e.kid is not None:
                kids.add((e.issuer, e.kid))
            elif e.jti is not None:
                jtis[(e.issuer, e.jti)] = e.until_ts
        return cls(frozenset(kids), jtis)


class SharedDenials:
    """The runtime layer, replaced whole (readers never see a half-made change)."""

    def __init__(self) -> None:
        self.current = Denials()
        self.version = 0  # moves when the denied kids change
        # Kept here, not in gateway.revocation, so that they outlive config reloads too:
        # the Redis generation last seen (a new one: Redis lost the shared list) and the denials
        # this process made that Redis did not take (published again once it is back).
        self.store_generation: bytes | None = None
        self.unpublished = Denials()

    def replace(self, denials: Denials) -> None:
        if denials.kids != self.current.kids:
            self.version += 1
        self.current = denials


class DenyList:
    """``kid_denied`` / ``jti_denied`` on the hot path; ``version`` moves when the denied kids
    change (the JWKS caches then recompute their usable key set)."""

    def __init__(
        self,
        entries: Iterable[DenyEntry] = (),
        *,
        shared: SharedDenials | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self.config = Denials.from_entries(entries)
        self.shared = shared if shared is not None else SharedDenials()

    @property
    def version(self) -> int:
        return self.shared.version

    def kid_denied(self, issuer: str, kid: str | None) -> bool:
        if kid is None:
            return False
        key = (issuer, kid)
        return key in self.config.kids or key in self.shared.current.kids

    def jti_denied(self, issuer: str, jti: str | None) -> bool:
        if jti is None:
            return False
        config, runtime = self.config.jtis, self.shared.current.jtis
        if not config and not runtime:
            return False
        key = (issuer, jti)
        for layer in (runtime, config):
            if key in layer:
                until = layer[key]
                if until is None or until > self._clock():
                    return True
        return False

    def denied_kids(self, issuer: str) -> frozenset[str]:
        kids = self.config.kids | self.shared.current.kids
        return frozenset(kid for iss, kid in kids if iss == issuer)
