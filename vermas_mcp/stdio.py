"""A stdio transport on the event loop itself, that answers every request.

The SDK's stdio server reads and writes through `anyio.wrap_file`, which hands every
line read, every write and every flush to a worker thread: three thread hops per call,
about two thirds of a tool call's latency here. This transport reads stdin with an
asyncio pipe reader and writes stdout with plain os.write; the protocol handling above
the framing (sessions, handshakes, tools) stays the SDK's low-level server. Like the SDK,
it moves the wire to private descriptors and points fd 0 at /dev/null and fd 1 at stderr
while serving, so nothing stray can corrupt the protocol.

The framing is ours, not the SDK's stdio_server, because that one loses replies:
- a line its strict JSON parser refuses (a lone surrogate escape such as "\\ud800", bytes
  that are not UTF-8, plain bad JSON) becomes an exception the session only logs, so the
  client waits for a reply that never comes;
- a reply it cannot encode (a lone surrogate in a tool's result or error text) kills its
  writer task, and with it the server;
- a line over the reader's limit kills the server.
Here a line the strict parser refuses is parsed again leniently (the stdlib json module
keeps lone surrogates, and undecodable bytes become surrogate escapes), so the request
reaches its tool, whose input checks refuse the text by name; what cannot be read at all
gets a JSON-RPC error (its id when it can be recovered, else null). A reply that cannot be
encoded is sent with every unencodable character escaped as visible text (`\\ud800`), and
an over-long line is skipped without being held in memory and answered with an error.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from vermas_mcp.sdk import lowlevel_server

MAX_LINE = 64 * 1024 * 1024
"""The longest JSON-RPC message (bytes, newline excluded) this server reads."""

_CHUNK = 1024 * 1024
_HEAD = 64 * 1024  # of an over-long line, kept to recover its id

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603


@dataclass(frozen=True)
class Oversize:
    """A line longer than the limit: its first bytes (for the id) and its full length."""

    head: bytes
    size: int


class LineSplitter:
    """Newline-framed messages from a pipe, with a bound on what one line may hold in memory.

    A line over `limit` bytes is not an error of the stream: it is skipped up to its
    newline, keeping only its head, and reported as `Oversize`, so the next line is read
    as usual (asyncio's readline would either raise or hand back the line's tail as if it
    were a new message)."""

    def __init__(self, reader: asyncio.StreamReader, limit: int = MAX_LINE) -> None:
        self._reader = reader
        self.limit = limit
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline
        self._eof = False

    async def next(self) -> bytes | Oversize | None:
        """The next line (newline stripped), an `Oversize`, or None at the end of input."""
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl >= 0:
                if nl > self.limit:
                    return self._oversize_ended_at(nl)
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buf)
            if self._scanned > self.limit:
                return await self._skip_rest()
            if self._eof:
                if not self._buf:
                    return None
                line = bytes(self._buf)
                self._buf.clear()
                self._scanned = 0
                return line
            await self._fill()

    async def _fill(self) -> None:
        chunk = await self._reader.read(_CHUNK)
        if chunk:
            self._buf += chunk
        else:
            self._eof = True

    def _oversize_ended_at(self, nl: int) -> Oversize:
        head = bytes(self._buf[:_HEAD])
        del self._buf[: nl + 1]
        self._scanned = 0
        return Oversize(head, nl)

    async def _skip_rest(self) -> Oversize:
        """Drop an over-long line up to its newline without keeping it in memory."""
        head = bytes(self._buf[:_HEAD])
        size = len(self._buf)
        self._buf.clear()
        while not self._eof:
            await self._fill()
            nl = self._buf.find(b"\n")
            if nl >= 0:
                size += nl
                del self._buf[: nl + 1]
                break
            size += len(self._buf)
            self._buf.clear()
        self._scanned = 0
        return Oversize(head, size)


def recover_id(head: bytes) -> str | int | None:
    """The top-level "id" of a JSON object from its first bytes, if it is there; else None.

    Scans the text tracking strings and nesting, so an "id" inside params is not taken for
    the request's own."""
    text = head.decode("utf-8", errors="surrogateescape")
    decoder = json.JSONDecoder()
    depth = 0
    i = 0
    expect_key = False
    while i < len(text):
        ch = text[i]
        if ch == '"':
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                return None
            if depth == 1 and expect_key and value == "id":
                rest = text[end:].lstrip()
                if rest.startswith(":"):
                    rest = rest[1:].lstrip()
                    try:
                        found, _ = decoder.raw_decode(rest)
                    except ValueError:
                        return None
                    return _valid_id(found)
            expect_key = False
            i = end
            continue
        if ch in "{[":
            depth += 1
            expect_key = ch == "{" and depth == 1
        elif ch in "}]":
            depth -= 1
        elif ch == "," and depth == 1:
            expect_key = True
        i += 1
    return None


