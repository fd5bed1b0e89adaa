"""One reader per client connection, across all of its requests.

RPH reads each client socket for the connection's whole life: request
bodies straight into one buffer, then whatever follows (the next request,
sent at once or later) into the connection's buffer. Every request on a
keep-alive connection gets its own answer, whatever came in which read.
"""

from __future__ import annotations

import hashlib

import orjson
import pytest
import trio
from support import app, connect, exchange, running_rph

from rph.net.client import ClientConnection
from rph.net.http import CONTINUE, read_request

# Every case holds whether a lane or the connection's task answers it.
pytestmark = pytest.mark.usefixtures("answered_by")

SIZES = (1, 64 * 1024, 3 * 1024 * 1024 + 7)


@pytest.mark.timeout(30)
async def test_uploads_one_after_another_on_one_connection_arrive_whole() -> None:
    async with running_rph([app()]) as rph:
        await rph.supervisor.preload("llm")
        sock = await connect(rph.port)
        async with sock:
            for size in (*SIZES, *SIZES):
                body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
                response = await exchange(sock, "POST", "/echo", body)
                echo = response.json()
                assert echo["body_length"] == size
                assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
            assert (await exchange(sock, "GET", "/v1/models")).status == 200


@pytest.mark.timeout(30)
async def test_requests_sent_at_once_are_answered_in_order() -> None:
    bodies = [b"a" * 70_000, b"b" * 10, b"c" * 2_000_000]
    raw = b"".join(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
        for body in bodies
    )
    async with running_rph([app()]) as rph:
        await rph.supervisor.preload("llm")
        sock = await connect(rph.port)
        async with sock:
            await sock.send_all(raw)
            received = b""
            with trio.fail_after(10):
                while len(answers := split_responses(received)) < len(bodies):
                    received += await sock.receive_some(65536)
    for body, answer in zip(bodies, answers, strict=True):
        echo = orjson.loads(answer)
        assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def split_responses(raw: bytes) -> list[bytes]:
    """The bodies of the complete Content-Length responses in `raw`."""
    bodies = []
    while (end := raw.find(b"\r\n\r\n")) >= 0:
        head = raw[:end].lower()
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        if len(raw) < end + 4 + length:
            break
        bodies.append(raw[end + 4 : end + 4 + length])
        raw = raw[end + 4 + length :]
    return bodies


async def test_a_chunked_body_read_during_the_100_continue_is_kept() -> None:
    # The connection's reader may take in the body while RPH is still
    # writing its 100 Continue; none of those bytes may be lost.
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"

    class BodyArrivesDuringSend(ClientConnection):
        async def send(self, data: bytes) -> None:
            assert data == CONTINUE
            self.buffer += body

    left, right = trio.socket.socketpair()
    async with trio.SocketStream(left):
        # The connection takes the socket over, and closes it.
        conn = BodyArrivesDuringSend(trio.SocketStream(right), "test")
        async with conn.stream:
            conn.buffer += (
                b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            request = await read_request(conn, lambda path: 1024)
    assert request.body == b"hello world"
