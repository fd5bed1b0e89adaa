"""The rest of a streamed response, relayed by a thread of its own.

Between two tokens RPH has nothing to do but wait, and how soon it passes a
token on is the delay a user sees. A trio task woken by the backend's write
goes through the run loop on its way in and again on its way back to sleep,
and the client that RPH's write woke often waits on the same CPU until RPH
sleeps. A thread waiting on the backend's socket wakes straight into its
read, writes, and is asleep again at once: on a 2-core machine that takes
about half off what RPH adds to each streamed event (see benchmarks/).

The relay hands a body over once its first piece of body has gone out and
more is to come. Each body holds one thread of a bounded pool; when none is free
the relay goes on in its task, as it does for everything that ends in one
piece. Cancelling the caller (the client left, RPH stops) wakes the thread
through a socket pair, and the caller returns only once the thread has
let go of both sockets.
"""

from __future__ import annotations

import selectors
import socket

import trio

from rph.net.fastio import SinkBroken
from rph.net.framing import BodyEnd

# Bodies relayed by threads at once; the ones beyond go on in their tasks.
# Each thread needs the interpreter for every token it passes on: with
# many, they slow the run loop that answers new requests (64 streams
# started at once got their first token twice as late with 8 threads).
# A desktop mostly streams one answer at a time.
MAX_THREADS = 2

# One read from the backend. Below the allocator's threshold for a mapping
# of its own (128 KiB): a token's read then costs no system call but its
# own. A large download moves by splice (Linux) or at this size.
READ_SIZE = 64 * 1024

_pool: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("pump")


class Stopped(Exception):
    """The thread was told to stop: its caller was cancelled."""


def has_room() -> bool:
    """Whether a thread is free for one more body."""
    return _threads().available_tokens > 0


async def relay_rest(
    source: socket.socket, sink: socket.socket, body: BodyEnd
) -> tuple[int, bool, bool]:
    """Relay from `source` to `sink` until `body` ends or `source` closes.

    Returns the bytes moved, whether the body ended as framed, and whether
    nothing followed its end. Raises SinkBroken if `sink` broke.
    """
    stop_reader, stop_writer = socket.socketpair()
    broken: SinkBroken | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_when_cancelled, stop_writer)
            try:
                relayed = await trio.to_thread.run_sync(
                    _pump, source, sink, body, stop_reader, limiter=_threads()
                )
            except SinkBroken as exc:
                # Raised from here it would reach the caller in a group.
                broken = exc
            nursery.cancel_scope.cancel()
    finally:
        stop_reader.close()
        stop_writer.close()
    if broken is not None:
        raise broken
    return relayed


def _threads() -> trio.CapacityLimiter:
    try:
        return _pool.get()
    except LookupError:
        limiter = trio.CapacityLimiter(MAX_THREADS)
        _pool.set(limiter)
        return limiter


async def _stop_when_cancelled(stop_writer: socket.socket) -> None:
    try:
        await trio.sleep_forever()
    finally:
        stop_writer.send(b"!")


def _pump(
    source: socket.socket, sink: socket.socket, body: BodyEnd, stop: socket.socket
) -> tuple[int, bool, bool]:
    """The thread's loop; the sockets stay non-blocking, as trio needs them."""
    moved = 0
    try:
        with selectors.DefaultSelector() as readable:
            readable.register(source, selectors.EVENT_READ)
            readable.register(stop, selectors.EVENT_READ)
            while True:
                if any(key.fileobj is stop for key, _ in readable.select()):
                    raise Stopped
                try:
                    data = source.recv(READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    return moved, False, False  # the client sees the body cut
                if not data:
                    return moved, body.ends_at_close, True
                try:
                    data, ended, clean = body.cut(data)
                except ValueError:
                    return moved, False, False
                _send_all(sink, data, stop)
                moved += len(data)
                if ended:
                    return moved, True, clean
    except Stopped:
        # The caller was cancelled and raises that once this returns.
        return moved, False, False


def _send_all(sink: socket.socket, data: bytes, stop: socket.socket) -> None:
    with memoryview(data) as view:
        sent = 0
        while sent < len(view):
            try:
                sent += sink.send(view[sent:])
            except BlockingIOError:
                _wait_writable(sink, stop)
            except OSError as exc:
                raise SinkBroken(str(exc)) from None


def _wait_writable(sink: socket.socket, stop: socket.socket) -> None:
    # A client that reads slowly: rare enough to set a selector up each time.
    with selectors.DefaultSelector() as writable:
        writable.register(sink, selectors.EVENT_WRITE)
        writable.register(stop, selectors.EVENT_READ)
        if any(key.fileobj is stop for key, _ in writable.select()):
            raise Stopped
