"""Fuzz target: Host / X-Forwarded-Host / X-Forwarded-Proto validation (``gateway.origin.HostPolicy``).

Input: byte 0 (bit 0: from a trusted proxy; bit 1: a second Host header), then
``Host NUL X-Forwarded-Host NUL X-Forwarded-Proto`` (an empty field is an absent header).
Only 400 / 421 refusals; an accepted request names one of this server's names.
"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from ._harness import instrumented, run, split

with instrumented():
    from gateway.config.loader import parse_config
    from gateway.errors import GatewayError
    from gateway.origin import HostPolicy

CFG = parse_config("""
listen:
  host: 127.0.0.1
  port: 8080
  external_origin: "https://api.bank.example"
  allowed_hosts: [localhost, "127.0.0.1:8443", "[::1]"]
routes:
  - id: open
    match: {path_prefix: /}
    upstream: http://127.0.0.1:9
    auth: none
""", source="fuzz-origin.yaml")
POLICY = HostPolicy(CFG, None)


class _Transport:
    """A plain-TCP listener socket on port 8080: what ``HostPolicy`` asks of the connection."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8080) if name == "sockname" else default


TRANSPORT = _Transport()


def text(raw: bytes) -> str:
    # make_mocked_request re-encodes headers as UTF-8 (no surrogates): latin-1 gives every byte.
    return raw.decode("latin-1")


def one(data: bytes) -> None:
    if not data:
        return
    host, xfh, xfp = split(data[1:], 3)
    headers: CIMultiDict[str] = CIMultiDict()
    if host or not data[0] & 4:
        headers.add("Host", text(host))
        if data[0] & 2:
            headers.add("Host", text(host))
    if xfh:
        headers.add("X-Forwarded-Host", text(xfh))
    if xfp:
        headers.add("X-Forwarded-Proto", text(xfp))
    request = make_mocked_request("GET", "/", headers=headers, transport=TRANSPORT)
    public = POLICY.check(request, trusted=bool(data[0] & 1))
    assert public.authority.name in POLICY.names, public


def seeds() -> list[bytes]:
    return [
        b"\x00api.bank.example",
        b"\x00localhost:8080",
        b"\x00127.0.0.1:8443",
        b"\x00[::1]:8080",
        b"\x01proxy.internal\x00api.bank.example:443\x00https",
        b"\x01api.bank.example\x00api.bank.example, evil.example\x00HTTP, https",
        b"\x02api.bank.example",
        b"\x04",
    ]


if __name__ == "__main__":
    run("origin", one, (GatewayError,), seeds, max_len=1024)
