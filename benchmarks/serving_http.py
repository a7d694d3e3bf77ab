"""HTTP/1.1 GET clients for the serving benchmark's load generator.

``RawPool`` is a keep-alive pool of plain asyncio protocols: one request in flight per
connection, responses framed by ``Content-Length`` (what Starlette under uvicorn always
sends). It does only what the benchmark needs, so the generator spends its core on
sending requests rather than on a general-purpose client; ``HttpxPool`` wraps
``httpx.AsyncClient`` with the same interface, to measure that choice side by side.

Both answer ``get(path) -> Sent``: the status, when the request reached the socket,
how long it waited for a free connection (``HttpxPool`` cannot see inside its pool, so
there ``sent_at`` is the call time and ``waited`` is 0) and whether the API said its
answer was degraded.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

REQUEST_TIMEOUT_S = 10.0
DEGRADED = b'"degraded":true'
ISSUED = b'"issued":"'  # an offers answer that issued a new offer (written to Kafka first)


@dataclass(slots=True)
class Sent:
    status: int
    sent_at: float
    waited: float
    degraded: bool = False  # a 200 the API answered without its store ("degraded": true)
    issued: bool = False    # an offers answer that issued a new offer
    first_byte: float = 0.0  # when the answer's first bytes reached us (raw client only)
    last_byte: float = 0.0   # when its last bytes did (before our task resumed)


class Client(Protocol):
    async def get(self, path: str) -> Sent: ...

    async def close(self) -> None: ...


class BadResponse(Exception):
    """The server answered something this client does not frame (no Content-Length)."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bool, bool]] | None = None
        self.status = 0
        self.body_at = 0
        self.end: int | None = None  # buffer offset where the current response ends
        self.lost = False
        self.first_at = 0.0  # arrival of the current response's first and last bytes
        self.last_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.first_at:
            self.first_at = time.perf_counter()
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            try:
                self._complete()
            except (BadResponse, ValueError) as exc:
                self.waiter.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("server closed the connection"))

    def _complete(self) -> None:
        if self.end is None:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self.buffer[:head_end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise BadResponse("response without content-length")
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17: stop if stop >= 0 else len(head)])
            self.body_at = head_end + 4
            self.end = self.body_at + length
        if len(self.buffer) >= self.end:
            degraded = self.buffer.find(DEGRADED, self.body_at, self.end) >= 0
            issued = self.buffer.find(ISSUED, self.body_at, self.end) >= 0
            del self.buffer[: self.end]
            self.end = None
            self.last_at = time.perf_counter()
            assert self.waiter is not None
            self.waiter.set_result((self.status, degraded, issued))

    async def request(self, raw: bytes) -> tuple[int, bool, bool]:
        assert self.transport is not None
        if self.lost or self.transport.is_closing():
            raise ConnectionError("connection closed before the request was sent")
        self.waiter = asyncio.get_running_loop().create_future()
        self.first_at = self.last_at = 0.0
        self.transport.write(raw)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RawPool:
    """At most ``size`` keep-alive connections, opened on demand; callers beyond that
    wait their turn (and the wait is reported, since open-loop latency must include it)."""

    def __init__(self, url: str, size: int) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.slots = asyncio.Semaphore(size)
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()
        self.prefix = b"GET "
        self.suffix = f" HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode()

    async def get(self, path: str) -> Sent:
        asked = time.perf_counter()
        async with self.slots:
            conn = await self._idle_or_new()
            sent_at = time.perf_counter()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    status, degraded, issued = await conn.request(
                        self.prefix + path.encode() + self.suffix)
            except BaseException:
                # The connection's state is unknown (half a response may follow): drop it.
                conn.close()
                self.open.discard(conn)
                raise
            if conn.lost:
                self.open.discard(conn)
            else:
                self.idle.append(conn)
        return Sent(status, sent_at, sent_at - asked, degraded, issued, conn.first_at,
                    conn.last_at)

    async def _idle_or_new(self) -> _Connection:
        # The server closes connections idle past its keep-alive timeout (uvicorn: 5 s);
        # writing to one would hang until our timeout, so those are dropped here.
        while self.idle:
            conn = self.idle.pop()
            if not conn.lost:
                return conn
            self.open.discard(conn)
        return await self._connect()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        self.open.add(conn)
        return conn

    async def close(self) -> None:
        for conn in self.open:
            conn.close()
        self.open.clear()
        self.idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks


class HttpxPool:
    def __init__(self, url: str, size: int) -> None:
        import httpx

        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        self.client = httpx.AsyncClient(base_url=url, limits=limits,
                                        timeout=REQUEST_TIMEOUT_S)

    async def get(self, path: str) -> Sent:
        sent_at = time.perf_counter()
        response = await self.client.get(path)
        return Sent(response.status_code, sent_at, 0.0, DEGRADED in response.content)

    async def close(self) -> None:
        await self.client.aclose()


def make_client(kind: str, url: str, size: int) -> Client:
    if kind == "raw":
        return RawPool(url, size)
    if kind == "httpx":
        return HttpxPool(url, size)
    raise ValueError(f"unknown client {kind!r} (raw or httpx)")