def _valid_id(value: object) -> str | int | None:
    """A JSON-RPC id worth echoing: a string or an integer (not a bool), else None."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return None


class Refused(Exception):
    """A line that is not a JSON-RPC message: answered with this error, never dispatched."""

    def __init__(self, request_id: str | int | None, code: int, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.code = code
        self.message = message


def parse_line(line: bytes) -> types.JSONRPCMessage:
    """One line as a JSON-RPC message, or `Refused` saying why it is not one.

    The strict parser (pydantic's) takes every well-formed line. What it refuses is parsed
    again with the stdlib json module, which keeps lone surrogates ("\\ud800") and, decoded
    with surrogateescape, undecodable bytes: such a request is still a request, and the
    tool it names refuses the text with an error that says which argument is wrong."""
    try:
        return types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValueError:
        pass
    text = line.decode("utf-8", errors="surrogateescape")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise Refused(None, PARSE_ERROR, f"parse error: the line is not valid JSON ({exc})") from None
    try:
        return types.jsonrpc_message_adapter.validate_python(data, by_name=False)
    except ValueError:
        request_id = _valid_id(data.get("id")) if isinstance(data, dict) else None
        raise Refused(request_id, INVALID_REQUEST,
                      "invalid request: not a JSON-RPC 2.0 request, notification or response "
                      '(allowed: an object with "jsonrpc": "2.0" and a "method", or a "result"/"error" '
                      'with an "id")') from None


def oversize_error(line: Oversize, limit: int = MAX_LINE) -> Refused:
    return Refused(recover_id(line.head), INVALID_REQUEST,
                   f"request too large: a message of {line.size} bytes; the limit is "
                   f"{limit} bytes ({limit // (1024 * 1024)} MiB) per JSON-RPC line. "
                   "The request was skipped; send smaller requests (e.g. split the content)")


def error_line(refused: Refused) -> str:
    return escape_json({"jsonrpc": "2.0", "id": refused.request_id,
                        "error": {"code": refused.code, "message": refused.message}})


def _escape_text(text: str) -> str:
    """Text as UTF-8 can carry it: each unencodable character (a lone surrogate) as `\\udXXX`."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _escape_tree(value: Any) -> Any:
    if isinstance(value, str):
        return _escape_text(value)
    if isinstance(value, dict):
        return {_escape_tree(k): _escape_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape_tree(v) for v in value]
    return value


def escape_json(data: Any) -> str:
    return json.dumps(_escape_tree(data), ensure_ascii=False, separators=(",", ":"))


def encode_message(message: types.JSONRPCMessage) -> str:
    """A message as one JSON line, whatever text it carries.

    Lone surrogates (from a request's own text echoed in an error, say) make pydantic's
    encoder fail; they are then escaped as visible text, never a reason to drop the reply."""
    try:
        return message.model_dump_json(by_alias=True, exclude_unset=True)
    except ValueError:
        data = message.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return escape_json(data)


def unencodable_reply(message: types.JSONRPCMessage, exc: Exception) -> str | None:
    """The error sent instead of a response that could not be encoded at all (None if the
    message answers no request: a notification has no one waiting for it)."""
    request_id = getattr(message, "id", None)
    if request_id is None or not isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
        return None
    return error_line(Refused(request_id, INTERNAL_ERROR, f"internal error: the reply could not be encoded ({exc})"))


class _Writer:
    """Whole lines to stdout with plain os.write; one line at a time, so replies written by
    the reader (refusals) and by the session never interleave."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = asyncio.Lock()

    async def write_line(self, text: str) -> None:
        data = (text + "\n").encode("utf-8", errors="backslashreplace")
        async with self._lock:
            while data:
                try:
                    written = os.write(self._fd, data)
                except BlockingIOError:
                    await asyncio.sleep(0.001)  # the client is slow to read: yield, then retry
                    continue
                data = data[written:]


async def _read_loop(lines: LineSplitter, writer: _Writer,
                     sink: MemoryObjectSendStream[SessionMessage | Exception]) -> None:
    try:
        async with sink:
            while (line := await lines.next()) is not None:
                try:
                    if isinstance(line, Oversize):
                        raise oversize_error(line, lines.limit)
                    if not line.strip():
                        continue
                    message = parse_line(line)
                except Refused as refused:
                    await writer.write_line(error_line(refused))
                    continue
                await sink.send(SessionMessage(message))
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        return  # the session ended first (it closed its end): nothing is left to dispatch to


async def _write_loop(source: MemoryObjectReceiveStream[SessionMessage], writer: _Writer) -> None:
    async with source:
        async for session_message in source:
            message = session_message.message
            try:
                text = encode_message(message)
            except Exception as exc:  # any failure to encode still answers the request
                print(f"vermas-mcp: could not encode a reply: {exc!r}", file=sys.stderr)
                reply = unencodable_reply(message, exc)
                if reply is None:
                    continue
                text = reply
            await writer.write_line(text)


@asynccontextmanager
async def fast_stdio(limit: int = MAX_LINE) -> AsyncIterator[tuple[Any, Any]]:
    wire_in, wire_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_CHUNK)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
    )
    writer = _Writer(wire_out)
    # Plain anyio streams: the SDK's context-carrying ones are private, and without a
    # sender context the session runs each handler in a copy of the current one.
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_read_loop, LineSplitter(reader, limit), writer, read_send)
            tg.start_soon(_write_loop, write_recv, writer)
            yield read_recv, write_send
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
