"""A stdio transport on the event loop itself.

The SDK's stdio server reads and writes through `anyio.wrap_file`, which hands every
line read, every write and every flush to a worker thread: three thread hops per call,
about two thirds of a tool call's latency here. This transport reads stdin with an
asyncio pipe reader and writes stdout with plain os.write, and then runs the SDK's own
stdio_server framing over them (explicit streams), so the protocol handling stays the
SDK's. Like the SDK, it moves the wire to private descriptors and points fd 0 at
/dev/null and fd 1 at stderr while serving, so nothing stray can corrupt the protocol.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.stdio import stdio_server

from vermas_mcp.sdk import lowlevel_server


class _LineReader:
    """`async for line in reader` over a pipe, decoded as UTF-8."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> "_LineReader":
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class _Writer:
    """The two coroutines stdio_server needs from stdout: write and flush."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def write(self, text: str) -> None:
        data = text.encode("utf-8")
        while data:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                await asyncio.sleep(0.001)  # the client is slow to read: yield, then retry
                continue
            data = data[written:]

    async def flush(self) -> None:
        return None


@asynccontextmanager
async def fast_stdio() -> AsyncIterator[tuple[Any, Any]]:
    wire_in, wire_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
    )
    try:
        async with stdio_server(stdin=_LineReader(reader), stdout=_Writer(wire_out)) as streams:  # type: ignore[arg-type]
            yield streams
    finally:
        transport.close()
        os.dup2(wire_out, 1)
        os.close(wire_out)


async def serve(server: Any) -> None:
    """Run an MCPServer over the fast transport (the SDK has no public hook for a custom
    stdio transport on MCPServer, so we drive its low-level server like run_stdio_async)."""
    lowlevel = lowlevel_server(server)
    async with fast_stdio() as (read_stream, write_stream):
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
