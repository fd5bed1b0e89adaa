"""Plain requests of a connection, answered by a thread of its own.

Most requests a desktop sends are plain: for an app that is ready, with a
body that arrives with its head or, if no route depends on it, as it
comes. For those, what RPH adds to the time
of an answer is mostly the run loop itself: each wait for the client or the
backend is a trip through trio's scheduler, and on a 2-core machine that
trip costs more than parsing and relaying. A thread that blocks on the two
sockets it serves wakes straight into its read, so a connection's plain
requests are answered by one: the lane.

The lane hands the connection back to its task, which reads the same
request again from the same buffer, as soon as a request is anything else:
a control endpoint, an app that must start or be waited for, a chunked
body, a body over 1 MiB that a route depends on, an upgrade, a head that
is incomplete or malformed, a route that does not exist. Whatever the task
answers (errors, waits, starts) is thus answered by one piece of code.

While it waits for an answer, the lane watches the client as the task
does (net/watch): bytes are the next request, an EOF is passed on to the
backend as a half-close, a reset ends the exchange at once. Its socket
calls and waits are in net/laneio; every wait also watches the port's
stop socket, which RPH writes when it stops serving.
"""

from __future__ import annotations

import enum
import socket
import time

import trio

from rph.errors import BackendFailed, RequestTimeout, RPHError
from rph.net import control, http
from rph.net.accesslog import log_exchange, log_refusal
from rph.net.client import ClientConnection
from rph.net.heads import error_response, forward_head
from rph.net.laneio import LaneIO, half_close
from rph.net.lanerelay import relay_response
from rph.net.pool import UpstreamPool
from rph.net.relay import SPLICE_FROM, ClientAborted, Outcome
from rph.net.router import PortRouter, Route
from rph.net.threadlimit import ThreadLimit
from rph.net.upstream import (
    JOIN_BELOW,
    Upstream,
    UpstreamClosed,
)
from rph.net.waits import Stalled, Stopped, StopSocket
from rph.proc.readiness import Endpoint
from rph.proc.supervisor import Supervisor

# Connections answered by lanes at once; the ones beyond are answered by
# their tasks, as every connection would be without lanes. Each lane needs
# the interpreter for each piece it passes on: 64 streams started at once
# got their first token later with 64 lanes than with 16 (benchmarks/).
LANE_THREADS = 16

# A connection silent this long between requests gives its lane back and
# waits for the next one in its task: idle keep-alive connections (a
# browser's, a front-end's) hold no thread.
LANE_IDLE = 1.0

# A body this large goes on to the backend as it arrives, where no route
# depends on it: it is not held whole, and the backend starts reading at
# once. A smaller one is held, so that it can go again on a new connection.
STREAM_FROM = 64 * 1024

# A body that a route may depend on is read whole by the lane up to this
# size; a larger one by the task, which reads it in place.
LANE_BODY_LIMIT = 1024 * 1024

_threads = ThreadLimit("lanes", lambda: LANE_THREADS)


class Handback(enum.Enum):
    """Why a lane gave its connection back to the task."""

    REQUEST = "a request that is not plain"
    IDLE = "no request for LANE_IDLE"
    OVER = "the connection is over, or the port stopped serving"


def has_room() -> bool:
    """Whether a lane is free for one more connection."""
    return _threads.has_room()


