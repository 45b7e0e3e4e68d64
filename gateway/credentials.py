"""Step 2: the access token and DPoP proof as presented (RFC 6750 §2-3, RFC 9449 §7.1-7.2).

Only the Authorization header carries tokens here (RFC 6750 §2.1). The query-string and
form-body methods (§2.2/§2.3) are refused: FAPI forbids query tokens and they leak into logs.

    credentials = auth-scheme 1*SP b64token        (case-insensitive scheme, RFC 9110 §11.1)
    b64token    = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import parse_qsl

from .config import AuthPolicy
from .errors import InvalidDpopProofError, InvalidRequestError, MissingCredentialsError, Scheme
from .model import AuthRequest, Credentials

__all__ = ("MAX_TOKEN_LENGTH", "extract_credentials", "scheme_of")

# Far above any real token (JWTs with many claims stay under 4 KiB); bounds the work on junk.
MAX_TOKEN_LENGTH = 12_288
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# "Scheme<1+ SP>rest": the scheme is an RFC 9110 token.
_CREDENTIALS = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?: +(.*))?")
_SCHEMES: dict[str, Literal["Bearer", "DPoP"]] = {"bearer": "Bearer", "dpop": "DPoP"}


def scheme_of(req: AuthRequest) -> Scheme | None:
    """The normalised scheme the client used (for later stages choosing a challenge), if any."""
    value = req.headers.get("Authorization", "")
    return _SCHEMES.get(value.split(" ", 1)[0].lower())


def _query_has_token(query_string: str) -> bool:
    if "access_token" not in query_string and "%" not in query_string:
        return False  # fast path: the name cannot be there, even percent-encoded
    return any(name == "access_token" for name, _ in parse_qsl(query_string, keep_blank_values=True))


def extract_credentials(req: AuthRequest, policy: AuthPolicy) -> Credentials:
    """Parse the Authorization (and DPoP) headers; raise the RFC 6750 §3.1 error on misuse."""
    values = req.headers.getall("Authorization", [])
    scheme: Scheme | None = None
    if len(values) == 1:
        scheme = _SCHEMES.get(values[0].split(" ", 1)[0].lower())
    if _query_has_token(req.query_string):
        # HDR-01: never authenticate from the URI; RFC 6750 §3.1 invalid_request.
        raise InvalidRequestError(
            "access tokens in the query string are not supported; use the Authorization header",
            reason="token_in_query",
            scheme=scheme,
        )
    if len(values) > 1:
        # HDR-05 / RFC 9449 §7.2 Fig. 19: the error goes into every challenge.
        raise InvalidRequestError(
            "more than one Authorization header", reason="multiple_credentials", scheme=None
        )
    if not values:
        raise MissingCredentialsError()
    value = values[0]
    if "," in value:
        # A comma can only come from joined credentials ("DPoP x, Bearer y"): b64token has none.
        raise InvalidRequestError(
            "more than one credential in the Authorization header", reason="multiple_credentials", scheme=None
        )
    m = _CREDENTIALS.fullmatch(value)
    if m is None:
        raise InvalidRequestError("malformed Authorization header", reason="malformed_authorization")
    scheme = _SCHEMES.get(m.group(1).lower())
    if scheme is None:
        # HDR-07: an unsupported scheme (Basic, ...) counts as no credentials at all.
        raise MissingCredentialsError()
    token = m.group(2)
    if not token:
        raise InvalidRequestError(
            "the access token is missing", reason="malformed_authorization", scheme=scheme
        )
    if len(token) > MAX_TOKEN_LENGTH or not _B64TOKEN.fullmatch(token):
        raise InvalidRequestError(
            "the access token is not valid b64token syntax", reason="malformed_authorization", scheme=scheme
        )
    return Credentials(scheme=scheme, token=token, dpop_proof=_dpop_proof(req, scheme))


def _dpop_proof(req: AuthRequest, scheme: Scheme) -> str | None:
    proofs = req.headers.getall("DPoP", [])
    if len(proofs) > 1:
        raise InvalidDpopProofError("more than one DPoP header", reason="dpop_multiple_proofs")
    if not proofs:
        if scheme == "DPoP":
            raise InvalidDpopProofError("the DPoP proof is missing", reason="dpop_missing_proof")
        return None
    proof = proofs[0].strip()
    if not proof or "," in proof or len(proof) > MAX_TOKEN_LENGTH:
        raise InvalidDpopProofError("the DPoP header is not a single proof", reason="dpop_malformed_proof")
    return proof
