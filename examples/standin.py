#!/usr/bin/env python3
"""A stand-in for a local LLM server: RPH's demo backend, test and bench fake.

It imitates, on one real HTTP/1.1 port, what front-ends such as SillyTavern
use of llama.cpp's ``llama-server`` and of KoboldCpp:

- ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` and
  llama.cpp's own ``/completion``: server-sent events in HTTP/1.1 chunks
  with ``"stream": true``, else one JSON answer after the same generation
  time;
- KoboldCpp's ``/api/...`` routes, answered in HTTP/1.0 with the connection
  closed after each response, as Python's ``http.server`` under KoboldCpp
  does;
- a model that loads before the port is bound (KoboldCpp), or behind 503
  answers on a bound port (llama-server, ``--bind-early``);
- a client that goes away ends its generation at once: the socket is read
  during every wait, as llama-server checks it between tokens.

Routes for tests look at the traffic itself: ``/echo`` reports a request as
received, ``/download`` and ``/status/NNN`` produce bodies and framings,
``/ws`` echoes websocket frames, ``/stats`` counts requests, connections
and generations finished or cut short.

Only the standard library is used, so any ``python3`` runs it; each
connection is an asyncio protocol, with no thread per request.
"""

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import re
import signal
import socket
import sys
import time
import traceback
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import Any, Literal, cast
from urllib.parse import parse_qs, urlsplit

# RPH refuses heads over 64 KiB and 100 lines; one that reaches us is its bug.
MAX_HEAD = 64 * 1024
MAX_HEADER_LINES = 100
# Chunk-size and trailer lines are a few bytes in practice.
MAX_LINE = 4096
# Above RPH's 256 MiB default `max_body`, so RPH's limit is the one tested.
MAX_BODY = 1 << 30
# Stop reading a client that pipelines far ahead of our answers.
READ_HIGH_WATER = 1 << 20
# Enough queued output to keep a loopback socket busy between drains.
WRITE_HIGH_WATER = 256 * 1024
# Benchmarks open 64+ connections at once; asyncio's default backlog is 100.
BACKLOG = 1024

# /download sends this block's slices; any slice whose length is a multiple
# of 256 ends where the next one begins, so the pattern runs on unbroken.
PATTERN = bytes(range(256)) * 1024
PATTERN_VIEW = memoryview(PATTERN)
DOWNLOAD_CHUNK = 64 * 1024

# Llama 2's vocabulary size, so that token ids look plausible.
VOCAB_SIZE = 32000
TOKEN_LIMIT_KEYS = ("max_tokens", "max_completion_tokens", "n_predict", "max_length")

# RFC 6455 §1.3 and §5.2.
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_CONTINUATION, WS_CLOSE, WS_PING, WS_PONG = 0x0, 0x8, 0x9, 0xA
WS_FIN = 0x80
MAX_WS_PAYLOAD = 16 << 20
WS_TOO_BIG = (1009).to_bytes(2, "big")

TOKEN_CHARS = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
REASONS = {status.value: status.phrase for status in HTTPStatus}

Api = Literal["completions", "chat", "llama", "kobold"]


class ClientGone(ConnectionError):
    """The client closed its side or the connection broke."""


class HttpError(Exception):
    """A request we refuse; carries the status to answer with."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    load_delay: float
    bind_early: bool
    token_interval: float
    tokens: int
    model: str


@dataclass
class Stats:
    """What GET /stats reports.

    `connections` counts every connection accepted, `open_connections` those
    still open. A generation, streamed or not, is counted once it ends:
    completed, or aborted when its client left (EOF or a failed write) or
    /api/extra/abort cut it short. `in_flight` counts requests being
    answered, the /stats request itself excluded.
    """

    requests: int = 0
    connections: int = 0
    open_connections: int = 0
    completed_streams: int = 0
    aborted_streams: int = 0
    in_flight: int = 0


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of every `name` header, lowercased."""
        return {
            token.strip().lower()
            for value in self.values(name)
            for token in value.split(",")
            if token.strip()
        }

    @property
    def wants_close(self) -> bool:
        return self.version == "HTTP/1.0" or "close" in self.tokens("connection")


