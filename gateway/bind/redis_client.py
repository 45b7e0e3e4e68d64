"""A pipelined Redis client for the replay store's hot path: ``SET key value NX PX ms`` and ``PING``.

Why not ``redis.asyncio`` for this: there each command checks a connection out of the pool, packs
itself in Python, writes, and waits on its own stream read, ~70 µs of CPU per ``SET`` (more than
the DPoP check it guards). Here a command is a few bytes appended to a buffer; every command issued
in one event-loop iteration leaves in one write on one connection; replies are parsed by
``hiredis`` (C) and resolve the waiting futures in order (Redis answers a connection's commands in
the order sent). Concurrent proofs therefore share round trips and system calls.

Settings come from redis-py's own URL parsing (``ConnectionPool.from_url``), so ``redis://``,
``rediss://`` (and its ``ssl_*`` query options), ``unix://``, user/password, ``db``,
``client_name``, the socket timeouts in the query and TCP keepalive mean what they did with
redis-py. Query options that tune redis-py's own pool and retries (``max_connections``,
``health_check_interval``, ``retry_on_timeout``, ``protocol``, ...) have no effect here.

Failures surface as ``RedisUnavailableError``; the caller fails closed:

* no reply within ``timeout_s`` of a command's send -> the connection is dropped, and every
  command on it fails (later replies on it would be just as late);
* connection lost -> every command on it fails; the next command reconnects (one attempt, shared
  by every caller that arrives meanwhile), so Redis coming back needs no restart;
* ``max_in_flight`` commands already waiting -> the next one fails at once: a slow Redis never
  makes memory grow without bound;
* an error reply (``-OOM``, ``-LOADING``, ...) fails that command only; ``-READONLY`` (we reached a
  replica, e.g. after a failover behind one DNS name) also drops the connection, so that the next
  command connects afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

__all__ = ("PipelinedRedis", "RedisEndpoint", "RedisUnavailableError", "pack_command")


class RedisUnavailableError(Exception):
    """Redis gave no usable answer: connection, timeout, overload or an error reply.

    Messages name the kind of failure only, never the URL or a reply's text (either may hold a
    secret, e.g. a password in the URL).
    """


class _ReplyError(Exception):
    """An error reply, as hiredis hands it over (returned in place of the reply, not raised)."""


class _ProtocolError(Exception):
    """hiredis could not parse the stream."""


def pack_command(*args: bytes) -> bytes:
    """RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class RedisEndpoint:
    """Where and how to connect; ``from_url`` keeps redis-py's reading of the URL."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # unix socket
    ssl: ssl.SSLContext | None = None
    # Sent first on every new connection (AUTH, SELECT, CLIENT SETNAME), each answered +OK.
    handshake: tuple[bytes, ...] = ()
    keepalive: bool = True
    keepalive_options: tuple[tuple[int, int], ...] = ()
    connect_timeout_s: float = 0.5
    timeout_s: float = 0.5

    def __repr__(self) -> str:  # the handshake holds the password
        where = self.path or f"{self.host}:{self.port}"
        return f"RedisEndpoint({where}, tls={self.ssl is not None})"

    @classmethod
    def from_url(
        cls, url: str, *, connect_timeout_s: float, timeout_s: float, password: str | None = None
    ) -> RedisEndpoint:
        """Parse ``url`` exactly as ``redis.asyncio.Redis.from_url`` would (query options win;
        ``password`` is used when the URL has none)."""
        from redis.asyncio import ConnectionPool
        from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

        extra = {"password": password} if password else {}
        pool = ConnectionPool.from_url(url, socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s, **extra)
        # An unconnected redis-py connection: only its settings are read.
        conn: Any = pool.make_connection()  # type: ignore[no-untyped-call]
        handshake: list[bytes] = []
        if conn.password:
            auth = (conn.username.encode(), conn.password.encode()) if conn.username else (conn.password.encode(),)
            handshake.append(pack_command(b"AUTH", *auth))
        if conn.db:
            handshake.append(pack_command(b"SELECT", str(int(conn.db)).encode()))
        if conn.client_name:
            handshake.append(pack_command(b"CLIENT", b"SETNAME", conn.client_name.encode()))
        common: dict[str, Any] = {
            "handshake": tuple(handshake),
            "connect_timeout_s": float(conn.socket_connect_timeout or connect_timeout_s),
            "timeout_s": float(conn.socket_timeout or timeout_s),
        }
        if isinstance(conn, UnixDomainSocketConnection):
            return cls(path=conn.path, keepalive=False, **common)
        tls = conn.ssl_context.get() if isinstance(conn, SSLConnection) else None
        return cls(
            host=conn.host, port=int(conn.port), ssl=tls, keepalive=bool(conn.socket_keepalive),
            keepalive_options=tuple((int(k), int(v)) for k, v in dict(conn.socket_keepalive_options).items()),
            **common,
        )


class _Connection(asyncio.Protocol):
    """One Redis connection: a FIFO of futures, answered in order by hiredis-parsed replies."""

    def __init__(self, loop: asyncio.AbstractEventLoop, endpoint: RedisEndpoint) -> None:
        self._loop = loop
        self._endpoint = endpoint
        self._timeout_s = endpoint.timeout_s
        # Imported here so that this module loads without the optional redis[hiredis] extra.
        import hiredis

        self._reader = hiredis.Reader(protocolError=_ProtocolError, replyError=_ReplyError)
        # (future, deadline) per command sent or about to be, oldest first.
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        # Set by PipelinedRedis: a new number for every new connection (see connection_number).
        self.number = 0

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        ep = self._endpoint
        if sock is not None and ep.keepalive and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                # Keepalive probes find a peer that vanished without a FIN (and keep NAT entries
                # alive) while the connection is idle; a busy one relies on the reply timeout.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for opt, value in ep.keepalive_options:
                    sock.setsockopt(socket.IPPROTO_TCP, opt, value)
            except OSError:
                pass  # an option this platform lacks: keepalive is best effort

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = reader.gets()
            except _ProtocolError:
                self._fail("protocol error")
                return
            if reply is False:
                return
            if not pending:  # a reply nobody asked for: the stream cannot be trusted any more
                self._fail("unexpected reply")
                return
            fut = pending.popleft()[0]
            if fut.done():  # its caller was cancelled
                continue
            if isinstance(reply, _ReplyError):
                # The error code only (e.g. OOM, READONLY, WRONGPASS), not the server's text.
                code = str(reply).split(" ", 1)[0]
                fut.set_exception(RedisUnavailableError(f"Redis error reply {code}"))
                if code == "READONLY":
                    self._fail("Redis error reply READONLY")
                    return
            else:
                fut.set_result(reply)

    def eof_received(self) -> bool | None:
        self._fail("connection closed by Redis")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail("connection lost")

    # --- commands ---

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue ``command`` (packed RESP); the future gets its reply or ``RedisUnavailableError``."""
        loop = self._loop
        fut = loop.create_future()
        if self.closed:
            fut.set_exception(RedisUnavailableError("connection closed"))
            return fut
        if not self._out:
            loop.call_soon(self._flush)  # everything queued in this loop iteration leaves in one write
        self._out.append(command)
        deadline = loop.time() + self._timeout_s
        self._pending.append((fut, deadline))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._check_deadline)
        return fut

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and not self.closed:
            self._transport.write(b"".join(out))

    def _check_deadline(self) -> None:
        """One timer per connection: the oldest unanswered command is the first to be late."""
        self._timer = None
        if self.closed or not self._pending:
            return
        deadline = self._pending[0][1]
        if deadline <= self._loop.time():
            self._fail("timeout")
        else:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _fail(self, why: str) -> None:
        """Close for good and fail every command still waiting."""
        self.closed = True
        self._out.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, deque()
        for fut, _ in pending:
            if not fut.done():
                fut.set_exception(RedisUnavailableError(why))
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.abort()

    def close(self) -> None:
        self._fail("client closed")


