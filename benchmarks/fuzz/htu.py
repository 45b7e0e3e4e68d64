"""Fuzz target: the DPoP ``htu`` comparison (``gateway.bind.htu``, RFC 3986 §6 normalisation).

Input: ``htu NUL request URL``. ``compare_htu`` must never raise; ``normalize_url`` raises only
``ValueError``, is idempotent on its own output, and an ``htu`` equal after normalisation matches.
"""

from __future__ import annotations

from ._harness import instrumented, run, split, text

with instrumented():
    from gateway.bind.htu import compare_htu, normalize_url
    from gateway.errors import GatewayError


def one(data: bytes) -> None:
    htu_raw, url_raw = split(data, 2)
    htu, url = text(htu_raw), text(url_raw) or "https://api.bank.example/accounts"
    problem = compare_htu(htu, url)
    assert problem is None or isinstance(problem, str)
    try:
        norm = normalize_url(htu)
    except ValueError:
        return
    again = normalize_url(str(norm))
    assert again == norm, (htu, str(norm), str(again))
    assert compare_htu(str(norm), htu) is None


def seeds() -> list[bytes]:
    return [
        b"https://api.bank.example/accounts",
        b"https://API.bank.example:443/./accounts?x#y\x00https://api.bank.example/accounts",
        b"https://api.bank.example/a%2Fb/../c\x00https://api.bank.example/c",
        b"http://[::1]:8080/%7euser/\x00http://[::1]:8080/~user/",
        b"https://api.bank.example:0443/accounts\x00https://api.bank.example/accounts",
        b"HTTPS://user@api.bank.example/",
    ]


if __name__ == "__main__":
    run("htu", one, (GatewayError,), seeds, max_len=1024)