class Connection(asyncio.Protocol):
    """One client connection: buffered reads, paced writes, requests in order.

    `gone` completes as soon as the client closes its side or the connection
    breaks, whether or not anyone is reading, so a generation can stop
    between tokens instead of waiting for a write to fail.
    """

    transport: asyncio.Transport

    def __init__(self, app: "Standin") -> None:
        self._app = app
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._eof = False
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.gone: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._app.connection_opened(self, self._serve())

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._mark_gone()
        self._wake()
        # Keep our side open: a client that half-closed after a short request
        # still reads the answer. Generations stop, as llama-server's do.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._mark_gone()
        self._wake()
        self._writable.set()
        self._app.connection_closed(self)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _mark_gone(self) -> None:
        if not self.gone.done():
            self.gone.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _more(self) -> None:
        """Wait for more bytes; raise ClientGone if none can come."""
        if self._eof:
            raise ClientGone
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read_head(self) -> bytes | None:
        """Return the next request head up to its blank line.

        Returns None when the client closed between requests. Raises
        HttpError (431) for a head over MAX_HEAD, whether it arrives in one
        piece or byte by byte.
        """
        scanned = 0
        while True:
            # RFC 9112 §2.2: empty lines before a request line are ignored.
            if self._buffer.startswith(b"\r\n"):
                del self._buffer[:2]
                scanned = 0
                continue
            end = self._buffer.find(b"\r\n\r\n", scanned)
            if end >= 0:
                break
            if len(self._buffer) > MAX_HEAD:
                raise HttpError(431, "request head too large")
            if self._eof and not self._buffer:
                return None
            scanned = max(0, len(self._buffer) - 3)
            await self._more()
        if end > MAX_HEAD:
            raise HttpError(431, "request head too large")
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        return head

    async def read_line(self) -> bytes:
        """Return the next CRLF-terminated line, without its CRLF."""
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > MAX_LINE:
                raise HttpError(400, "line too long in chunked body")
            await self._more()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    async def read_some(self, limit: int) -> bytes:
        """Return between 1 and `limit` bytes, waiting for them if need be."""
        if not self._buffer:
            await self._more()
        if limit >= len(self._buffer):
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(self._buffer[:limit])
            del self._buffer[:limit]
        return data

    async def read_exactly(self, size: int) -> bytes:
        parts = []
        while size > 0:
            part = await self.read_some(size)
            parts.append(part)
            size -= len(part)
        return b"".join(parts)

    def write(self, *pieces: bytes | memoryview) -> None:
        # Writing to a closed transport only logs warnings; say so instead.
        if self.transport.is_closing():
            raise ClientGone
        if len(pieces) == 1:
            self.transport.write(pieces[0])
        else:
            self.transport.writelines(pieces)

    async def drain(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()
        if self.transport.is_closing():
            raise ClientGone

    async def hold(self, seconds: float, abort: asyncio.Future[None] | None) -> None:
        """Wait `seconds`, cut short by `abort`; raise ClientGone if the client
        leaves meanwhile."""
        if seconds > 0:
            watched = [self.gone] if abort is None else [self.gone, abort]
            await asyncio.wait(watched, timeout=seconds)
        if self.gone.done():
            raise ClientGone

    async def _serve(self) -> None:
        try:
            while (request := await read_request(self)) is not None:
                if not await self._app.answer(self, request):
                    break
        except HttpError as error:
            with contextlib.suppress(ClientGone):
                await Reply(self, None).send_error(error)
        except ClientGone:
            pass
        except Exception:
            # A bug of the stand-in: say so on stderr, keep serving others.
            traceback.print_exc()
        finally:
            self.transport.close()


def parse_head(head: bytes) -> Request:
    """Parse a request head strictly, raising HttpError for what RPH must
    never forward: bare CR or LF, folded lines, malformed fields."""
    lines = head.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        raise HttpError(400, "bare CR or LF in request head")
    if len(lines) - 1 > MAX_HEADER_LINES:
        raise HttpError(431, "too many header lines")

    parts = lines[0].split(b" ")
    if len(parts) != 3 or not TOKEN_CHARS.fullmatch(parts[0]) or not parts[1]:
        raise HttpError(400, "malformed request line")
    method, target, version = (part.decode("latin-1") for part in parts)
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(505, f"unsupported version {version}")

    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # RFC 9112 §5.1: no space before the colon; §5.2: folding refused.
        if not colon or not TOKEN_CHARS.fullmatch(name):
            raise HttpError(400, "malformed header line")
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return Request(method, target, version, headers)


async def read_request(conn: Connection) -> Request | None:
    """Read one request with its whole body, de-chunked; None at a clean end.

    Framing follows RFC 9112 §6 strictly: what a smuggling proxy could read
    two ways is refused rather than guessed.
    """
    head = await conn.read_head()
    if head is None:
        return None
    request = parse_head(head)

    lengths = request.values("content-length")
    codings = [
        c.strip().lower()
        for v in request.values("transfer-encoding")
        for c in v.split(",")
    ]
    chunked = bool(codings)
    length = 0
    if chunked:
        if lengths or request.version == "HTTP/1.0":
            raise HttpError(400, "Transfer-Encoding with Content-Length or HTTP/1.0")
        if codings != ["chunked"]:
            raise HttpError(501, f"unsupported transfer coding {codings}")
    elif lengths:
        distinct = {v.strip() for value in lengths for v in value.split(",")}
        text = distinct.pop() if len(distinct) == 1 else ""
        if not is_number(text):
            raise HttpError(400, "invalid Content-Length")
        length = int(text)
        if length > MAX_BODY:
            raise HttpError(413, "body too large")

    expects = "100-continue" in request.tokens("expect")
    if expects and request.version == "HTTP/1.1" and (chunked or length):
        conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    if chunked:
        request.body = await read_chunked(conn)
    elif length:
        request.body = await conn.read_exactly(length)
    return request


async def read_chunked(conn: Connection) -> bytes:
    parts = []
    total = 0
    while True:
        size_text = (await conn.read_line()).split(b";", 1)[0].strip(b" \t")
        if not CHUNK_SIZE.fullmatch(size_text):
            raise HttpError(400, "invalid chunk size")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > MAX_BODY:
            raise HttpError(413, "body too large")
        parts.append(await conn.read_exactly(size))
        if await conn.read_exactly(2) != b"\r\n":
            raise HttpError(400, "chunk not followed by CRLF")
    # Trailer fields are read and dropped; nothing here uses them.
    for _ in range(MAX_HEADER_LINES + 1):
        if not await conn.read_line():
            return b"".join(parts)
    raise HttpError(431, "too many trailer lines")


class Reply:
    """Writes one response and picks its framing.

    A length makes Content-Length; no length means chunks for an HTTP/1.1
    client, else a body that ends when the connection closes. HEAD, 1xx,
    204 and 304 send no body whatever the handler writes. The head is held
    back until the first body bytes so that both leave in one segment.
    """

    def __init__(self, conn: Connection, request: Request | None) -> None:
        self.conn = conn
        # KoboldCpp's routes answer as its http.server does: HTTP/1.0, closed.
        self.version = "HTTP/1.1"
        self.head_only = request is not None and request.method == "HEAD"
        self.close = request is None or request.wants_close
        self.started = False
        self._chunked_ok = request is not None and request.version == "HTTP/1.1"
        self._chunked = False
        self._pending = b""

    def start(
        self,
        status: int,
        headers: Iterable[tuple[str, str]] = (),
        length: int | None = None,
    ) -> None:
        reason = REASONS.get(status, "Unknown")
        lines = [f"{self.version} {status} {reason}", *map(": ".join, headers)]
        if status < 200 or status in (204, 304):
            self.head_only = True
        elif length is not None:
            lines.append(f"Content-Length: {length}")
        elif self.version == "HTTP/1.1" and self._chunked_ok:
            lines.append("Transfer-Encoding: chunked")
            self._chunked = True
        else:
            self.close = True
        if self.version == "HTTP/1.0":
            self.close = True
        elif self.close and status != 101:
            lines.append("Connection: close")
        self._pending = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.started = True

    def write(self, data: bytes | memoryview) -> None:
        pieces: list[bytes | memoryview] = [self._pending] if self._pending else []
        self._pending = b""
        if data and not self.head_only:
            if self._chunked:
                pieces += [b"%x\r\n" % len(data), data, b"\r\n"]
            else:
                pieces.append(data)
        if pieces:
            self.conn.write(*pieces)

    def end(self) -> None:
        self.write(b"")
        if self._chunked and not self.head_only:
            self.conn.write(b"0\r\n\r\n")

    async def send(self, status: int, body: bytes, content_type: str) -> None:
        self.start(status, [("Content-Type", content_type)], len(body))
        self.write(body)
        self.end()
        await self.conn.drain()

    async def send_json(self, status: int, value: object) -> None:
        await self.send(status, dump(value), "application/json")

    async def send_error(self, error: HttpError) -> None:
        body = {"error": {"message": error.message, "type": error.kind}}
        await self.send_json(error.status, body)


def is_number(text: str) -> bool:
    # str.isdigit alone admits digits such as "²" that int() refuses.
    return text.isascii() and text.isdigit()


def dump(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_body(request: Request) -> dict[str, Any]:
    try:
        value = json.loads(request.body or b"{}")
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError both
        raise HttpError(400, f"body is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise HttpError(400, "body is not a JSON object")
    return value


def token_ids(text: str) -> list[int]:
    """A deterministic toy tokenizer: one id per whitespace-separated word."""
    return [zlib.crc32(word.encode()) % VOCAB_SIZE for word in text.split()]


Handler = Callable[[Request, Reply], Awaitable[None]]


class Standin:
    """The routes, the counters and the model's loading state."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.stats = Stats()
        self.ready_at = 0.0
        self._generations = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[Connection] = set()
        # One future per KoboldCpp-style generation, completed by its abort.
        self._kobold_jobs: set[asyncio.Future[None]] = set()
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/"): self._root,
            ("GET", "/health"): self._health,
            ("GET", "/stats"): self._stats,
            ("GET", "/download"): self._download,
            ("GET", "/ws"): self._websocket,
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/completions"): self._generate,
            ("POST", "/v1/chat/completions"): self._generate,
            ("POST", "/completion"): self._generate,
            ("POST", "/tokenize"): self._tokenize,
            ("GET", "/api/v1/model"): self._kobold_model,
            ("GET", "/api/v1/info/version"): self._kobold_api_version,
            ("GET", "/api/extra/version"): self._kobold_version,
            ("POST", "/api/v1/generate"): self._generate,
            ("POST", "/api/extra/generate/stream"): self._generate,
            ("POST", "/api/extra/abort"): self._kobold_abort,
            ("POST", "/api/extra/tokencount"): self._kobold_tokencount,
        }

    def connection_opened(self, conn: Connection, serve: Awaitable[None]) -> None:
        self.stats.connections += 1
        self.stats.open_connections += 1
        self._connections.add(conn)
        task = asyncio.ensure_future(serve)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def connection_closed(self, conn: Connection) -> None:
        self.stats.open_connections -= 1
        self._connections.discard(conn)

    async def close_all(self) -> None:
        for conn in list(self._connections):
            conn.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def answer(self, conn: Connection, request: Request) -> bool:
        """Answer one request; return whether the connection stays open."""
        reply = Reply(conn, request)
        path = request.path
        if path.startswith("/api/"):
            reply.version = "HTTP/1.0"
        method = "GET" if request.method == "HEAD" else request.method
        loading = asyncio.get_running_loop().time() < self.ready_at
        self.stats.requests += 1
        self.stats.in_flight += 1
        try:
            if loading and path != "/stats":
                # llama-server answers every route so while its model loads.
                await reply.send_json(503, {"status": "loading"})
            elif path == "/echo":
                await self._echo(request, reply)
            elif method == "GET" and path.startswith("/status/"):
                await self._status(path.removeprefix("/status/"), reply)
            elif handler := self._routes.get((method, path)):
                await handler(request, reply)
            else:
                message = f"no route for {request.method} {path}"
                raise HttpError(404, message, "not_found")
        except HttpError as error:
            if reply.started:
                raise
            await reply.send_error(error)
        finally:
            self.stats.in_flight -= 1
        return not reply.close

    async def _root(self, request: Request, reply: Reply) -> None:
        await reply.send(200, b"standin ok", "text/plain; charset=utf-8")

    async def _health(self, request: Request, reply: Reply) -> None:
        await reply.send_json(200, {"status": "ok"})

    async def _stats(self, request: Request, reply: Reply) -> None:
        stats = asdict(self.stats)
        stats["in_flight"] -= 1  # not counting this request
        await reply.send_json(200, stats)

    async def _models(self, request: Request, reply: Reply) -> None:
        model = {"id": self.options.model, "object": "model", "owned_by": "standin"}
        await reply.send_json(200, {"object": "list", "data": [model]})

    async def _tokenize(self, request: Request, reply: Reply) -> None:
        content = json_body(request).get("content", "")
        await reply.send_json(200, {"tokens": token_ids(str(content))})

    async def _echo(self, request: Request, reply: Reply) -> None:
        echo = {
            "method": request.method,
            "target": request.target,
            "http_version": request.version,
            "headers": request.headers,
            "body_length": len(request.body),
            "body_sha256": hashlib.sha256(request.body).hexdigest(),
        }
        await reply.send_json(200, echo)

    async def _status(self, code: str, reply: Reply) -> None:
        if not is_number(code) or not 200 <= int(code) <= 599:
            raise HttpError(400, "status must be 200 to 599")
        if int(code) in (204, 304):
            reply.start(int(code))
            reply.end()
            await reply.conn.drain()
        else:
            await reply.send_json(int(code), {"status": int(code)})

    async def _download(self, request: Request, reply: Reply) -> None:
        query = request.query
        size_text = query.get("bytes", ["0"])[0]
        if not is_number(size_text):
            raise HttpError(400, "bytes must be a non-negative integer")
        size = int(size_text)
        chunked = query.get("chunked", ["0"])[0] == "1"
        headers = [("Content-Type", "application/octet-stream")]
        reply.start(200, headers, None if chunked else size)

        step = DOWNLOAD_CHUNK if chunked else len(PATTERN)
        sent = size if reply.head_only else 0
        while sent < size:
            piece = min(step, size - sent)
            reply.write(PATTERN_VIEW[:piece])
            sent += piece
            await reply.conn.drain()
        reply.end()
        await reply.conn.drain()

    async def _websocket(self, request: Request, reply: Reply) -> None:
        key = request.values("sec-websocket-key")
        upgrade = "websocket" in request.tokens("upgrade")
        if request.method != "GET" or not upgrade or not key:
            raise HttpError(400, "expected a websocket upgrade")
        digest = hashlib.sha1((key[0] + WS_GUID).encode()).digest()
        accept = base64.b64encode(digest).decode()
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
        reply.start(101, [*headers, ("Sec-WebSocket-Accept", accept)])
        reply.end()
        reply.close = True  # the connection belongs to the websocket now
        await echo_websocket(reply.conn)

    def _token_count(self, body: dict[str, Any]) -> int:
        for key in TOKEN_LIMIT_KEYS:
            value = body.get(key)
            # llama.cpp's n_predict of -1 means "until done": use the default.
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return self.options.tokens

    async def _generate(self, request: Request, reply: Reply) -> None:
        """Generate tokens at the token interval, streamed or answered whole.

        Counts the generation as completed, or as aborted when the client
        left (then raises ClientGone) or /api/extra/abort cut it short.
        """
        body = json_body(request)
        delay = body.get("standin_delay", 0)
        if not isinstance(delay, int | float) or delay < 0:
            raise HttpError(400, "standin_delay must be a non-negative number")
        api = API_OF_PATH[request.path]
        abort: asyncio.Future[None] | None = None
        if api == "kobold":
            abort = asyncio.get_running_loop().create_future()
            self._kobold_jobs.add(abort)
        self._generations += 1
        job = Job(self.options, api, reply, abort, self._generations)
        count = self._token_count(body)
        stream = request.path.endswith("/stream") or body.get("stream") is True

        try:
            # Prompt processing: nothing is sent, yet the socket is watched.
            await reply.conn.hold(delay, abort)
            produced = await (job.stream(count) if stream else job.answer(count))
        except ClientGone:
            self.stats.aborted_streams += 1
            raise
        finally:
            if abort is not None:
                self._kobold_jobs.discard(abort)
        if produced < count:
            self.stats.aborted_streams += 1
        else:
            self.stats.completed_streams += 1

    async def _kobold_model(self, request: Request, reply: Reply) -> None:
        await reply.send_json(200, {"result": f"koboldcpp/{self.options.model}"})

    async def _kobold_api_version(self, request: Request, reply: Reply) -> None:
        await reply.send_json(200, {"result": "1.2.5"})

    async def _kobold_version(self, request: Request, reply: Reply) -> None:
        await reply.send_json(200, {"result": "KoboldCpp", "version": "1.0"})

    async def _kobold_tokencount(self, request: Request, reply: Reply) -> None:
        ids = token_ids(str(json_body(request).get("prompt", "")))
        await reply.send_json(200, {"value": len(ids), "ids": ids})

    async def _kobold_abort(self, request: Request, reply: Reply) -> None:
        for job in self._kobold_jobs:
            if not job.done():
                job.set_result(None)
        await reply.send_json(200, {"success": True})


API_OF_PATH: dict[str, Api] = {
    "/v1/completions": "completions",
    "/v1/chat/completions": "chat",
    "/completion": "llama",
    "/api/v1/generate": "kobold",
    "/api/extra/generate/stream": "kobold",
}

# KoboldCpp's head for a stream, as sent: HTTP/1.0 and so close-delimited,
# yet it says keep-alive. A proxy must still end the client's connection.
KOBOLD_STREAM_HEADERS = [
    ("X-Accel-Buffering", "no"),
    ("cache-control", "no-cache"),
    ("connection", "keep-alive"),
    ("Content-Type", "text/event-stream"),
]
SSE_HEADERS = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]


class Job:
    """One generation, written in the shapes of its API."""

    def __init__(
        self,
        options: Options,
        api: Api,
        reply: Reply,
        abort: asyncio.Future[None] | None,
        number: int,
    ) -> None:
        self.options = options
        self.api = api
        self.reply = reply
        self.abort = abort
        self.id = f"{'chatcmpl' if api == 'chat' else 'cmpl'}-standin-{number}"
        self.created = int(time.time())

    async def _next_token(self, index: int) -> bool:
        """Wait out one token's generation; return False once aborted."""
        if index:
            await self.reply.conn.hold(self.options.token_interval, self.abort)
        return self.abort is None or not self.abort.done()

    async def stream(self, count: int) -> int:
        """Stream up to `count` token events; return how many were sent."""
        kobold = self.api == "kobold"
        self.reply.start(200, KOBOLD_STREAM_HEADERS if kobold else SSE_HEADERS)
        produced = 0
        while produced < count and await self._next_token(produced):
            self._send_event(self._token_event(produced), produced)
            produced += 1
            await self.reply.conn.drain()

        if not kobold:
            self._send_event(self._finish_event(produced), produced)
            self.reply.write(b"data: [DONE]\n\n")
        self.reply.end()
        await self.reply.conn.drain()
        return produced

    async def answer(self, count: int) -> int:
        """Generate up to `count` tokens, then send them as one JSON body."""
        produced = 0
        while produced < count and await self._next_token(produced):
            produced += 1
        text = "".join(f" tok{index}" for index in range(produced))
        answer = self._whole_answer(text, produced)
        answer["standin_ns"] = time.time_ns()
        await self.reply.send_json(200, answer)
        return produced

    def _send_event(self, payload: dict[str, Any], index: int) -> None:
        payload["index"] = index
        # Stamped last, so the benchmark measures the path and not our work.
        payload["standin_ns"] = time.time_ns()
        data = json.dumps(payload, separators=(",", ":"))
        if self.api == "kobold":
            self.reply.write(f"event: message\ndata: {data}\n\n".encode())
        else:
            self.reply.write(f"data: {data}\n\n".encode())

    def _openai(self, kind: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.options.model,
            "choices": [{"index": 0, **choice}],
        }

    def _token_event(self, index: int) -> dict[str, Any]:
        text = f" tok{index}"
        choice: dict[str, Any]
        match self.api:
            case "completions":
                choice = {"text": text, "logprobs": None, "finish_reason": None}
                return self._openai("text_completion", choice)
            case "chat":
                delta = {"role": "assistant"} if index == 0 else {}
                delta["content"] = text
                choice = {"delta": delta, "finish_reason": None}
                return self._openai("chat.completion.chunk", choice)
            case "llama":
                return {"content": text, "stop": False}
            case "kobold":
                return {"token": text}

    def _finish_event(self, produced: int) -> dict[str, Any]:
        choice: dict[str, Any]
        match self.api:
            case "completions":
                choice = {"text": "", "logprobs": None, "finish_reason": "length"}
                return self._openai("text_completion", choice)
            case "chat":
                choice = {"delta": {}, "finish_reason": "length"}
                return self._openai("chat.completion.chunk", choice)
            case _:
                return {"content": "", "stop": True, "tokens_predicted": produced}

    def _whole_answer(self, text: str, produced: int) -> dict[str, Any]:
        usage = {"completion_tokens": produced}
        choice: dict[str, Any]
        match self.api:
            case "completions":
                choice = {"text": text, "logprobs": None, "finish_reason": "length"}
                return {**self._openai("text_completion", choice), "usage": usage}
            case "chat":
                message = {"role": "assistant", "content": text}
                choice = {"message": message, "finish_reason": "length"}
                return {**self._openai("chat.completion", choice), "usage": usage}
            case "llama":
                return {"content": text, "stop": True, "tokens_predicted": produced}
            case "kobold":
                return {"results": [{"text": text, "finish_reason": "length"}]}


async def echo_websocket(conn: Connection) -> None:
    """Echo frames back unmasked (RFC 6455 §5): data as sent, ping as pong,
    close as close, after which the connection ends."""
    while True:
        first, second = await conn.read_exactly(2)
        opcode = first & 0x0F
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(await conn.read_exactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await conn.read_exactly(8), "big")
        if size > MAX_WS_PAYLOAD:
            conn.write(ws_frame(WS_FIN | WS_CLOSE, WS_TOO_BIG))
            await conn.drain()
            return
        mask = await conn.read_exactly(4) if second & 0x80 else b""
        payload = unmask(await conn.read_exactly(size), mask)

        if opcode == WS_CLOSE:
            conn.write(ws_frame(WS_FIN | WS_CLOSE, payload))
            await conn.drain()
            return
        if opcode == WS_PING:
            conn.write(ws_frame(WS_FIN | WS_PONG, payload))
        elif opcode != WS_PONG:
            # FIN and opcode kept, so fragmented messages echo fragmented.
            conn.write(ws_frame(first & (WS_FIN | 0x0F), payload))
        await conn.drain()


def ws_frame(first: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes([first, size]) + payload
    if size < 1 << 16:
        return bytes([first, 126]) + size.to_bytes(2, "big") + payload
    return bytes([first, 127]) + size.to_bytes(8, "big") + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    if not mask or not payload:
        return payload
    # One big-integer XOR is far faster than a Python loop over the bytes.
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return masked.to_bytes(len(payload), "little")


def not_negative(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description="A stand-in local LLM server.")
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    add("--port", type=not_negative(int), required=True, help="0 picks a free one")
    add(
        "--load-delay",
        type=not_negative(float),
        default=0.0,
        metavar="SECONDS",
        help="pretend to load a model for this long, then bind (KoboldCpp)",
    )
    add(
        "--bind-early",
        action="store_true",
        help="bind at once and answer 503 while loading (llama-server)",
    )
    add(
        "--token-interval",
        type=not_negative(float),
        default=0.05,
        metavar="SECONDS",
        help="time between generated tokens (0.05)",
    )
    add(
        "--tokens",
        type=not_negative(int),
        default=16,
        metavar="N",
        help="tokens per completion when the body's max_tokens, n_predict "
        "or max_length does not say (16)",
    )
    add("--model", default="standin", help="model id to report (standin)")
    return Options(**vars(parser.parse_args(argv)))


def say(message: str) -> None:
    """Print one lifecycle line; tests and RPH read stdout line by line.

    No name in front, as real servers print theirs: RPH already puts the
    app's name before each line it logs or shows in `rph status`."""
    print(message, flush=True)


def on_stop_signals(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    signals = [signal.SIGINT, signal.SIGTERM]
    if sys.platform == "win32":
        signals.append(signal.SIGBREAK)  # what RPH's CTRL_BREAK_EVENT arrives as
    for signum in signals:
        try:
            loop.add_signal_handler(signum, callback)
        except (NotImplementedError, RuntimeError):
            # Windows' event loops have no add_signal_handler.
            signal.signal(signum, lambda *_: loop.call_soon_threadsafe(callback))


async def serve(options: Options) -> None:
    """Load, listen, and serve until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    on_stop_signals(stop.set)
    app = Standin(options)

    if options.load_delay:
        say(f"loading model for {options.load_delay:g} s")
        if options.bind_early:
            app.ready_at = loop.time() + options.load_delay
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(options.load_delay):
                    await stop.wait()

    if stop.is_set():
        say("stopping")
        return

    # One address only: "localhost" may resolve to two, and with port 0
    # each would get a different port.
    addresses = await loop.getaddrinfo(
        options.host, options.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    address = str(addresses[0][4][0])
    server = await loop.create_server(
        lambda: Connection(app), address, options.port, backlog=BACKLOG
    )
    port = server.sockets[0].getsockname()[1]
    host = f"[{options.host}]" if ":" in options.host else options.host
    say(f"listening on http://{host}:{port}")

    await stop.wait()
    say("stopping")
    server.close()
    await app.close_all()
    await server.wait_closed()


def main() -> None:
    options = parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(options))


if __name__ == "__main__":
    main()
