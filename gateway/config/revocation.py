"""``revocation:`` — the kill switch: denied signing keys (``kid``) and tokens (``jti``), issue #13.

    revocation:
      deny:                                   # durable denials, hot-reloaded with the file
        - {issuer: bank-as, kid: "2026-03-key"}          # every token signed with that key
        - {issuer: bank-as, jti: "5f1c...", until: "2026-12-31T00:00:00Z"}   # one token
      max_denied_jtis: 100000                 # runtime (admin API) jti denials, per gateway
      max_denied_kids: 1000
      redis_key_prefix: "gateway:revocation:" # shared by every replica (with dpop.replay: redis)
      sync_interval_s: 1                      # how often a replica picks up others' denials

Denials made through the admin API (``POST /admin/revocation/...``, needs ``admin.token``) live
in Redis when ``dpop.replay.backend`` is ``redis`` (every worker and replica sees them within
``sync_interval_s``), otherwise in the process only: the ``deny:`` list is the durable way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AwareDatetime, Field, model_validator

from .auth import AuthPolicy
from .base import Model
from .issuers import IssuerConfig

__all__ = (
    "MAX_JTI_CHARS",
    "MAX_KID_CHARS",
    "DenyEntry",
    "RevocationConfig",
    "check_deny_entries",
    "check_introspect_always",
)

MAX_KID_CHARS = 256  # the JWT header limit in gateway.verify.jwt
MAX_JTI_CHARS = 1024


class DenyEntry(Model):
    issuer: Annotated[str, Field(min_length=1)]  # the name of an entry under issuers:
    kid: Annotated[str, Field(min_length=1, max_length=MAX_KID_CHARS)] | None = None
    jti: Annotated[str, Field(min_length=1, max_length=MAX_JTI_CHARS)] | None = None
    # jti denials only; none: until the entry is removed from the file.
    until: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one(self) -> DenyEntry:
        if (self.kid is None) == (self.jti is None):
            raise ValueError("set exactly one of kid or jti")
        if self.until is not None and self.kid is not None:
            raise ValueError("until applies to jti denials only (a denied key stays denied until removed)")
        return self

    @property
    def until_ts(self) -> float | None:
        return self.until.timestamp() if isinstance(self.until, datetime) else None


class RevocationConfig(Model):
    deny: Annotated[tuple[DenyEntry, ...], Field(max_length=10_000)] = ()
    max_denied_jtis: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    max_denied_kids: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # A jti denial made through the admin API without ``ttl_s`` lasts this long (beyond any
    # access token's lifetime); ``ttl_s`` may not exceed ``max_jti_ttl_s``.
    default_jti_ttl_s: Annotated[float, Field(gt=0, le=30 * 86400)] = 86400.0
    max_jti_ttl_s: Annotated[float, Field(gt=0, le=365 * 86400)] = 30 * 86400.0
    redis_key_prefix: Annotated[str, Field(min_length=1, max_length=128)] = "gateway:revocation:"
    sync_interval_s: Annotated[float, Field(ge=0.05, le=60)] = 1.0

    @model_validator(mode="after")
    def _ttls(self) -> RevocationConfig:
        if self.default_jti_ttl_s > self.max_jti_ttl_s:
            raise ValueError("default_jti_ttl_s is larger than max_jti_ttl_s")
        return self


def check_introspect_always(where: str, policy: AuthPolicy, issuers: tuple[IssuerConfig, ...]) -> list[str]:
    """``introspect: always`` needs an introspection endpoint for each of the route's issuers."""
    if policy.introspect != "always":
        return []
    by_name = {i.name: i for i in issuers}
    return [
        f"{where}.auth.introspect: always needs issuer {name!r} to have an introspection: block "
        "(its RFC 7662 endpoint and client authentication)"
        for name in policy.issuers
        if name in by_name and by_name[name].introspection is None
    ]


def check_deny_entries(cfg: RevocationConfig, issuers: tuple[IssuerConfig, ...]) -> list[str]:
    names = {i.name for i in issuers}
    return [
        f"revocation.deny[{n}].issuer: no issuer named {entry.issuer!r} under issuers:"
        for n, entry in enumerate(cfg.deny)
        if entry.issuer not in names
    ]
