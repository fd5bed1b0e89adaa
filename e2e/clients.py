"""What the end-to-end checks share: waiting, raw HTTP, timing a stream.

The raw client writes the exact bytes a client such as SillyTavern writes
and keeps the exact head it gets back, so a check can see what that client
would see (did the answer say the connection closes?). It frames bodies by
`Content-Length`, chunks or the close, as any HTTP/1.1 client does.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# A condition is checked this often while a check waits for it.
POLL_INTERVAL = 0.02

# One socket read; an SSE event is far smaller.
READ_SIZE = 65536

# A stream in these checks has hundreds of tokens; fewer events than this
# means it was cut short, or arrived as something else.
STREAMED_EVENTS_AT_LEAST = 20

# Share of the wait that a stream's events must span. Warm it is near 1
# (the first token comes within milliseconds); cold, the model load (~0.7 s)
# comes first, and the streams in these checks generate for longer than that.
STREAMED_SHARE = 0.3

# A raw client gives up on a silent server after this long (the longest
# answer here, a 1900-token stream, takes a few seconds).
SOCKET_TIMEOUT = 60.0


def wait_until(condition: Callable[[], bool], what: str, within: float) -> None:
    """Return once `condition()` holds; fail the check after `within` s."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {within:g} s for {what}")
        time.sleep(POLL_INTERVAL)


def free_port() -> int:
    """A port nobody listens on now (config files need a number)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@dataclass
class RawResponse:
    status: int
    http_version: bytes
    head: bytes  # the status line and headers exactly as received
    body: bytes = b""
    # time.monotonic() of each piece of body as it was read
    arrivals: list[float] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def says_close(self) -> bool:
        """Whether the head tells a client the connection ends after it."""
        tokens = (self.header("connection") or "").lower()
        if self.http_version == b"1.0":
            return "keep-alive" not in tokens
        return "close" in tokens

    def json(self) -> object:
        return json.loads(self.body)


class RawClient:
    """One client connection: exact request bytes out, framed responses in."""

    def __init__(self, port: int) -> None:
        self.sock = connect(port)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def exchange(self, data: bytes) -> RawResponse:
        """Send a request and read its whole response."""
        self.send(data)
        response = self.read_head()
        self.read_body(response)
        return response

    def read_head(self) -> RawResponse:
        """Read the next final response head (a 100 Continue is skipped)."""
        while True:
            while b"\r\n\r\n" not in self.buffer:
                self._fill("a response head")
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            version, status = head.split(b" ", 2)[:2]
            if not status.startswith(b"1"):
                return RawResponse(int(status), version.removeprefix(b"HTTP/"), head)

    def read_body(self, response: RawResponse, pieces: int | None = None) -> None:
        """Read the body into `response`, as its head frames it.

        With `pieces`, stop once that many pieces of body have arrived (a
        streamed event is one chunk).
        """
        if (response.header("transfer-encoding") or "").lower() == "chunked":
            self._read_chunked(response, pieces)
            return
        length = response.header("content-length")
        remaining = None if length is None else int(length)
        while remaining != 0:
            if not self.buffer:
                waiting_for = None if remaining is None else "the end of the body"
                if not self._fill(waiting_for):
                    return  # close-delimited: the close ends the body
            size = len(self.buffer)
            if remaining is not None:
                size = min(size, remaining)
                remaining -= size
            self._take(response, size)
            if pieces is not None and len(response.arrivals) >= pieces:
                return

    def _read_chunked(self, response: RawResponse, pieces: int | None) -> None:
        while True:
            while b"\r\n" not in self.buffer:
                self._fill("a chunk size")
            size_line, self.buffer = self.buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while b"\r\n" not in self.buffer:
                    self._fill("the end of a chunked body")
                self.buffer = self.buffer.split(b"\r\n", 1)[1]  # no trailers
                return
            while len(self.buffer) < size + 2:
                self._fill("a chunk")
            self._take(response, size)
            self.buffer = self.buffer[2:]
            if pieces is not None and len(response.arrivals) >= pieces:
                return

    def _take(self, response: RawResponse, size: int) -> None:
        response.body += self.buffer[:size]
        response.arrivals.append(time.monotonic())
        self.buffer = self.buffer[size:]

    def _fill(self, waiting_for: str | None) -> bool:
        """Read more; at EOF, False if `waiting_for` is None, else fail."""
        data = self.sock.recv(READ_SIZE)
        if not data and waiting_for is not None:
            raise AssertionError(
                f"the server closed the connection before {waiting_for}"
            )
        self.buffer += data
        return bool(data)

    def peer_closed(self) -> bool:
        """True if the server closes its side next (waits for it)."""
        try:
            return not self.buffer and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def post(path: str, body: object, headers: Iterable[tuple[str, str]]) -> bytes:
    """The bytes of a POST with a JSON body, headers in the order given."""
    payload = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1"]
    for name, value in headers:
        lines.append(f"{name}: {len(payload) if value == '{length}' else value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def get(path: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sse_texts(body: bytes) -> list[str]:
    """The token texts of an OpenAI-style text-completion stream, in order.

    The event that only says why the answer ended (`finish_reason`) is not
    a token.
    """
    texts = []
    for line in body.decode().splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        choice = json.loads(line.removeprefix("data: "))["choices"][0]
        if choice["finish_reason"] is None:
            texts.append(choice["text"])
    return texts


def assert_streamed(arrivals: list[float], sent: float) -> None:
    """The events came spread over the generation, not in one lump.

    A relay that held the answer back would deliver every event at the end,
    within a millisecond or so; a streaming one delivers the first while
    the rest are still being generated. So the span from the first event to
    the last must be a fair share of the whole wait.
    """
    assert len(arrivals) >= STREAMED_EVENTS_AT_LEAST, arrivals
    spread = arrivals[-1] - arrivals[0]
    waited = arrivals[-1] - sent
    assert spread >= STREAMED_SHARE * waited, (
        f"{len(arrivals)} events within {spread * 1000:.1f} ms"
        f" of a {waited * 1000:.0f} ms wait"
    )
