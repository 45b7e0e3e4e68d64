"""Step 4: the sender constraint. Is the presenter the holder the token is bound to?

    token cnf.jkt        -> DPoP scheme + a valid proof by that key (RFC 9449 §6-7)
    token cnf.x5t#S256   -> the client certificate of this connection (RFC 8705 §3, gateway.bind.mtls)
    route sender_constraint (dpop | mtls | any | none) -> which bindings the route insists on

A bound token is always held to its binding, whatever the route says: the route can only ask
for more. ``Binder`` owns the DPoP replay store's connection pool (``start``/``close``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config.auth import AuthPolicy
from ..config.dpop import DpopConfig
from ..errors import InvalidDpopProofError, InvalidTokenError
from ..model import AuthRequest, Binding, Credentials, PeerCertificate, VerifiedToken
from .dpop import DpopVerifier, VerifiedProof
from .mtls import check_certificate_binding
from .nonce import NonceIssuer
from .replay import MemoryReplayStore, RedisReplayStore, ReplayStore

__all__ = ("Binder", "DpopVerifier", "NonceIssuer", "VerifiedProof", "build_replay_store")

CertificateCheck = Callable[[VerifiedToken, PeerCertificate | None], Binding]


def build_replay_store(cfg: DpopConfig, clock: Callable[[], float] = time.time) -> ReplayStore:
    """``clock``: the wall clock proofs are judged by, which also dates the store's epoch."""
    if cfg.replay.backend == "redis":
        return RedisReplayStore(cfg.replay.redis, clock=clock)
    return MemoryReplayStore(max_entries=cfg.replay.max_entries, began=clock())


class Binder:
    """``BindingChecker`` for the pipeline.

    ``Binder(cfg.dpop)`` builds its replay store and nonce issuer from config; tests may inject
    ``replay=``, ``nonces=`` and ``clock=``.
    """

    def __init__(
        self,
        cfg: DpopConfig,
        *,
        replay: ReplayStore | None = None,
        nonces: NonceIssuer | None = None,
        clock: Callable[[], float] = time.time,
        certificate_check: CertificateCheck | None = None,
    ) -> None:
        if nonces is None and cfg.nonce is not None:
            nonces = NonceIssuer(
                cfg.nonce.secrets,
                lifetime_s=cfg.nonce.lifetime_s,
                clock_skew_s=cfg.nonce.clock_skew_s,
                clock=clock,
            )
        self.replay = replay if replay is not None else build_replay_store(cfg, clock)
        self.dpop = DpopVerifier(cfg, replay=self.replay, nonces=nonces, clock=clock)
        self._check_certificate = certificate_check or check_certificate_binding

    async def start(self) -> None:
        await self.replay.start()

    async def close(self) -> None:
        await self.replay.close()

    async def check(
        self, req: AuthRequest, creds: Credentials, token: VerifiedToken, policy: AuthPolicy
    ) -> Binding:
        dpop_bound = token.cnf_jkt is not None
        # RFC 9449 §7.2: a DPoP-bound token MUST NOT be accepted as a bearer token (downgrade).
        if creds.scheme == "Bearer" and dpop_bound:
            raise InvalidTokenError(
                "the access token is DPoP-bound: use the DPoP scheme with a proof",
                reason="dpop_bound_token_as_bearer",
                scheme="Bearer",
            )
        # RFC 9449 §7.1: the DPoP scheme is for DPoP-bound tokens only.
        if creds.scheme == "DPoP" and not dpop_bound:
            raise InvalidTokenError(
                "the access token is not DPoP-bound: use the Bearer scheme",
                reason="token_not_dpop_bound",
                scheme="DPoP",
            )

        mtls: Binding | None = None
        if token.cnf_x5t_s256 is not None:
            mtls = self._check_certificate(token, req.peer_cert)

        dpop: Binding | None = None
        if dpop_bound:
            assert token.cnf_jkt is not None
            if not creds.dpop_proof:
                raise InvalidDpopProofError("the DPoP proof is missing", reason="dpop_missing_proof")
            proof = await self.dpop.verify(
                creds.dpop_proof,
                method=req.method,
                url=req.url,
                access_token=creds.token,
                cnf_jkt=token.cnf_jkt,
                require_nonce=policy.require_dpop_nonce,
            )
            # RFC 9449 §8.2: a response carrying DPoP-Nonce should not be cacheable (DPOPN-07).
            nonce_headers = (
                (("DPoP-Nonce", proof.next_nonce), ("Cache-Control", "no-store")) if proof.next_nonce else ()
            )
            dpop = Binding("dpop", thumbprint=proof.jkt, response_headers=nonce_headers)

        constraint = policy.sender_constraint
        scheme = creds.scheme
        if constraint == "dpop" and dpop is None:
            raise InvalidTokenError(
                "this resource requires a DPoP-bound access token", reason="sender_constraint_required",
                scheme=scheme,
            )
        if constraint == "mtls" and mtls is None:
            raise InvalidTokenError(
                "this resource requires a certificate-bound access token",
                reason="sender_constraint_required",
                scheme=scheme,
            )
        if constraint == "any" and dpop is None and mtls is None:
            raise InvalidTokenError(
                "this resource requires a sender-constrained (DPoP or certificate-bound) access token",
                reason="sender_constraint_required",
                scheme=scheme,
            )
        if constraint == "mtls" and mtls is not None:
            return mtls
        return dpop or mtls or Binding("none")
