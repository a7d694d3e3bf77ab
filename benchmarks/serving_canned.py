"""A server that answers every GET with the same 200 and does nothing else.

The load generator is measured against it to find the generator's own ceiling: this
server costs far less per request than any real one, so whatever rate the pair reaches
is the generator's limit, not the server's. Run: ``python -m benchmarks.serving_canned PORT``.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

BODY = b'{"ok":true}'
ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
          b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


class _Canned(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        # Requests are bodiless GETs: one answer per blank line that ends a head.
        data = self.pending + data
        heads = data.count(b"\r\n\r\n")
        self.pending = data[data.rfind(b"\r\n\r\n") + 4:] if heads else data
        if heads:
            self.transport.write(ANSWER * heads)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Canned, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
