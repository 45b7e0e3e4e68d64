"""One raw HTTP/1.1 request over TLS, so a test controls the request line and ``Host`` byte for byte."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence


async def raw_request(
    port: int, ctx: ssl.SSLContext, target: str, *, host: str | None = None, method: str = "GET",
    headers: Sequence[tuple[str, str]] = (), sni: str = "localhost", version: str = "1.1",
    send_host: bool = True,
) -> tuple[int, bytes]:
    """(status, whole response); status 0 when the connection closed without a response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
    try:
        lines = [f"{method} {target} HTTP/{version}"]
        if send_host:
            lines.append(f"Host: {host if host is not None else f'localhost:{port}'}")
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        out = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 5):
                out += chunk
        except (TimeoutError, ConnectionResetError, ssl.SSLError):
            pass
        return (int(out.split(b" ", 2)[1]) if out else 0), out
    finally:
        writer.close()
