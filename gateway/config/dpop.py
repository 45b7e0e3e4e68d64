"""``dpop:`` — DPoP proof verification (RFC 9449 §4.3), server nonces (§8-9) and the jti replay store (§11.1).

    dpop:
      algorithms: [ES256, PS256, EdDSA]     # RS256 only if listed (not FAPI 2.0)
      iat_past_s: 60                        # proof age accepted
      iat_future_s: 15                      # client clock ahead of ours
      nonce:                                # omit to disable server nonces
        secrets: ["${DPOP_NONCE_KEY}"]      # shared by all replicas; first signs, all verify
        lifetime_s: 300
      replay:
        backend: redis                      # memory: one process only
        redis: {url: "redis://127.0.0.1:6379/0"}
        on_unavailable: fail_closed

Redis must keep every jti for its TTL: AOF persistence (``appendfsync everysec`` at least) and
``maxmemory-policy noeviction``. A proof issued before the store's memory began (its epoch, see
``gateway.bind.replay``) is refused whatever Redis does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr, model_validator

from .base import Model

if TYPE_CHECKING:
    from .schema import GatewayConfig

__all__ = (
    "DpopAlgorithm", "DpopConfig", "NonceConfig", "RedisReplayConfig", "ReplayConfig", "check_process",
    "check_workers",
)

# "Ed25519" is RFC 9864's fully specified name for EdDSA over Ed25519 (oauth4webapi signs with it).
DpopAlgorithm = Literal["ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "RS256", "EdDSA", "Ed25519"]
Seconds = Annotated[float, Field(gt=0, le=3600)]


class NonceConfig(Model):
    # HMAC keys (>= 32 characters, e.g. `openssl rand -base64 32`), identical on every replica.
    # Rotation: put the new key first, keep the old one second for one lifetime, then drop it.
    secrets: Annotated[tuple[Annotated[str, Field(min_length=32)], ...], Field(min_length=1, max_length=8)]
    lifetime_s: Annotated[int, Field(ge=10, le=3600)] = 300
    # A successful response carries a fresh DPoP-Nonce once the client's nonce has less than this left.
    refresh_before_s: Annotated[int, Field(ge=0, le=3600)] = 60
    # How far ahead of our clock a nonce's timestamp may be (replica clock differences).
    clock_skew_s: Annotated[int, Field(ge=0, le=60)] = 5

    @model_validator(mode="after")
    def _refresh_within_lifetime(self) -> NonceConfig:
        if self.refresh_before_s >= self.lifetime_s:
            raise ValueError("nonce.refresh_before_s must be smaller than nonce.lifetime_s")
        return self


class RedisReplayConfig(Model):
    # redis://, rediss:// or unix:// for one server; mode cluster / sentinel use the client library.
    url: str = "redis://127.0.0.1:6379/0"
    mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    # sentinel mode: host:port of each sentinel and the monitored service name.
    sentinels: tuple[str, ...] = ()
    service_name: str | None = None
    # Kept apart from the URL so that it can come from a secret ("${GATEWAY_REDIS_PASSWORD}");
    # a password in the URL wins. sentinel_password: for sentinels that require AUTH themselves.
    password: SecretStr | None = None
    sentinel_password: SecretStr | None = None
    key_prefix: str = "gateway:dpop:jti:"
    connect_timeout_s: Seconds = 0.5
    timeout_s: Seconds = 0.5
    # mode cluster / sentinel: redis-py's pool size per process (a request beyond it gets 503).
    # standalone: unused; commands are pipelined over one connection per process.
    max_connections: Annotated[int, Field(ge=1, le=10_000)] = 64
    # standalone: SET commands awaiting Redis at once per process; beyond it a request gets 503
    # at once rather than queueing (a slow Redis must not grow memory without bound).
    max_in_flight: Annotated[int, Field(ge=1, le=1_000_000)] = 4096

    @model_validator(mode="after")
    def _sentinel(self) -> RedisReplayConfig:
        if self.mode == "sentinel" and (not self.sentinels or not self.service_name):
            raise ValueError("mode: sentinel needs sentinels and service_name")
        if self.mode != "sentinel" and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        return self


class ReplayConfig(Model):
    backend: Literal["memory", "redis"] = "memory"
    # memory backend: entries kept; size it >= peak proofs per second x (iat_past_s + iat_future_s).
    max_entries: Annotated[int, Field(ge=1000, le=50_000_000)] = 500_000
    redis: RedisReplayConfig = RedisReplayConfig()
    # fail_closed: Redis unreachable -> 503, nothing forwarded. fail_open_safe_methods: GET/HEAD/OPTIONS
    # are let through without replay protection (a replayed read), anything else still gets 503.
    on_unavailable: Literal["fail_closed", "fail_open_safe_methods"] = "fail_closed"


class DpopConfig(Model):
    algorithms: Annotated[tuple[DpopAlgorithm, ...], Field(min_length=1)] = ("ES256", "PS256", "EdDSA", "Ed25519")
    # RFC 9449 §11.1 acceptance window. The defaults accept iat from now-60 s to now+15 s, which
    # covers the FAPI 2.0 suite's now-10 s and now+8 s proofs.
    iat_past_s: Annotated[int, Field(ge=1, le=600)] = 60
    iat_future_s: Annotated[int, Field(ge=0, le=60)] = 15
    max_proof_bytes: Annotated[int, Field(ge=512, le=65_536)] = 8192
    max_jti_chars: Annotated[int, Field(ge=16, le=1024)] = 256
    rsa_min_bits: Annotated[int, Field(ge=2048, le=16384)] = 2048
    rsa_max_bits: Annotated[int, Field(ge=2048, le=16384)] = 8192
    key_cache_size: Annotated[int, Field(ge=16, le=1_000_000)] = 10_000
    key_cache_ttl_s: Annotated[int, Field(ge=1, le=86_400)] = 3600
    nonce: NonceConfig | None = None
    replay: ReplayConfig = ReplayConfig()

    @model_validator(mode="after")
    def _consistent(self) -> DpopConfig:
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ValueError("algorithms: listed twice")
        if self.rsa_min_bits > self.rsa_max_bits:
            raise ValueError("rsa_min_bits is larger than rsa_max_bits")
        return self

    @property
    def replay_ttl_s(self) -> int:
        """How long a jti is remembered: as long as a proof carrying it could be accepted."""
        window = self.iat_past_s + self.iat_future_s
        if self.nonce is not None:
            # A proof with a valid nonce is accepted for as long as the nonce lives (RFC 9449 §11.1).
            window = max(window, self.nonce.lifetime_s + self.nonce.clock_skew_s)
        return window


def check_workers(cfg: DpopConfig, workers: int) -> str | None:
    """The problem with running ``workers`` processes under this config, or ``None``."""
    if workers > 1 and cfg.replay.backend == "memory":
        return (
            f"dpop.replay.backend: memory keeps seen jti values inside one process, so with {workers} "
            "workers a replayed DPoP proof sent to another worker would be accepted; "
            "use backend: redis or run one worker per gateway instance"
        )
    return None


def check_process(cfg: GatewayConfig, workers: int) -> str | None:
    """The problem with running ``cfg`` in a process with ``workers`` workers, or ``None``.

    ``workers`` is what the process actually runs (``--workers`` wins over the file), so this is
    checked at start-up, by every worker the supervisor (re)starts and on every reload: a file
    that is valid by itself may still not fit the running process.
    """
    from .auth import AuthPolicy
    from .ratelimit import check_local_workers

    local_limits = check_local_workers(cfg, workers)  # rate_limits.backend: local counts per process
    if local_limits:
        return local_limits
    # Any authenticated route may see a DPoP-bound token, so the replay store must span workers.
    if not any(isinstance(r.auth, AuthPolicy) for r in cfg.routes):
        return None
    return check_workers(cfg.dpop, workers)
