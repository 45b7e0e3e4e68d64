"""Denied signing keys and tokens (issue #13): the local view every request is checked against.

Two layers: the config's ``revocation.deny`` list (replaced whole on reload) and the runtime
denials made through the admin API (kept across reloads; mirrored from Redis by
``gateway.revocation`` when several processes share one). Keys are ``(issuer name, kid|jti)``.
Lookups are a dict probe each, and skipped entirely while nothing is denied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..config.revocation import DenyEntry

__all__ = ("Denials", "DenyList")

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


_EMPTY = Denials()


class DenyList:
    """``kid_denied`` / ``jti_denied`` on the hot path; ``version`` moves when a kid denial changes
    (the JWKS caches drop denied keys from their usable set when it does)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.config: Denials = _EMPTY
        self.runtime: Denials = _EMPTY
        self.version = 0
        self._kids: frozenset[Key] = frozenset()
        self._has_jtis = False

    def set_config(self, entries: Iterable[DenyEntry]) -> None:
        self.config = Denials.from_entries(entries)
        self._rebuild()

    def set_runtime(self, denials: Denials) -> None:
        self.runtime = denials
        self._rebuild()

    def _rebuild(self) -> None:
        kids = self.config.kids | self.runtime.kids
        if kids != self._kids:
            self._kids = kids
            self.version += 1
        self._has_jtis = bool(self.config.jtis) or bool(self.runtime.jtis)

    def kid_denied(self, issuer: str, kid: str | None) -> bool:
        return kid is not None and bool(self._kids) and (issuer, kid) in self._kids

    def jti_denied(self, issuer: str, jti: str | None) -> bool:
        if jti is None or not self._has_jtis:
            return False
        key = (issuer, jti)
        for layer in (self.runtime, self.config):
            if key in layer.jtis:
                until = layer.jtis[key]
                if until is None or until > self._clock():
                    return True
        return False

    def denied_kids(self, issuer: str) -> frozenset[str]:
        return frozenset(kid for iss, kid in self._kids if iss == issuer)