class Lane:
    """Answers a connection's plain requests from a thread."""

    def __init__(
        self,
        conn: ClientConnection,
        router: PortRouter,
        supervisor: Supervisor,
        pool: UpstreamPool,
        stop: StopSocket,
    ) -> None:
        self.conn = conn
        self.router = router
        self.supervisor = supervisor
        self.pool = pool
        self.upstream: Upstream | None = None  # kept between requests
        self.io = LaneIO(conn, stop)
        self._clock = trio.lowlevel.current_clock()

    async def run(self) -> Handback:
        """Answer plain requests until the connection needs its task."""
        # Not abandoned on cancel: the thread owns both sockets until it
        # returns, and the port's stop socket makes it return at once.
        return await trio.to_thread.run_sync(
            self._serve, abandon_on_cancel=False, limiter=_threads.limiter
        )

    # -- the thread -------------------------------------------------------

    def _serve(self) -> Handback:
        try:
            while (waited := self._wait_for_head()) is Handback.REQUEST:
                try:
                    plan = self._plan()
                except RequestTimeout as error:
                    self._refuse(None, error)
                    waited = Handback.OVER
                    break
                if plan is None:
                    return Handback.REQUEST
                if not self._answer(*plan):
                    waited = Handback.OVER
                    break
        except Stopped:
            return Handback.OVER
        if waited is Handback.OVER and self.upstream is not None:
            # Its backend connection goes back to the pool at once, for the
            # next connection the client may be opening already.
            self.pool.keep_at_once(self.upstream)
            self.upstream = None
        return waited

    def _wait_for_head(self) -> Handback:
        """Wait for a request's first byte (REQUEST); OVER if the client
        left or stayed silent for the connection's IDLE_DEADLINE, IDLE if
        it stayed silent for LANE_IDLE."""
        buffer = self.conn.buffer
        for_lane = min(LANE_IDLE, http.IDLE_DEADLINE)
        deadline = time.monotonic() + for_lane
        while True:
            # RFC 9112 §2.2: empty lines before a request line are ignored.
            while buffer.startswith((b"\r\n", b"\n")):
                del buffer[: buffer.index(b"\n") + 1]
            if buffer and buffer != b"\r":
                return Handback.REQUEST
            if self.conn.eof or self.conn.reset:
                return Handback.OVER
            if not self.io.read_client(deadline - time.monotonic()):
                idle_over = for_lane == http.IDLE_DEADLINE
                return Handback.OVER if idle_over else Handback.IDLE

    def _plan(self) -> tuple[http.Request, Route, Endpoint] | None:
        """The next request, its route and a leased endpoint; None if the
        request is not plain (the buffer is then left as it was)."""
        try:
            parsed = http.parse_head(self.conn.buffer)
        except RPHError:
            return None
        if parsed is None:
            return None
        request, head_size = parsed
        if control.is_control(request.path) or request.wants_upgrade:
            return None
        if request.header(b"transfer-encoding"):
            return None
        length_header = request.header(b"content-length")
        length = int(length_header) if length_header is not None else 0
        request.has_body = length_header is not None
        if length > self.router.body_limit(request.path):
            return None  # the task answers 413 before the body comes
        streams = length >= STREAM_FROM and not self.router.reads_body(request.path)
        if streams:
            request.streamed = length  # relayed as it comes (_stream_body)
        elif request.header(b"expect") or length > LANE_BODY_LIMIT:
            return None
        elif self._read_body(head_size + length):
            with memoryview(self.conn.buffer) as buffered:
                request.body = bytes(buffered[head_size : head_size + length])
        else:
            return None
        try:
            route = self.router.route(request.path, request.body)
        except RPHError:
            return None
        if route.passive or length > route.app.max_body:
            return None
        endpoint = self.supervisor.lease_at_once(route.app.name)
        if endpoint is None:
            return None
        del self.conn.buffer[: head_size + len(request.body)]
        request.started = self._clock.current_time()
        return request, route, endpoint

    def _read_body(self, size: int) -> bool:
        """Whether the buffer holds `size` bytes; False if the client closed
        first. Raises RequestTimeout if the body pauses as the task would
        not let it (the 408 ends the connection)."""
        while len(self.conn.buffer) < size:
            if self.conn.eof or self.conn.reset:
                return False
            if not self.io.read_client(http.BODY_IDLE_DEADLINE):
                raise _body_stalled()
        return True

    def _answer(self, request: http.Request, route: Route, endpoint: Endpoint) -> bool:
        """Relay one leased request; True if the connection goes on."""
        outcome = Outcome()
        try:
            self._forward(request, endpoint, outcome)
        except BackendFailed as error:
            if not outcome.head_sent:
                return self._refuse(request, error)
            outcome.client_keeps = False  # no second response after the first
        except RequestTimeout as error:
            return self._refuse(None, error)  # a body that stalled halfway
        except ClientAborted:
            outcome.aborted = True
            outcome.client_keeps = False
        finally:
            self.supervisor.release_from_thread(route.app.name)
        now = self._clock.current_time()
        log_exchange(self.conn.peer, request, route, outcome, self.conn.eof, now)
        return outcome.client_keeps

    def _refuse(self, request: http.Request | None, error: RPHError) -> bool:
        """Answer `error`; True if the connection goes on (None: the request
        could not be read whole, and the connection ends)."""
        log_refusal(self.conn.peer, request, error)
        keeps = request is not None and request.keep_alive
        head_only = request is not None and request.method == b"HEAD"
        try:
            self.io.to_client(error_response(error, not keeps, head_only))
        except ClientAborted:
            return False
        return keeps

    def _forward(
        self, request: http.Request, endpoint: Endpoint, outcome: Outcome
    ) -> None:
        head = forward_head(request, self.conn.peer)
        upstream = self._upstream_for(endpoint)
        try:
            try:
                self._send_and_relay(upstream, head, request, outcome)
            except UpstreamClosed:
                # A kept connection that the backend closed just as it was
                # reused: the request never reached it, and goes again
                # (unless its body went on as it came, and is gone).
                resent = upstream.uses > 1 and not request.streamed
                if not resent or upstream.half_closed or outcome.status:
                    raise
                upstream.close_now()
                upstream = self.upstream = self.io.connect(endpoint)
                self._send_and_relay(upstream, head, request, outcome)
        finally:
            if not outcome.upstream_reusable:
                self.upstream = None
                upstream.close_now()

    def _upstream_for(self, endpoint: Endpoint) -> Upstream:
        kept, self.upstream = self.upstream, None
        if kept is not None and kept.is_fit_for(endpoint):
            self.upstream = kept
            return kept
        if kept is not None:
            self.pool.keep_at_once(kept)  # another app's: another client's
        self.upstream = self.pool.take_at_once(endpoint) or self.io.connect(endpoint)
        return self.upstream

    def _send_and_relay(
        self,
        upstream: Upstream,
        head: bytes,
        request: http.Request,
        outcome: Outcome,
    ) -> None:
        upstream.uses += 1
        backend = upstream.fast.raw
        try:
            if len(request.body) < JOIN_BELOW:
                self.io.send(backend, head + request.body)
            else:
                self.io.send(backend, head)
                self.io.send(backend, request.body)
            if request.streamed:
                if request.expects_continue:
                    self.io.to_client(http.CONTINUE)
                self._stream_body(backend, request.streamed)
        except OSError as exc:
            message = f"the backend closed the connection: {exc}"
            raise UpstreamClosed(message) from None
        if self.conn.eof:
            half_close(upstream)

        relay_response(self.io, upstream, request, outcome, self._clock)

    def _stream_body(self, backend: socket.socket, length: int) -> None:
        """Relay a body of `length` from the client as it comes.

        Raises ClientAborted if the client leaves before its end, and
        RequestTimeout if it stalls.
        """
        buffer = self.conn.buffer
        while length:
            if not buffer and length >= SPLICE_FROM:
                # A large rest goes from socket to socket inside the kernel.
                try:
                    moved = self.io.splice_from_client(backend, length)
                except Stalled:
                    raise _body_stalled() from None
                if moved < length:
                    raise ClientAborted  # the client left before its end
                return
            if not buffer:
                if self.conn.eof or self.conn.reset:
                    raise ClientAborted
                if not self.io.read_client(http.BODY_IDLE_DEADLINE):
                    raise _body_stalled()
                continue
            piece = min(len(buffer), length)
            with memoryview(buffer) as buffered:
                self.io.send(backend, buffered[:piece])
            del buffer[:piece]
            length -= piece


def _body_stalled() -> RequestTimeout:
    pause = f"{http.BODY_IDLE_DEADLINE:g} s"
    return RequestTimeout(f"request body brought no byte for {pause}")
