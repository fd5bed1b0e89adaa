"""A lane's socket calls: what its thread reads and writes, and how it waits.

The client is read whenever the thread waits for anything else and the
client may send (its next request, an EOF, a reset), as the connection's
task reads it continuously (net/client): an EOF is passed on to the
backend as a half-close, a reset ends the exchange. Every wait also
watches the port's stop socket (net/waits).
"""

from __future__ import annotations

import contextlib
import socket

import trio

from rph.errors import BackendFailed
from rph.net import fastio, http
from rph.net.client import PIPELINE_BUFFER_LIMIT, READ_SIZE, ClientConnection
from rph.net.relay import ClientAborted
from rph.net.upstream import Upstream
from rph.net.waits import StopSocket, Watch
from rph.proc.readiness import Endpoint


class LaneIO:
    """The client's socket and the backend's, as a lane's thread uses them."""

    def __init__(self, conn: ClientConnection, stop: StopSocket) -> None:
        self.conn = conn
        self._client = conn.fast.raw
        self._stop = stop

    def __repr__(self) -> str:
        return f"<LaneIO peer={self.conn.peer} buffered={len(self.conn.buffer)}>"

    def splice_to_client(self, upstream: Upstream, length: int) -> int:
        """Splice a body to the client; the client is not watched, but its
        reset fails the splice."""
        try:
            return self._stop.splice(upstream.fast.raw, self._client, length)
        except fastio.SinkBroken:
            raise ClientAborted from None

    def read_client(self, timeout: float) -> bool:
        """Read what the client sent into the buffer; False on silence."""
        if timeout <= 0 or self._client not in self._wait([self._client], timeout):
            return False
        self.take_from_client()
        return True

    def take_from_client(self) -> None:
        try:
            data = self._client.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.conn.reset = True
            return
        if data:
            self.conn.buffer += data
        else:
            self.conn.eof = True

    def from_backend(self, upstream: Upstream, watch: Watch | None = None) -> bytes:
        """The backend's next bytes, b"" at EOF, watching the client meanwhile.

        Waits through `watch` if given (see open_backend_watch), else
        through a wait made for this read alone. Raises OSError if the
        backend broke, ClientAborted if the client left.
        """
        backend = upstream.fast.raw
        while True:
            if watch is not None:
                ready = watch.wait()
            elif self._watching():
                ready = self._wait([backend, self._client])
            else:
                ready = self._wait([backend])
            if self._client in ready:
                self._heard_client(upstream, watch)
            if backend in ready:
                try:
                    return backend.recv(fastio.BACKEND_READ)
                except BlockingIOError:
                    continue

    def open_backend_watch(self, upstream: Upstream) -> Watch:
        """A standing wait on the backend, and on the client while it may
        send, for the reads of a whole body; close it after."""
        watched = [upstream.fast.raw]
        if self._watching():
            watched.append(self._client)
        return self._stop.open_watch(watched)

    def _heard_client(self, upstream: Upstream, watch: Watch | None) -> None:
        """Take what the client sent while the lane waited on the backend.

        Raises ClientAborted if the client left.
        """
        if self._watching():
            self.take_from_client()
            if self.conn.reset:
                raise ClientAborted
        if self.conn.eof:
            half_close(upstream)
        # A standing watch would wake again and again on an EOF or on a
        # full buffer: the client is watched no more.
        if watch is not None and not self._watching():
            watch.drop(self._client)

    def to_client(self, data: bytes) -> None:
        try:
            self.send(self._client, data)
        except OSError:
            raise ClientAborted from None
        if self.conn.reset:
            raise ClientAborted

    def connect(self, endpoint: Endpoint) -> Upstream:
        """A new connection to `endpoint`; BackendFailed if refused."""
        try:
            sock = self._stop.connect(endpoint.family, endpoint.address)
        except OSError as exc:
            raise BackendFailed(f"the backend refused the connection: {exc}") from None
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        return Upstream(stream, endpoint)

    def _watching(self) -> bool:
        """Whether to read the client while it waits for its answer: not
        once it closed, nor with a full buffer of pipelined requests."""
        conn = self.conn
        if conn.eof or conn.reset:
            return False
        return len(conn.buffer) < PIPELINE_BUFFER_LIMIT

    def send(self, sink: socket.socket, data: bytes | bytearray | memoryview) -> None:
        # A client that reads its answers only once it has sent all its
        # pipelined requests is read meanwhile, as the task would.
        # Most writes go whole at once: try that before a view is needed.
        try:
            sent = sink.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        reading = sink is self._client
        with memoryview(data) as view:
            while sent < len(view):
                try:
                    sent += sink.send(view[sent:])
                except BlockingIOError:
                    watched = [self._client] if reading and self._watching() else []
                    if self._client in self._wait(watched, writer=sink):
                        self.take_from_client()

    def _wait(
        self,
        readers: list[socket.socket],
        timeout: float | None = None,
        writer: socket.socket | None = None,
    ) -> list[socket.socket]:
        return self._stop.wait(readers, timeout, writer)

    def splice_from_client(self, backend: socket.socket, length: int) -> int:
        """Splice the rest of a body to the backend; how much moved (less if
        the client left). Raises OSError if the backend broke, and
        waits.Stalled if the client pauses BODY_IDLE_DEADLINE."""
        try:
            return self._stop.splice(
                self._client, backend, length, http.BODY_IDLE_DEADLINE
            )
        except fastio.SinkBroken as exc:
            raise OSError(str(exc)) from None


def half_close(upstream: Upstream) -> None:
    """Pass the client's half-close on: the backend reads EOF."""
    if not upstream.half_closed:
        upstream.half_closed = True
        with contextlib.suppress(OSError):
            upstream.fast.raw.shutdown(socket.SHUT_WR)
