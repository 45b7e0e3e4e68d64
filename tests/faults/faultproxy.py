"""A TCP fault injector: a fixed port on 127.0.0.1 in front of a real server, switchable at run time.

TLS stays end to end (the proxy moves bytes), so a test sees the dependency's real certificate
and the gateway's real handshake. Modes:

* ``forward``: pass bytes both ways to ``target`` (host, port);
* ``refuse``: nothing listens on the port (connection refused);
* ``blackhole``: accept, read, never answer (a hung dependency);
* ``reset``: accept, then close with RST (SO_LINGER 0);
* ``garbage``: accept, answer non-TLS bytes and close (a TLS handshake failure);
* ``slow``: forward, but hold every byte from the target for ``delay_s`` (slower than a timeout).

Switching mode closes the connections of the previous mode, so pooled connections see it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Literal

__all__ = ("FaultProxy", "Mode")

Mode = Literal["forward", "refuse", "blackhole", "reset", "garbage", "slow"]


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, target: tuple[str, int], *, mode: Mode = "forward", delay_s: float = 5.0) -> None:
        self.target = target
        self.mode: Mode = mode
        self.delay_s = delay_s
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        if self.mode != "refuse":
            await self._listen()
        elif not self.port:
            with socket.socket() as s:  # reserve a port number now; nothing listens on it yet
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def set_mode(self, mode: Mode, *, target: tuple[str, int] | None = None) -> None:
        if target is not None:
            self.target = target
        self.mode = mode
        self._drop_connections()
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
        elif self._server is None:
            await self._listen()

    def _drop_connections(self) -> None:
        for w in list(self._writers):
            _rst(w)
        self._writers.clear()

    async def close(self) -> None:
        self._drop_connections()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            mode = self.mode
            if mode == "reset":
                _rst(writer)
            elif mode == "garbage":
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nnot TLS\r\n")
                await writer.drain()
                writer.close()
            elif mode == "blackhole":
                while await reader.read(65536):
                    pass
            else:
                await self._pipe(reader, writer, slow=mode == "slow")
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, slow: bool) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _rst(writer)
            return
        self._writers.add(up_writer)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
            try:
                while data := await src.read(65536):
                    if delay:
                        await asyncio.sleep(delay)
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        try:
            await asyncio.gather(copy(reader, up_writer, 0.0), copy(up_reader, writer, self.delay_s if slow else 0.0))
        finally:
            self._writers.discard(up_writer)
