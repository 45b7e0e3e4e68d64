"""Fuzz target: the request-target canonicaliser and the Host/authority parser (``gateway.canonical``).

Input byte 0: even -> request target (origin-form), odd -> Host value. Invariants: only
``InvalidRequestError`` (400); a canonical path is a fixed point, starts with ``/``, and has no
dot segment or encoded slash left for an upstream to read differently; an authority round-trips.
"""

from __future__ import annotations

from ._harness import instrumented, run, text

with instrumented():
    from gateway.canonical import canonical_path, canonical_target, parse_authority
    from gateway.errors import GatewayError


def one(data: bytes) -> None:
    if not data:
        return
    value = text(data[1:])
    if data[0] % 2 == 0:
        trailing = bool(data[0] & 2)
        target = canonical_target(value, allow_trailing_dot=trailing)
        path = target.path
        assert path.startswith("/"), path
        assert canonical_path(path, allow_trailing_dot=trailing) == path, (value, path)
        segments = path.split("/")
        assert "." not in segments and ".." not in segments, path
    else:
        authority = parse_authority(value)
        assert parse_authority(str(authority)) == authority, (value, authority)
        assert authority.port is None or 0 < authority.port <= 65535


def seeds() -> list[bytes]:
    return [
        b"\x00/accounts/123?x=1",
        b"\x00/a/./b/../c/%2e%2E/%2Fd;p=1?q#f",
        b"\x00//admin/%61dmin/%252e",
        b"\x02/a/b./c.",
        b"\x00/%C3%A9t%C3%A9/%E2%82%AC?a=%20",
        b"\x01api.bank.example:8443",
        b"\x01[::1]:443",
        b"\x01API.Bank.Example.",
        b"\x01[fe80::1%25eth0]",
    ]


if __name__ == "__main__":
    run("canonical", one, (GatewayError,), seeds, max_len=2048)
