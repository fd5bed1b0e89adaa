"""Socket reads and writes on the relay path that wait only when they must.

trio's streams yield to the scheduler after every successful `send` and
`recv`, so that each call is a checkpoint. On the path of every token that
costs a trip through the run loop per read and per write, more than the
system calls themselves. `FastSocket` makes the same calls on the socket
underneath a `trio.SocketStream` and waits (through trio) only when the
kernel says it would block. Cancellation is still honoured at every call,
and a task that never has to wait yields every YIELD_EVERY calls, so a fast
download cannot starve the other connections. On Linux, `splice` moves a
large body from socket to socket without copying it through Python.

Errors are trio's: `BrokenResourceError` for a connection that broke,
`ClosedResourceError` for one RPH closed meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Generator

import trio

# One read from a backend; a streamed token is far smaller. Kept below the
# allocator's threshold for a mapping of its own (128 KiB): a read that
# size costs one system call, not four. A large download moves by splice.
BACKEND_READ = 64 * 1024

# Calls in a row that did not have to wait before one yields anyway: a MiB
# or a few between two yields (reads are 64 KiB from a backend, 256 KiB
# from a client).
YIELD_EVERY = 16

# Linux moves bytes from socket to socket through a pipe without copying
# them into Python (splice(2)); elsewhere large bodies go through `recv`.
CAN_SPLICE = hasattr(os, "splice")

# A pipe this large moves a large body in few round trips; the kernel may
# refuse it (fs.pipe-max-size), and the default 64 KiB pipe works too.
PIPE_SIZE = 1024 * 1024


class SinkBroken(Exception):
    """The socket being written to broke while bytes were spliced to it."""


def adopt(stream: trio.SocketStream) -> tuple[trio.SocketStream, socket.socket]:
    """`stream` as a stream over a standard socket that the caller holds too.

    trio keeps its socket's standard socket private; taking the descriptor
    over (detach) and wrapping it again gives both views of one socket.
    """
    trio_socket = stream.socket
    family, kind, proto = trio_socket.family, trio_socket.type, trio_socket.proto
    raw = socket.socket(family, kind, proto, fileno=trio_socket.detach())
    raw.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(raw)), raw


class FastSocket:
    """Reads and writes on one socket, waiting only when they would block."""

    def __init__(self, raw: socket.socket) -> None:
        self.raw = raw
        self._unyielded = 0
        # The last read took less than asked: the socket was drained, and
        # a read now would most likely find nothing. Between the tokens of a
        # stream RPH then goes to sleep at once, which is what lets the
        # client it just wrote to run.
        self._drained = False

    async def receive(self, size: int) -> bytes:
        """Up to `size` bytes; b"" at EOF."""
        await self._wait_if_drained()
        while True:
            try:
                data = self.raw.recv(size)
            except BlockingIOError:
                await self._wait_readable()
                continue
            except OSError as exc:
                raise self._translated(exc) from None
            self._drained = len(data) < size
            await self._yield_now_and_then()
            return data

    async def receive_into(self, buffer: memoryview) -> int:
        """Read into `buffer`; how many bytes, 0 at EOF."""
        await self._wait_if_drained()
        while True:
            try:
                read = self.raw.recv_into(buffer)
            except BlockingIOError:
                await self._wait_readable()
                continue
            except OSError as exc:
                raise self._translated(exc) from None
            self._drained = read < len(buffer)
            await self._yield_now_and_then()
            return read

    async def _wait_if_drained(self) -> None:
        if self._drained:
            await self._wait_readable()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    async def _wait_readable(self) -> None:
        self._unyielded = 0
        await trio.lowlevel.wait_readable(self.raw)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                try:
                    sent += self.raw.send(view[sent:])
                except BlockingIOError:
                    self._unyielded = 0
                    await trio.lowlevel.wait_writable(self.raw)
                except OSError as exc:
                    raise self._translated(exc) from None
        await self._yield_now_and_then()

    async def _yield_now_and_then(self) -> None:
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _translated(self, error: OSError) -> Exception:
        # A socket that RPH closed meanwhile has no descriptor any more.
        if self.raw.fileno() == -1:
            return trio.ClosedResourceError("the socket was closed")
        return trio.BrokenResourceError(f"the connection broke: {error}")


async def splice(source: FastSocket, sink: FastSocket, length: int) -> int:
    """Move `length` bytes from `source` to `sink` inside the kernel.

    Returns how many were moved: fewer if `source` ended or broke first.
    Raises SinkBroken if `sink` broke. Linux only (CAN_SPLICE).
    """
    steps = splice_steps(source.raw, sink.raw, length)
    try:
        wait = next(steps)
        while True:
            if wait is WAIT_READABLE:
                await trio.lowlevel.wait_readable(source.raw)
            elif wait is WAIT_WRITABLE:
                await trio.lowlevel.wait_writable(sink.raw)
            else:
                await source._yield_now_and_then()
            wait = steps.send(None)
    except StopIteration as done:
        moved: int = done.value
        return moved
    finally:
        steps.close()  # a cancelled wait leaves it unfinished: its pipe closes


# What `splice_steps` waits for before its next step.
WAIT_READABLE = "source readable"
WAIT_WRITABLE = "sink writable"
PIECE_MOVED = "a piece moved"


def splice_steps(
    source: socket.socket, sink: socket.socket, length: int
) -> Generator[str, None, int]:
    """`splice`'s work, for a task or a thread to drive: yields what it
    waits for (or that a piece moved), returns how many bytes moved."""
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    pipe_out, pipe_in = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            import fcntl  # POSIX only, as splice is: imported where it is used

            fcntl.fcntl(pipe_in, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        moved = 0
        while moved < length:
            try:
                piece = os.splice(
                    source.fileno(),
                    pipe_in,
                    min(PIPE_SIZE, length - moved),
                    flags=flags,
                )
            except BlockingIOError:
                yield WAIT_READABLE
                continue
            except OSError:
                break  # the source broke: the caller sees the body cut short
            if not piece:
                break  # EOF
            while piece:
                try:
                    sent = os.splice(pipe_out, sink.fileno(), piece, flags=flags)
                except BlockingIOError:
                    yield WAIT_WRITABLE
                    continue
                except OSError as exc:
                    raise SinkBroken(str(exc)) from None
                piece -= sent
                moved += sent
            yield PIECE_MOVED
        return moved
    finally:
        os.close(pipe_out)
        os.close(pipe_in)
