"""A bare byte forwarder in Python: the floor for any relay written in it.

`make bench` measures it beside RPH, as a third side, to tell the cost of
an extra hop through a Python process from the cost of what RPH does on
that hop. It knows no HTTP: it passes bytes between each client and a
backend connection, a thread per direction, each blocked in `recv` until
bytes come, the least a Python program can do per byte that passes.

Like RPH, which keeps backend connections for the next client, it spares
a fresh client the backend's TCP handshake: one backend connection is
kept open ahead, and a background thread opens the next as soon as a
client takes it. Clients that come faster than that (many at once) open
their own. It reads no request, routes nothing, and never tells a client
anything.

    python benchmarks/forwarder.py LISTEN_PORT BACKEND_PORT
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import sys
import threading
import time

HOST = "127.0.0.1"
# Below glibc malloc's mmap threshold (128 KiB by default), so that the
# buffer of each read comes from the heap and not from a fresh mapping.
READ_SIZE = 64 * 1024
# The forwarder starts before its backend does; until then, try again this
# often.
CONNECT_RETRY = 0.05


def open_backend(port: int) -> socket.socket:
    backend = socket.create_connection((HOST, port))
    backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return backend


class Spare:
    """One backend connection, opened before the client that takes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._ready: queue.Queue[socket.socket] = queue.Queue(maxsize=1)
        threading.Thread(target=self._keep_one_ready, daemon=True).start()

    def _keep_one_ready(self) -> None:
        while True:
            try:
                backend = open_backend(self.port)
            except OSError:
                time.sleep(CONNECT_RETRY)
                continue
            self._ready.put(backend)
            # Until a client takes it: the next connection is opened right
            # after that, and not before, so one at most waits.
            self._ready.join()

    def take(self) -> socket.socket:
        """The spare if it is ready and still open, else a new connection;
        raises OSError if the backend refuses that."""
        try:
            backend = self._ready.get_nowait()
        except queue.Empty:
            return open_backend(self.port)
        self._ready.task_done()
        if _unusable(backend):
            backend.close()
            return open_backend(self.port)
        return backend


def _unusable(backend: socket.socket) -> bool:
    """Whether a backend connection that should be idle has anything to read:
    its end (a backend that restarted leaves its old connections so), or
    bytes no request asked for. Either way it is no use to a client."""
    readable, _, _ = select.select([backend], [], [], 0)
    return bool(readable)


def forward(source: socket.socket, sink: socket.socket) -> None:
    """Pass what `source` sends on to `sink`, then the end of it."""
    with contextlib.suppress(OSError):
        while data := source.recv(READ_SIZE):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def serve(client: socket.socket, spare: Spare) -> None:
    try:
        backend = spare.take()
    except OSError:
        client.close()  # all a client learns of a backend that refused
        return
    with client, backend:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answers = threading.Thread(target=forward, args=(backend, client))
        answers.start()
        forward(client, backend)
        answers.join()


def main() -> None:
    listen_port, backend_port = int(sys.argv[1]), int(sys.argv[2])
    spare = Spare(backend_port)
    with socket.create_server((HOST, listen_port), backlog=1024) as server:
        while True:
            client, _ = server.accept()
            threading.Thread(target=serve, args=(client, spare), daemon=True).start()


if __name__ == "__main__":
    main()
