"""LSP base-protocol framing with limits, in place of pygls' reader loop.

pygls reads a header line with an unbounded `readline` and a body of whatever size
Content-Length claims, and a wrong Content-Length desynchronises it for good. Here:
- a message over `max_message_bytes` is skipped in chunks (never held whole in memory) and
  a request among them is answered with an error;
- header lines are bounded; a Content-Length header is found anywhere in a line, so the
  stream resynchronises after a body that was shorter or longer than announced;
- a body that is not a JSON object is logged (a warning, no traceback, no showMessage) and
  the rest of the stream is still served.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)

# A 10 MB source file is ~11-12 MB once JSON-escaped; leave room for several of them.
MAX_MESSAGE_BYTES = 64 * 2**20
MAX_HEADER_LINE = 8192
CHUNK = 1 << 16
_CONTENT_LENGTH = re.compile(rb"content-length[ \t]*:[ \t]*(\d{1,20})(?!\d)", re.IGNORECASE)
_MARKER = re.compile(rb"content-length[ \t]*:", re.IGNORECASE)
# Where to look for a skipped request's id: the top-level members clients send before params.
_ID = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"[^"\\]{0,200}")')
_METHOD = re.compile(rb'"method"\s*:\s*"([^"\\]{0,200})"')


@dataclass
class Oversize:
    """A message that was skipped for its size; id/method sniffed from its first bytes."""

    size: int
    request_id: int | str | None
    method: str | None


class FrameReader:
    """Messages out of a byte stream read in chunks by `read_chunk` (b"" at end of stream)."""

    def __init__(self, read_chunk: Callable[[], Awaitable[bytes]], max_message_bytes: int = MAX_MESSAGE_BYTES):
        self._read_chunk = read_chunk
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._eof = False

    async def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = await self._read_chunk()
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    def unread(self, data: bytes) -> None:
        self._buf[:0] = data

    async def _readline(self) -> bytes | None:
        """One header line (with its newline); an overlong line is dropped up to its end and
        returned as b"\\x00" (no header); None at end of stream."""
        overlong = False
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl + 1])
                del self._buf[:nl + 1]
                return b"\x00" if overlong else line
            if len(self._buf) > MAX_HEADER_LINE:
                # keep a tail: a Content-Length header may start right at the end
                overlong = True
                del self._buf[:-64]
            if not await self._fill():
                return None

    async def _read_exactly(self, n: int) -> bytes | None:
        while len(self._buf) < n:
            if not await self._fill():
                return None
        body = bytes(self._buf[:n])
        del self._buf[:n]
        return body

    async def _skip(self, n: int) -> bytes | None:
        """Drop n bytes without holding them; returns the first few KB (to find an id)."""
        head = b""
        while n > 0:
            if not self._buf and not await self._fill():
                return None
            take = min(n, len(self._buf))
            if len(head) < 4096:
                head += bytes(self._buf[:min(take, 4096 - len(head))])
            del self._buf[:take]
            n -= take
        return head

    async def read_message(self) -> bytes | Oversize | None:
        """The next body (bytes) or an Oversize record; None at end of stream."""
        length: int | None = None
        while True:
            line = await self._readline()
            if line is None:
                return None
            found = None
            for found in _CONTENT_LENGTH.finditer(line):
                pass
            if found is not None:
                length = int(found.group(1))
                continue
            if line.strip() or length is None:
                continue  # another header (Content-Type) or garbage between messages
            break
        if length > self.max_message_bytes:
            head = await self._skip(length)
            if head is None:
                return None
            before_params = head.split(b'"params"', 1)[0]
            rid = _ID.search(before_params)
            method = _METHOD.search(before_params)
            return Oversize(length, json.loads(rid.group(1)) if rid else None,
                            method.group(1).decode("utf-8", "replace") if method else None)
        return await self._read_exactly(length)


def stdin_chunks(stdin, executor=None) -> Callable[[], Awaitable[bytes]]:
    read = getattr(stdin, "read1", stdin.read)

    def chunk() -> Awaitable[bytes]:
        return asyncio.get_running_loop().run_in_executor(executor, read, CHUNK)
    return chunk


async def serve_stream(stop_event: threading.Event, frames: FrameReader, protocol: Any,
                       on_oversize: Callable[[Oversize], None] | None = None) -> None:
    """The message loop: like pygls.io_.run_async, over a FrameReader."""
    while not stop_event.is_set():
        got = await frames.read_message()
        if got is None:
            break
        if isinstance(got, Oversize):
            log.warning("skipped a message of %d bytes (limit %d): method %s, id %s",
                        got.size, frames.max_message_bytes, got.method, got.request_id)
            if on_oversize is not None:
                on_oversize(got)
            continue
        try:
            data = json.loads(got)
        except ValueError as e:  # not JSON (JSONDecodeError) or not UTF-8
            log.warning("dropped a message that is not JSON (%d bytes): %s", len(got), e)
            # A Content-Length larger than the body swallowed the start of the next
            # message: go on from the next header inside it.
            marker = _MARKER.search(got, 1)
            if marker is not None:
                frames.unread(got[marker.start():])
            continue
        if not isinstance(data, dict) or "jsonrpc" not in data:
            log.warning("dropped a message that is not a JSON-RPC object: %.80r", got)
            continue
        try:
            # pygls structures through json's object_hook; only the top level carries
            # "jsonrpc", so structuring it alone is the same.
            message = protocol.structure_message(data)
        except Exception as e:  # noqa: BLE001 - params pygls cannot structure (requests are answered)
            log.warning("dropped a message with invalid params: %s", e)
            continue
        if not hasattr(message, "jsonrpc"):
            continue  # answered already (server.GhostProtocol)
        try:
            protocol.handle_message(message)
        except Exception:  # a handler bug must not end the loop
            log.exception("unable to handle %s", getattr(message, "method", "a message"))


class FramedIO:
    """Mixin for a pygls server: stdio and TCP through `serve_stream`."""

    max_message_bytes: int = MAX_MESSAGE_BYTES

    def on_oversize(self, skipped: Oversize) -> None:
        """Hook: answer/announce a skipped message (the server overrides it)."""

    def _start_io_async(self, stdin=None, stdout=None):
        from pygls.io_ import StdoutWriter

        self._stop_event = threading.Event()
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        frames = FrameReader(stdin_chunks(stdin or sys.stdin.buffer, self.thread_pool), self.max_message_bytes)
        try:
            asyncio.run(serve_stream(self._stop_event, frames, self.protocol, self.on_oversize))
        except BrokenPipeError:
            log.error("connection to the client is lost; shutting down")
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self.shutdown()

    def start_tcp(self, host: str, port: int) -> None:
        self._stop_event = stop_event = threading.Event()

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            self.protocol.set_writer(writer)
            frames = FrameReader(lambda: reader.read(CHUNK), self.max_message_bytes)
            await serve_stream(stop_event, frames, self.protocol, self.on_oversize)
            self.shutdown()

        async def tcp_server():
            self._server = await asyncio.start_server(connection, host, port)
            async with self._server:
                await self._server.serve_forever()

        try:
            asyncio.run(tcp_server())
        except asyncio.CancelledError:
            log.debug("TCP server cancelled")
