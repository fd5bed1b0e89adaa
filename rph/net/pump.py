"""The rest of a streamed response, relayed by a thread of its own.

Between two tokens RPH has nothing to do but wait, and how soon it passes a
token on is the delay a user sees. A trio task woken by the backend's write
goes through the run loop on its way in and again on its way back to sleep,
and the client that RPH's write woke often waits on the same CPU until RPH
sleeps. A thread waiting on the backend's socket wakes straight into its
read, writes, and is asleep again at once: on a 2-core machine that takes
about half off what RPH adds to each streamed event (see benchmarks/).

The relay offers a stream (a chunked or close-delimited body) to a thread
once a first piece of it has gone out, and again after every piece while
it relays in its task, so a stream moves to a thread as soon as one is
free. Cancelling the caller (the client left, RPH stops) wakes the thread
through a stop socket of its own (net/waits), and the caller returns only
once the thread has let go of both sockets.
"""

from __future__ import annotations

import socket

import trio

from rph.net.fastio import BACKEND_READ, SinkBroken
from rph.net.framing import BodyEnd
from rph.net.threadlimit import ThreadLimit
from rph.net.waits import Stopped, StopSocket

# Streams relayed by threads at once; the ones beyond go on in their tasks.
# Each thread needs the interpreter for every token it passes on: with
# many, they slow the run loop that answers new requests (64 streams
# started at once got their first token twice as late with 8 threads).
# A desktop mostly streams one answer at a time.
MAX_THREADS = 2

_threads = ThreadLimit("relay threads", lambda: MAX_THREADS)


def has_room() -> bool:
    """Whether a thread is free for one more stream."""
    return _threads.has_room()


async def relay_rest(
    source: socket.socket, sink: socket.socket, body: BodyEnd
) -> tuple[bool, bool]:
    """Relay from `source` to `sink` until `body` ends or `source` closes.

    Returns whether the body ended as framed, and whether nothing followed
    its end; `body.relayed` counts what the client was sent, whatever
    happens. Raises SinkBroken if `sink` broke.
    """
    stop = StopSocket()
    broken: SinkBroken | None = None
    try:
        # A cancelled caller gets its Cancelled in a group from here, which
        # trio's cancel scopes take as they take a bare one.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop.stop_when_cancelled)
            try:
                # Not abandoned on cancel: until the thread returns it may
                # still touch both sockets, and they must outlive it.
                ended = await trio.to_thread.run_sync(
                    _pump,
                    source,
                    sink,
                    body,
                    stop,
                    abandon_on_cancel=False,
                    limiter=_threads.limiter,
                )
            except SinkBroken as exc:
                broken = exc  # raised from inside, it would come in a group
            nursery.cancel_scope.cancel()
    finally:
        stop.close()
    if broken is not None:
        raise broken
    return ended


def _pump(
    source: socket.socket, sink: socket.socket, body: BodyEnd, stop: StopSocket
) -> tuple[bool, bool]:
    """The thread's loop; the sockets stay non-blocking, as trio needs them."""
    try:
        while True:
            stop.wait([source])
            try:
                data = source.recv(BACKEND_READ)
            except BlockingIOError:
                continue
            except OSError:
                return False, False  # the client sees the body cut short
            if not data:
                return body.ends_at_close, True
            try:
                data, ended, clean = body.cut(data)
            except ValueError:
                return False, False
            _send_all(sink, data, stop)
            body.relayed += len(data)
            if ended:
                return True, clean
    except Stopped:
        # The caller was cancelled, and raises that once this returns.
        return False, False


def _send_all(sink: socket.socket, data: bytes, stop: StopSocket) -> None:
    with memoryview(data) as view:
        sent = 0
        while sent < len(view):
            try:
                sent += sink.send(view[sent:])
            except BlockingIOError:
                stop.wait([], writer=sink)
            except OSError as exc:
                raise SinkBroken(str(exc)) from None
