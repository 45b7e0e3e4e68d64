"""The binding stage as a whole: schemes, the route's sender_constraint, certificate-bound tokens."""

from __future__ import annotations

import pytest

from gateway.bind import Binder
from gateway.errors import InvalidTokenError
from gateway.model import Credentials, PeerCertificate

from .conftest import dpop_creds, policy, request, token_for
from .proofs import TOKEN, Signer


def bearer() -> Credentials:
    return Credentials(scheme="Bearer", token=TOKEN)


@pytest.fixture(scope="module")
def certs(pki: object) -> tuple[PeerCertificate, PeerCertificate]:
    a, b = pki.client_a, pki.client_b  # type: ignore[attr-defined]
    return PeerCertificate(a.der), PeerCertificate(b.der)


async def test_certificate_bound_token(binder: Binder, certs: tuple[PeerCertificate, PeerCertificate]) -> None:
    """RFC 8705 §3: the right cert binds; another cert or none -> invalid_token."""
    a, b = certs
    token = token_for(x5t=a.x5t_s256)
    binding = await binder.check(request(peer=a), bearer(), token, policy(sender_constraint="mtls"))
    assert binding.type == "mtls" and binding.thumbprint == a.x5t_s256
    for peer in (b, None):
        with pytest.raises(InvalidTokenError) as info:
            await binder.check(request(peer=peer), bearer(), token, policy(sender_constraint="mtls"))
        assert info.value.reason == "binding_mismatch"


@pytest.mark.parametrize("constraint", ["none", "dpop", "any"])
async def test_bound_token_held_to_binding_whatever_the_route(
    binder: Binder, certs: tuple[PeerCertificate, PeerCertificate], constraint: str
) -> None:
    """A cert-bound token is checked even where the route asks for less (or something else)."""
    a, b = certs
    with pytest.raises(InvalidTokenError) as info:
        await binder.check(request(peer=b), bearer(), token_for(x5t=a.x5t_s256), policy(sender_constraint=constraint))
    assert info.value.reason == "binding_mismatch"


async def test_route_constraint_enforced(binder: Binder, k1: Signer, certs: tuple[PeerCertificate, ...]) -> None:
    """sender_constraint: dpop refuses a cert-bound token; mtls refuses a DPoP one; any refuses bearer."""
    a = certs[0]
    with pytest.raises(InvalidTokenError) as info:
        await binder.check(request(peer=a), bearer(), token_for(x5t=a.x5t_s256), policy(sender_constraint="dpop"))
    assert info.value.reason == "sender_constraint_required"
    with pytest.raises(InvalidTokenError) as info:
        await binder.check(request(proofs=(p := k1.proof(),)), dpop_creds(p), token_for(k1.jkt),
                           policy(sender_constraint="mtls"))
    assert info.value.reason == "sender_constraint_required"
    with pytest.raises(InvalidTokenError) as info:
        await binder.check(request(), bearer(), token_for(), policy(sender_constraint="any"))
    assert info.value.reason == "sender_constraint_required"


async def test_unbound_bearer_on_unconstrained_route(binder: Binder) -> None:
    """sender_constraint: none lets a plain bearer token through with Binding('none')."""
    binding = await binder.check(request(), bearer(), token_for(), policy(sender_constraint="none"))
    assert binding.type == "none"


async def test_any_accepts_either(binder: Binder, k1: Signer, certs: tuple[PeerCertificate, ...]) -> None:
    a = certs[0]
    pol = policy(sender_constraint="any")
    assert (await binder.check(request(peer=a), bearer(), token_for(x5t=a.x5t_s256), pol)).type == "mtls"
    p = k1.proof()
    assert (await binder.check(request(proofs=(p,)), dpop_creds(p), token_for(k1.jkt), pol)).type == "dpop"


async def test_doubly_bound_token_needs_both(binder: Binder, k1: Signer, certs: tuple[PeerCertificate, ...]) -> None:
    """cnf with jkt and x5t#S256: both bindings must hold."""
    a, b = certs
    token = token_for(k1.jkt, x5t=a.x5t_s256)
    p = k1.proof()
    assert (await binder.check(request(proofs=(p,), peer=a), dpop_creds(p), token, policy())).type == "dpop"
    p = k1.proof()
    with pytest.raises(InvalidTokenError):
        await binder.check(request(proofs=(p,), peer=b), dpop_creds(p), token, policy())