class PipelinedRedis:
    """One lazily (re)connected, pipelined connection; see the module docstring."""

    def __init__(self, endpoint: RedisEndpoint, *, max_in_flight: int) -> None:
        self.endpoint = endpoint
        self._max_in_flight = max_in_flight
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._waiting = 0  # callers waiting for a connection: counted in the in-flight bound
        self._closed = False
        self._opened_count = 0

    @classmethod
    def from_url(
        cls, url: str, *, connect_timeout_s: float, timeout_s: float, max_in_flight: int, password: str | None = None
    ) -> PipelinedRedis:
        endpoint = RedisEndpoint.from_url(
            url, connect_timeout_s=connect_timeout_s, timeout_s=timeout_s, password=password
        )
        return cls(endpoint, max_in_flight=max_in_flight)

    async def execute(self, command: bytes) -> Any:
        """Send one packed command and return its reply (``bytes``, ``None``, ...)."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        if conn.in_flight + self._waiting >= self._max_in_flight:
            raise RedisUnavailableError("too many commands in flight")
        return await conn.send(command)

    @property
    def connection_number(self) -> int:
        """The number of the live connection (0: none). It changes with every new connection, so
        a caller can tell whether two replies came from the same Redis server run: a restart or
        a failover always closes the connection."""
        conn = self._conn
        return conn.number if conn is not None and not conn.closed else 0

    async def execute_together(self, *commands: bytes) -> tuple[list[Any], int]:
        """Send ``commands`` in one write on one connection: their replies, and that connection's number."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        if conn.in_flight + self._waiting + len(commands) > self._max_in_flight:
            raise RedisUnavailableError("too many commands in flight")
        replies = await asyncio.gather(*(conn.send(c) for c in commands), return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return list(replies), conn.number

    async def ping(self) -> None:
        if await self.execute(b"*1\r\n$4\r\nPING\r\n") != b"PONG":
            raise RedisUnavailableError("unexpected PING reply")

    async def _connection(self) -> _Connection:
        if self._closed:
            raise RedisUnavailableError("client closed")
        if self._waiting >= self._max_in_flight:
            raise RedisUnavailableError("too many commands in flight")
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._open(), name="redis-connect")
            task.add_done_callback(self._opened)
        self._waiting += 1
        try:
            # shield: a caller that is cancelled must not cancel the attempt the others wait on.
            return await asyncio.shield(task)
        finally:
            self._waiting -= 1

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return
        conn = task.result()
        if self._closed:
            conn.close()
        else:
            self._opened_count += 1
            conn.number = self._opened_count
            self._conn = conn

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        ep = self.endpoint
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(ep.connect_timeout_s):
                if ep.path is not None:
                    _, conn = await loop.create_unix_connection(lambda: _Connection(loop, ep), ep.path)
                else:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(loop, ep), ep.host, ep.port,
                        ssl=ep.ssl, server_hostname=ep.host if ep.ssl is not None else None,
                    )
                replies = await asyncio.gather(*(conn.send(c) for c in ep.handshake))
            if any(r != b"OK" for r in replies):
                raise RedisUnavailableError("unexpected handshake reply")
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, RedisUnavailableError):
                raise
            if isinstance(exc, (OSError, TimeoutError)):  # ssl.SSLError is an OSError
                raise RedisUnavailableError(f"cannot connect ({type(exc).__name__})") from exc
            raise
        return conn

    async def close(self) -> None:
        self._closed = True
        task, self._connecting = self._connecting, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # closing: the outcome is moot
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
