"""A raw HTTP/1.1 upstream on a real socket that records every request byte for byte and answers
whatever a test scripts: for the upstream client's tests (test_upstream_http1.py) and the request
smuggling suite (test_smuggling.py), where it shows exactly what the gateway let through."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class Closing(bytes):
    """An answer after which the scripted upstream closes the connection."""


Reply = Callable[[bytes, bytes, int], bytes | None]  # (head, body, n-th request on conn) -> answer


class Scripted:
    """A raw HTTP/1.1 server: reads each request (head + body by Content-Length or chunked) and
    writes whatever ``reply`` returns (``None``: close the connection without answering; a
    ``Closing`` answer: close it after writing)."""

    def __init__(self, reply: Reply, *, close_after: int | None = None) -> None:
        self.reply = reply
        self.close_after = close_after
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.conn_of: list[int] = []  # for each request, the number of the connection it came on
        self.server: asyncio.Server | None = None
        self.url = ""
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.sleep(0.01)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        self._writers.add(writer)
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = await _read_body(reader, head)
                self.requests.append((head, body))
                self.conn_of.append(conn)
                answer = self.reply(head, body, n)
                n += 1
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if isinstance(answer, Closing) or (self.close_after is not None and n >= self.close_after):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    low = head.lower()
    if b"transfer-encoding: chunked" in low:
        out = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return out
            out += data[:-2]
    for line in low.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)
