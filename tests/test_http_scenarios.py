"""RPH is invisible to HTTP clients: keep-alive, framing, Expect, upgrades.

Each test talks to the stand-in backend (or a scripted one) through RPH the
way a real client does and checks what that client would notice: every
response complete and in order, the connection kept or closed as the
response says, the head the backend received, websocket frames echoed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import h11
import orjson
import pytest
import trio
from scripted import scripted_app
from support import (
    Response,
    app,
    connect,
    exchange,
    free_port,
    read_response,
    read_until,
    read_until_eof,
    request,
    running_rph,
    standin,
)

from rph.net import http as rph_http
from rph.net import lane, pump

# Every case holds whether a lane or the connection's task answers it.
pytestmark = pytest.mark.usefixtures("answered_by")

Headers = Sequence[tuple[str, str]]


def parse_responses(raw: bytes, methods: Sequence[str]) -> list[Response]:
    """The responses in `raw`, one per request method, as a client reads them."""
    client = h11.Connection(h11.CLIENT)
    client.receive_data(raw)
    responses = []
    for method in methods:
        if client.our_state is h11.DONE:
            client.start_next_cycle()
        headers = [("Host", "x")]
        client.send(h11.Request(method=method, target="/", headers=headers))
        client.send(h11.EndOfMessage())
        response = None
        while True:
            event = client.next_event()
            if isinstance(event, h11.Response):
                items = list(event.headers.raw_items())
                response = Response(event.status_code, event.http_version, items)
            elif isinstance(event, h11.Data):
                assert response is not None
                response.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                responses.append(response)
                break
            else:
                assert not isinstance(event, h11.ConnectionClosed | type(h11.NEED_DATA))
    return responses


def completion(model: str = "", **fields: object) -> bytes:
    return orjson.dumps({"prompt": "hi", "max_tokens": 2, "model": model, **fields})


# -- keep-alive and pipelining ----------------------------------------------


async def test_a_stream_with_no_relay_thread_free_arrives_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One relay thread, held by a long stream; a second stream meanwhile is
    # relayed by its own task, and its client cannot tell. (Connections
    # answered by their tasks, not lanes, relay streams through the pump.)
    monkeypatch.setattr(lane, "LANE_THREADS", 0)
    monkeypatch.setattr(pump, "MAX_THREADS", 1)
    threads_used = 0
    thread_took_one = trio.Event()
    pump_in_a_thread = pump._pump

    def counting_pump(*args: Any) -> tuple[bool, bool]:
        nonlocal threads_used
        threads_used += 1
        trio.from_thread.run_sync(thread_took_one.set)
        return pump_in_a_thread(*args)

    monkeypatch.setattr(pump, "_pump", counting_pump)
    tokens = 20
    async with running_rph([app()]) as rph:
        await rph.supervisor.preload("llm")
        long_stream = await connect(rph.port)
        async with long_stream:
            body = completion(stream=True, max_tokens=100_000)
            head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
            length = b"Content-Length: %d\r\n\r\n" % len(body)
            await long_stream.send_all(head + length + body)
            with trio.fail_after(5):
                await thread_took_one.wait()

            body = completion(stream=True, max_tokens=tokens)
            response = await request(rph.port, "POST", "/v1/completions", body)

            assert threads_used == 1
    assert response.status == 200
    events = response.body.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert len(events) == tokens + 3  # the tokens, the finish, [DONE], ""


async def test_one_connection_reaches_two_apps_in_turn() -> None:
    alpha_port, beta_port = free_port(), free_port()
    alpha = app(
        "alpha",
        backend_port=alpha_port,
        cmdline=standin(alpha_port, "--model", "alpha", "--token-interval", "0"),
        body_regex="alpha",
    )
    beta = app(
        "beta",
        backend_port=beta_port,
        cmdline=standin(beta_port, "--model", "beta", "--token-interval", "0"),
    )
    async with running_rph([alpha, beta]) as rph:
        sock = await connect(rph.port)
        async with sock:
            for model in ("alpha", "beta", "alpha"):
                response = await request(
                    rph.port, "POST", "/v1/completions", completion(model), stream=sock
                )
                assert response.status == 200
                assert response.json()["model"] == model
        assert rph.supervisor.apps["alpha"].starts == 1


async def test_backend_connection_is_reused_between_requests() -> None:
    llm = app()
    async with running_rph([llm]) as rph:
        await rph.supervisor.preload("llm")
        stats = await request(llm.endpoint_port, "GET", "/stats")
        before = stats.json()["connections"]
        sock = await connect(rph.port)
        async with sock:
            for _ in range(3):
                assert (await exchange(sock, "GET", "/v1/models")).status == 200
        stats = await request(llm.endpoint_port, "GET", "/stats")
    assert stats.json()["connections"] == before + 2  # RPH's one, and this


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with running_rph([app()]) as rph:
        sock = await connect(rph.port)
        async with sock:
            await sock.send_all(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                b"\r\n%s"
                % (len(completion()), completion())
                + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
                + b"GET /echo?n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            raw = await read_until_eof(sock)
    first, second, third = parse_responses(raw, ["POST", "GET", "GET"])
    assert first.json()["object"] == "text_completion"
    assert second.json()["object"] == "list"
    assert third.json()["target"] == "/echo?n=3"
    assert third.header(b"connection") == b"close"


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/api/v1/model", b""),  # HTTP/1.0 with a Content-Length
        ("/api/extra/generate/stream", b'{"max_length": 3}'),  # until close
    ],
)
async def test_a_response_that_ends_the_connection_says_so(
    target: str, body: bytes
) -> None:
    async with running_rph([app()]) as rph:
        sock = await connect(rph.port)
        async with sock:
            method = "POST" if body else "GET"
            length = [("Content-Length", str(len(body)))] if body else []
            response = await exchange(sock, method, target, body, length)
            rest = await read_until_eof(sock)
    assert response.status == 200
    assert response.http_version == b"1.0"
    # KoboldCpp's stream head says keep-alive although it closes: a client
    # that believed it would send its next request into a closed socket.
    connection = (response.header(b"connection") or b"").lower()
    assert connection in (b"", b"close")
    assert rest == b""
    if body:
        assert response.body.count(b"event: message") == 3


async def test_client_asking_to_close_is_told_the_connection_closes() -> None:
    async with running_rph([app()]) as rph:
        response = await request(
            rph.port, "GET", "/v1/models", headers=[("Connection", "close")]
        )
        assert response.status == 200
        assert response.header(b"connection") == b"close"


async def test_silent_keep_alive_connection_is_closed_without_an_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rph_http, "IDLE_DEADLINE", 0.2)
    async with running_rph([app()]) as rph:
        sock = await connect(rph.port)
        async with sock:
            assert (
                await request(rph.port, "GET", "/v1/models", stream=sock)
            ).status == 200
            assert await read_until_eof(sock) == b""


async def test_trickling_head_gets_408_while_others_are_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rph_http, "HEAD_DEADLINE", 1.5)
    async with running_rph([app()]) as rph:
        await rph.supervisor.preload("llm")
        slow_answer = b""

        async def trickle(sock: trio.SocketStream) -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                while True:
                    await sock.send_all(b"a")
                    await trio.sleep(0.05)

        async def slow_client() -> None:
            nonlocal slow_answer
            sock = await connect(rph.port)
            async with sock, trio.open_nursery() as nursery:
                await sock.send_all(b"GET /v1/models HTTP/1.1\r\nX-Slow: ")
                nursery.start_soon(trickle, sock)
                slow_answer = await read_until_eof(sock)
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_client)
            response = await request(rph.port, "GET", "/v1/models")
            assert response.status == 200
            assert slow_answer == b""  # the slow client is still trickling
        assert slow_answer.startswith(b"HTTP/1.1 408 ")


# -- bodies -----------------------------------------------------------------


async def test_upload_with_expect_gets_100_continue_at_once() -> None:
    body = os.urandom(2 * 1024 * 1024)
    async with running_rph([app()]) as rph:
        sock = await connect(rph.port)
        async with sock:
            await sock.send_all(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                b"Expect: 100-continue\r\n\r\n" % len(body)
            )
            # curl waits one second for the 100, then sends the body anyway.
            with trio.move_on_after(1):
                interim = await sock.receive_some(65536)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            await sock.send_all(body)
            client = h11.Connection(h11.CLIENT)
            client.send(h11.Request(method="POST", target="/", headers=[("Host", "x")]))
            echo = (await read_response(sock, client)).json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert "expect" not in {name.lower() for name, _ in echo["headers"]}


async def test_chunked_upload_arrives_with_a_content_length() -> None:
    pieces = [b"x" * 1000, b"y" * 10, b"z" * 70000]
    body = b"".join(pieces)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    async with running_rph([app()]) as rph:
        sock = await connect(rph.port)
        async with sock:
            await sock.send_all(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n" + chunks
            )
            (response,) = parse_responses(await read_until_eof(sock), ["POST"])
    echo = response.json()
    headers = {name.lower(): value for name, value in echo["headers"]}
    assert headers["content-length"] == str(len(body))
    assert "transfer-encoding" not in headers
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


# -- the forwarded head ------------------------------------------------------


async def test_forwarded_head_keeps_everything_but_hop_by_hop_headers() -> None:
    sent: Headers = [
        ("Host", "127.0.0.1:5001"),
        ("x-lower", "1"),
        ("X-Dup", "a"),
        ("Connection", "keep-alive, X-Private, X-Forwarded-For"),
        ("X-Private", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Proxy-Connection", "keep-alive"),
        ("Upgrade", "h2c"),
        ("X-Forwarded-For", "10.9.9.9"),
        ("X-Dup", "b"),
        ("Content-Type", "application/json"),
    ]
    async with running_rph([app()]) as rph:
        response = await request(rph.port, "POST", "/echo?q=1&q=2", b"{}", sent)
    echo = response.json()
    assert echo["method"] == "POST"
    assert echo["target"] == "/echo?q=1&q=2"
    assert [tuple(pair) for pair in echo["headers"]] == [
        ("Host", "127.0.0.1:5001"),
        ("x-lower", "1"),
        ("X-Dup", "a"),
        ("X-Dup", "b"),
        ("Content-Type", "application/json"),
        ("Content-Length", "2"),
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "127.0.0.1:5001"),
    ]


async def test_upgrade_request_keeps_upgrade_and_connection() -> None:
    headers = [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    async with running_rph([app()]) as rph:
        echo = (await request(rph.port, "GET", "/echo", headers=headers)).json()
    forwarded = [tuple(pair) for pair in echo["headers"]]
    assert ("Upgrade", "websocket") in forwarded
    assert ("Connection", "upgrade") in forwarded


async def test_http10_client_gets_no_chunks() -> None:
    async with running_rph([app()]) as rph:
        sock = await connect(rph.port)
        async with sock:
            await sock.send_all(
                b"GET /download?bytes=100000&chunked=1 HTTP/1.0\r\n\r\n"
            )
            raw = await read_until_eof(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower()
    assert len(body) == 100000


# -- websockets ---------------------------------------------------------------


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, final websocket frame as a client sends it (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


async def test_websocket_echoes_through_the_tunnel() -> None:
    async with running_rph([app()]) as rph:
        sock = await connect(rph.port)
        async with sock:
            await sock.send_all(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            received = b""
            while b"\r\n\r\n" not in received:
                received += await sock.receive_some(65536)
            head, _, received = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head

            await sock.send_all(client_frame(0x1, b"hello"))
            while len(received) < 7:
                received += await sock.receive_some(65536)
            assert received == b"\x81\x05hello"
            assert rph.supervisor.apps["llm"].in_flight == 1  # held open

            await sock.send_all(client_frame(0x8, b"\x03\xe8"))
            assert await read_until_eof(sock) == b"\x88\x02\x03\xe8"
        await rph.supervisor.changes.wait_until(
            lambda: rph.supervisor.apps["llm"].in_flight == 0
        )


# -- bodiless responses --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("HEAD", "/", 200),
        ("HEAD", "/download?bytes=5000", 200),
        ("HEAD", "/download?bytes=5000&chunked=1", 200),
        ("GET", "/status/204", 204),
        ("GET", "/status/304", 304),
    ],
)
async def test_bodiless_response_then_get_on_one_connection(
    method: str, target: str, status: int
) -> None:
    async with running_rph([app(path="/")]) as rph:
        sock = await connect(rph.port)
        async with sock:
            first = await exchange(sock, method, target)
            second = await exchange(sock, "GET", "/")
    assert (first.status, first.body) == (status, b"")
    assert (second.status, second.body) == (200, b"standin ok")


async def test_head_answered_by_rph_itself_has_no_body() -> None:
    async with running_rph([app(path="/v1")]) as rph:
        sock = await connect(rph.port)
        async with sock:
            first = await exchange(sock, "HEAD", "/elsewhere")
            second = await exchange(sock, "GET", "/v1/models")
    assert first.status == 404
    assert int(first.header(b"content-length") or 0) > 0
    assert first.body == b""
    assert second.json()["object"] == "list"


async def test_informational_responses_reach_http11_clients_only() -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    # Closed after each answer: the scripted backend never reads a kept
    # connection again, where a real one would (and RPH's pool would use it).
    backend = scripted_app("hints", f"conn.sendall({hints + final!r})\nconn.close()")
    async with running_rph([backend]) as rph:
        for version, expected in ((b"1.1", hints + final), (b"1.0", final)):
            sock = await connect(rph.port)
            async with sock:
                await sock.send_all(b"GET / HTTP/%s\r\nHost: x\r\n\r\n" % version)
                received = await read_until(sock, b"ok")
            assert received.replace(b"Connection: close\r\n", b"") == expected
