"""A bare byte forwarder in Python: the floor for any relay written in it.

`make bench` measures it beside RPH, as a third side, to tell the cost of
an extra hop through a Python process from the cost of what RPH does on
that hop. It knows no HTTP: for each client connection it opens one to the
backend and passes bytes both ways, a thread per direction, each blocked
in `recv` until bytes come, the least a Python program can do per byte
that passes. It keeps no backend connection for the next client, reads no
request, routes nothing, and never tells a client anything.

    python benchmarks/forwarder.py LISTEN_PORT BACKEND_PORT
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading

HOST = "127.0.0.1"
# Below glibc malloc's mmap threshold (128 KiB by default), so that the
# buffer of each read comes from the heap and not from a fresh mapping.
READ_SIZE = 64 * 1024


def forward(source: socket.socket, sink: socket.socket) -> None:
    """Pass what `source` sends on to `sink`, then the end of it."""
    with contextlib.suppress(OSError):
        while data := source.recv(READ_SIZE):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def serve(client: socket.socket, backend_port: int) -> None:
    try:
        backend = socket.create_connection((HOST, backend_port))
    except OSError:
        client.close()  # all a client learns of a backend that refused
        return
    with client, backend:
        for sock in (client, backend):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answers = threading.Thread(target=forward, args=(backend, client))
        answers.start()
        forward(client, backend)
        answers.join()


def main() -> None:
    listen_port, backend_port = int(sys.argv[1]), int(sys.argv[2])
    with socket.create_server((HOST, listen_port), backlog=1024) as server:
        while True:
            client, _ = server.accept()
            threading.Thread(
                target=serve, args=(client, backend_port), daemon=True
            ).start()


if __name__ == "__main__":
    main()
