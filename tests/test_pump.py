"""A stream's rest relayed by a thread: to its end, and stopped when told.

The thread (rph/net/pump) sits between two real socket pairs here: the
test writes as a backend on one and reads as a client on the other. What
matters is what a client would see (the body to its end and not a byte
more), that a caller cancelled while the backend is silent gets back at
once with its thread free again, and that a client gone is reported.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

from rph.net import pump
from rph.net.fastio import SinkBroken
from rph.net.framing import BodyEnd, parse_response_head

CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
UNTIL_CLOSE = b"HTTP/1.0 200 OK\r\n\r\n"

# Bounds every wait on the thread: a stop that did not work hangs, and
# fails the test here instead.
PATIENCE = 5


@contextmanager
def sockets() -> Iterator[tuple[socket.socket, ...]]:
    """(backend, source, sink, client): two connected pairs, RPH's side
    non-blocking as trio keeps it."""
    backend, source = socket.socketpair()
    sink, client = socket.socketpair()
    for own in (source, sink):
        own.setblocking(False)
    try:
        yield backend, source, sink, client
    finally:
        for each in (backend, source, sink, client):
            each.close()


def body_of(head: bytes) -> BodyEnd:
    return BodyEnd(parse_response_head(head, b"POST"))


def read_all(client: socket.socket) -> bytes:
    client.setblocking(False)
    received = b""
    while True:
        try:
            piece = client.recv(65536)
        except BlockingIOError:
            return received
        if not piece:
            return received
        received += piece


async def test_a_chunked_stream_is_relayed_to_its_end_and_no_further() -> None:
    body = body_of(CHUNKED)
    with sockets() as (backend, source, sink, client):
        backend.sendall(b"2\r\nhi\r\n" + b"0\r\n\r\nJUNK")
        with trio.fail_after(PATIENCE):
            ended = await pump.relay_rest(source, sink, body)

        assert ended == (True, False)  # the end came, and bytes after it
        assert read_all(client) == b"2\r\nhi\r\n0\r\n\r\n"
        assert body.relayed == len(b"2\r\nhi\r\n0\r\n\r\n")


async def test_a_close_delimited_stream_ends_when_the_backend_closes() -> None:
    body = body_of(UNTIL_CLOSE)
    with sockets() as (backend, source, sink, client):
        backend.sendall(b"data: one\n\n")
        backend.shutdown(socket.SHUT_WR)
        with trio.fail_after(PATIENCE):
            ended = await pump.relay_rest(source, sink, body)

        assert ended == (True, True)
        assert read_all(client) == b"data: one\n\n"


async def test_cancelling_while_the_backend_is_silent_frees_the_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pump, "MAX_THREADS", 1)
    body = body_of(CHUNKED)
    with sockets() as (backend, source, sink, client):
        backend.sendall(b"2\r\nhi\r\n")  # then nothing: a long prompt, say

        with trio.fail_after(PATIENCE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump.relay_rest, source, sink, body)
                await trio.lowlevel.wait_readable(client)  # the thread relays
                assert not pump.has_room()
                nursery.cancel_scope.cancel()

        assert pump.has_room()
        assert read_all(client) == b"2\r\nhi\r\n"
        assert body.relayed == len(b"2\r\nhi\r\n")


async def test_a_client_gone_is_reported_as_a_broken_sink() -> None:
    body = body_of(CHUNKED)
    with sockets() as (backend, source, sink, client):
        client.close()
        backend.sendall(b"2\r\nhi\r\n")
        with trio.fail_after(PATIENCE), pytest.raises(SinkBroken):
            await pump.relay_rest(source, sink, body)
