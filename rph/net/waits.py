"""Blocking waits on sockets, for the threads that relay (net/lane).

A thread waits on a few sockets at once, and on a stop socket that RPH
writes once when the thread must let go (its port stops serving, or the
task that runs it is cancelled): every wait then raises Stopped, so no
thread outlives what it serves. The sockets stay non-blocking, as
trio needs them; a thread waits here and then makes its call.
"""

from __future__ import annotations

import errno
import os
import select
import socket

import trio

from rph.net import fastio

# What a non-blocking connect says while the handshake goes on.
_CONNECTING = {
    errno.EINPROGRESS,
    errno.EWOULDBLOCK,
    errno.EAGAIN,
    getattr(errno, "WSAEWOULDBLOCK", errno.EWOULDBLOCK),
}


class Stopped(Exception):
    """The stop socket was written: the thread lets go at once."""


class Stalled(Exception):
    """A source brought nothing for as long as it was given."""


class StopSocket:
    """Written once when its owner stops; every thread it serves waits on it."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()

    def __repr__(self) -> str:
        return f"<StopSocket fd={self.reader.fileno()}>"

    async def stop_when_cancelled(self) -> None:
        """Sleep; write the stop once cancelled."""
        try:
            await trio.sleep_forever()
        finally:
            self._writer.send(b"!")

    def close(self) -> None:
        self.reader.close()
        self._writer.close()

    def wait(
        self,
        readers: list[socket.socket],
        timeout: float | None = None,
        writer: socket.socket | None = None,
    ) -> list[socket.socket]:
        """The readable sockets of `readers`, once one is readable or
        `writer` writable; [] on timeout. Raises Stopped."""
        ready = _ready([*readers, self.reader], writer, timeout)
        if self.reader in ready:
            raise Stopped
        return ready

    def open_watch(self, readers: list[socket.socket]) -> Watch:
        """A standing wait on `readers` and this stop socket; close it."""
        return Watch(self, readers)

    def connect(
        self,
        family: socket.AddressFamily,
        address: tuple[str, int] | tuple[str, int, int, int],
    ) -> socket.socket:
        """A new non-blocking connection; raises OSError if refused."""
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            error = sock.connect_ex(address)
            if error in _CONNECTING:
                self.wait([], writer=sock)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
        except BaseException:
            sock.close()
            raise
        return sock

    def splice(
        self,
        source: socket.socket,
        sink: socket.socket,
        length: int,
        stalled_after: float | None = None,
    ) -> int:
        """fastio.splice, driven by a thread: how many bytes moved.

        Raises fastio.SinkBroken, and Stalled if `source` brings nothing
        for `stalled_after` seconds.
        """
        steps = fastio.splice_steps(source, sink, length)
        try:
            wait = next(steps)
            while True:
                if wait is fastio.WAIT_READABLE:
                    if not self.wait([source], stalled_after):
                        raise Stalled
                elif wait is fastio.WAIT_WRITABLE:
                    self.wait([], writer=sink)
                wait = steps.send(None)
        except StopIteration as done:
            moved: int = done.value
            return moved
        finally:
            steps.close()


class Watch:
    """A standing wait on a few sockets and the stop socket, for a body.

    A token stream waits once a token: set up once for the whole body, the
    wait costs one system call a token (epoll on Linux) where a wait made
    afresh each time registers every socket again. Elsewhere it falls back
    to those fresh waits.
    """

    def __init__(self, stop: StopSocket, readers: list[socket.socket]) -> None:
        self._owner = stop
        self._stop = stop.reader
        self._readers = list(readers)
        self._by_fd = {sock.fileno(): sock for sock in readers}
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        if self._epoll is not None:
            try:
                for fd in (*self._by_fd, self._stop.fileno()):
                    self._epoll.register(fd, select.EPOLLIN)
            except BaseException:
                self._epoll.close()
                raise

    def __repr__(self) -> str:
        return f"<Watch fds={sorted(self._by_fd)}>"

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()

    def drop(self, sock: socket.socket) -> None:
        """Watch `sock` no more."""
        fd = sock.fileno()
        if self._by_fd.pop(fd, None) is not None:
            self._readers.remove(sock)
            if self._epoll is not None:
                self._epoll.unregister(fd)

    def wait(self) -> list[socket.socket]:
        """The readable sockets, once there is one. Raises Stopped."""
        if self._epoll is None:
            return self._owner.wait(self._readers)
        # An error or hang-up counts as readable: the read says which.
        by_fd = self._by_fd
        ready = [by_fd.get(fd, self._stop) for fd, _ in self._epoll.poll()]
        if self._stop in ready:
            raise Stopped
        return ready


if hasattr(select, "poll"):

    def _ready(
        readers: list[socket.socket],
        writer: socket.socket | None,
        timeout: float | None,
    ) -> list[socket.socket]:
        by_fd = {sock.fileno(): sock for sock in readers}
        masks = dict.fromkeys(by_fd, select.POLLIN)
        if writer is not None:
            fd = writer.fileno()
            masks[fd] = masks.get(fd, 0) | select.POLLOUT
        poller = select.poll()
        for fd, mask in masks.items():
            poller.register(fd, mask)
        milliseconds = None if timeout is None else max(0, int(timeout * 1000))
        # An error or hang-up counts as readable: the read says which.
        unwritable = ~select.POLLOUT
        return [
            by_fd[fd]
            for fd, events in poller.poll(milliseconds)
            if fd in by_fd and events & unwritable
        ]

else:  # Windows: select() takes sockets, and any number of them

    def _ready(
        readers: list[socket.socket],
        writer: socket.socket | None,
        timeout: float | None,
    ) -> list[socket.socket]:
        writers = [writer] if writer is not None else []
        readable, _, failed = select.select(readers, writers, readers, timeout)
        return list({*readable, *failed})
