"""RFC 8705 §3 certificate-bound access tokens: ``cnf.x5t#S256`` vs the client certificate.

§3.1: the thumbprint is base64url (no padding) of SHA-256 over the DER of the certificate; it is
read from the JWT ``cnf`` claim or the introspection response's ``cnf`` (§3.2) by the token stage.
§3: a mismatch (or no certificate at all) is ``401 invalid_token``.
"""

from __future__ import annotations

import hmac
import re

from ..errors import InvalidTokenError, Scheme
from ..model import Binding, PeerCertificate, VerifiedToken

__all__ = ("check_certificate_binding", "is_x5t_s256")

_X5T_S256 = re.compile(r"^[A-Za-z0-9_-]{43}$")

# One description for every failure: the client learns that the binding failed, nothing more.
_FAILED = "certificate binding failed"


def is_x5t_s256(value: str) -> bool:
    """Shape of an RFC 8705 §3.1 thumbprint: 43 base64url characters, no padding or whitespace."""
    return bool(_X5T_S256.match(value))


def check_certificate_binding(
    token: VerifiedToken, peer: PeerCertificate | None, *, scheme: Scheme | None = None
) -> Binding:
    """The token's ``cnf.x5t#S256`` must equal the thumbprint of the presented client certificate.

    Raises ``InvalidTokenError`` (reason ``binding_mismatch``) when the token is not
    certificate-bound, when there is no certificate, or when it is another certificate.
    ``scheme``: the scheme the client used, so the error goes into that challenge only.
    """
    expected = token.cnf_x5t_s256
    if not expected or peer is None or not peer.x5t_s256:
        raise InvalidTokenError(_FAILED, reason="binding_mismatch", scheme=scheme)
    # Bytes: compare_digest refuses non-ASCII str, and a claim can hold anything.
    if not hmac.compare_digest(expected.encode("utf-8"), peer.x5t_s256.encode("ascii")):
        raise InvalidTokenError(_FAILED, reason="binding_mismatch", scheme=scheme)
    return Binding("mtls", thumbprint=peer.x5t_s256)
