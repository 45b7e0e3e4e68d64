"""Fuzz target: the Authorization / DPoP header parser (``gateway.credentials``).

Input: ``authorization NUL dpop NUL query`` (a field that is empty is an absent header; ``\\x01``
inside a header field splits it into several headers of that name).
"""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from ._harness import instrumented, run, split, text

with instrumented():
    from gateway.config.auth import AuthPolicy
    from gateway.credentials import extract_credentials, scheme_of
    from gateway.errors import GatewayError
    from gateway.model import AuthRequest

POLICY = AuthPolicy.model_validate({"issuers": ["as"], "audience": ["https://api.bank.example"]})
TOKEN = b"Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
PROOF = b"eyJ0eXAiOiJkcG9wK2p3dCJ9.eyJqdGkiOiJ4In0.c2ln"


def one(data: bytes) -> None:
    auth, dpop, query = split(data, 3)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, raw in (("Authorization", auth), ("DPoP", dpop)):
        for value in raw.split(b"\x01") if raw else ():
            headers.add(name, text(value))
    req = AuthRequest(
        method="GET", url="https://api.bank.example/accounts", path="/accounts",
        query_string=text(query), headers=CIMultiDictProxy(headers), peer_cert=None,
    )
    scheme_of(req)
    creds = extract_credentials(req, POLICY)
    # What the later stages rely on: a b64token of bounded size, a proof when the scheme says DPoP.
    assert creds.scheme in ("Bearer", "DPoP")
    assert 0 < len(creds.token) <= 12_288 and " " not in creds.token and "," not in creds.token
    if creds.scheme == "DPoP":
        assert creds.dpop_proof


def seeds() -> list[bytes]:
    return [
        b"Bearer " + TOKEN,
        b"DPoP " + TOKEN + b"\x00" + PROOF,
        b"dpop  " + TOKEN + b"\x00" + PROOF + b"\x00a=1&b=2",
        b"Bearer " + TOKEN + b"\x00\x00access_token=x",
        b"Bearer " + TOKEN + b"\x01DPoP " + TOKEN,
        b"Basic dXNlcjpwYXNz",
        b"Bearer " + TOKEN + b"==",
        b"DPoP " + TOKEN + b"\x00" + PROOF + b"\x01" + PROOF,
    ]


if __name__ == "__main__":
    run("credentials", one, (GatewayError,), seeds, max_len=1024)
