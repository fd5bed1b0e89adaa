"""When either side fails or leaves: aborts, half-closes, broken backends.

A client that goes away must stop the backend's generation at once (the
stand-in counts aborted generations); a client that only half-closes still
gets its answer. A backend that fails before answering is a 502; one that
fails mid-stream leaves the client every byte it sent and a connection
that ends without a clean end. Passive requests (SillyTavern's abort) reach
the app that is generating and never start one.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import h11
import orjson
import pytest
import trio
from scripted import refusing_app, scripted_app
from support import (
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

from rph.config import AppConfig
from rph.net import lane, pump
from rph.proc.ondemand import State

# Every case holds whether a lane or the connection's task answers it.
pytestmark = pytest.mark.usefixtures("answered_by")

LONG = 10_000  # tokens: a generation that would outlast every test
POLL = 0.01  # seconds between looks at the stand-in's counters


async def backend_stats(config: AppConfig) -> dict[str, Any]:
    """The stand-in's own counters, asked directly."""
    response = await request(config.endpoint_port, "GET", "/stats")
    stats: dict[str, Any] = response.json()
    return stats


async def wait_for_stats(config: AppConfig, key: str, value: int) -> None:
    """Poll the stand-in until its counter `key` reaches `value`."""
    while True:
        if (await backend_stats(config))[key] >= value:
            return
        await trio.sleep(POLL)


def post(target: bytes, body: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    return head % (target, len(body)) + body


def generation(**fields: object) -> bytes:
    return orjson.dumps({"prompt": "hi", "max_tokens": LONG, **fields})


# -- clients that leave ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "wait_for"),
    [
        (generation(stream=True), "first token"),
        (generation(), "generation under way"),
        (generation(standin_delay=60), "prompt processing"),
    ],
)
@pytest.mark.parametrize("how", ["close", "reset"])
async def test_client_leaving_stops_the_generation(
    body: bytes, wait_for: str, how: str
) -> None:
    llm = app()
    async with running_rph([llm]) as rph:
        await rph.supervisor.preload("llm")
        sock = await connect(rph.port)
        await sock.send_all(post(b"/v1/completions", body))
        if wait_for == "first token":
            assert b"data: " in await sock.receive_some(65536)
        else:
            await wait_for_stats(llm, "in_flight", 1)
        if how == "reset":
            linger = struct.pack("ii", 1, 0)
            sock.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        await sock.aclose()

        with trio.fail_after(1):
            await wait_for_stats(llm, "aborted_streams", 1)
        await rph.supervisor.changes.wait_until(
            lambda: rph.supervisor.apps["llm"].in_flight == 0
        )


async def test_half_close_after_the_request_still_gets_the_answer() -> None:
    llm = app()
    async with running_rph([llm]) as rph:
        await rph.supervisor.preload("llm")
        sock = await connect(rph.port)
        async with sock:
            await sock.send_all(
                b"GET /download?bytes=300000 HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            await sock.send_eof()
            raw = await read_until_eof(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert len(body) == 300000


async def test_half_close_reaches_a_backend_that_answers_after_eof() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ngot eof!"
    script = f"""
    while conn.recv(65536):
        pass
    conn.sendall({answer!r})
    conn.close()
    """
    async with running_rph([scripted_app("llm", script)]) as rph:
        await rph.supervisor.preload("llm")
        sock = await connect(rph.port)
        async with sock:
            await sock.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await sock.send_eof()
            raw = await read_until_eof(sock)
    assert raw.endswith(b"\r\n\r\ngot eof!")


async def test_half_close_sent_with_the_request_waits_out_a_cold_start() -> None:
    async with running_rph([app()]) as rph:
        # Request and EOF leave together, before RPH reads either: a plain
        # blocking socket, so that no other task runs in between.
        plain = socket.create_connection(("127.0.0.1", rph.port))
        plain.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        plain.shutdown(socket.SHUT_WR)
        plain.setblocking(False)
        sock = trio.SocketStream(trio.socket.from_stdlib_socket(plain))
        async with sock:
            raw = await read_until_eof(sock)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b'"target":"/echo"' in raw


async def test_client_leaving_during_a_cold_start_never_reaches_the_app() -> None:
    port = free_port()
    llm = app(backend_port=port, cmdline=standin(port, "--load-delay", "1"))
    async with running_rph([llm]) as rph:
        state = rph.supervisor.apps["llm"]
        sock = await connect(rph.port)
        await sock.send_all(post(b"/v1/completions", generation()))
        await rph.supervisor.changes.wait_until(lambda: state.state is State.STARTING)
        await sock.aclose()
        await rph.supervisor.changes.wait_until(lambda: state.state is State.READY)
        stats = await backend_stats(llm)
        assert stats["requests"] == 1  # this one
        assert state.in_flight == 0


async def test_client_leaving_mid_body_sends_nothing_to_a_running_app() -> None:
    llm = app()
    async with running_rph([llm]) as rph:
        await rph.supervisor.preload("llm")
        sock = await connect(rph.port)
        async with sock:
            await sock.send_all(post(b"/echo", b"0123456789")[:-4])
            await sock.send_eof()
            assert await read_until_eof(sock) == b""
        assert (await backend_stats(llm))["requests"] == 1  # this one


@pytest.mark.parametrize("how", ["close", "reset", "half-close"])
async def test_client_leaving_a_silent_stream_closes_the_backend_connection(
    how: str,
) -> None:
    # The stream has begun, then the backend says nothing for a long while:
    # only RPH's own reaction can tell it the client left. The backend
    # reports on a socket of the test's own what it saw.
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    report_port = listener.getsockname()[1]
    started = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    script = f"""
        conn.sendall({started!r})
        conn.settimeout(60)
        try:
            seen = b"bytes" if conn.recv(1) else b"closed"
        except OSError:
            seen = b"closed"
        socket.create_connection(("127.0.0.1", {report_port})).sendall(seen)
    """
    async with running_rph([scripted_app("llm", script)]) as rph:
        # Ready, so that a lane answers when there are lanes: its wait
        # during a stream must watch the client too.
        await rph.supervisor.preload("llm")
        sock = await connect(rph.port)
        await sock.send_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_until(sock, b"hello\r\n")
        if how == "reset":
            linger = struct.pack("ii", 1, 0)
            sock.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        if how == "half-close":
            await sock.send_eof()  # passed on: the backend reads its end
        else:
            await sock.aclose()

        with trio.fail_after(5):
            report, _ = await listener.accept()
        with report, trio.fail_after(5):
            assert await report.recv(16) == b"closed"
        await sock.aclose()  # a second close changes nothing
    listener.close()


# -- backends that fail ------------------------------------------------------

AMBIGUOUS = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n"
)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(lambda: refusing_app("llm"), id="refused"),
        pytest.param(
            lambda: scripted_app(
                "llm",
                "conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,"
                " struct.pack('ii', 1, 0)); conn.close()",
            ),
            id="reset",
        ),
        pytest.param(lambda: scripted_app("llm", "conn.close()"), id="closed"),
        pytest.param(
            lambda: scripted_app("llm", f"conn.sendall({AMBIGUOUS!r})"),
            id="framed two ways",
        ),
        pytest.param(
            lambda: scripted_app("llm", "conn.sendall(b'SSH-2.0-OpenSSH\\r\\n\\r\\n')"),
            id="not HTTP",
        ),
    ],
)
async def test_backend_failing_before_answering_is_a_502(backend: Any) -> None:
    async with running_rph([backend()]) as rph:
        sock = await connect(rph.port)
        async with sock:
            response = await exchange(sock, "GET", "/v1/models")
            again = await exchange(sock, "GET", "/v1/models")  # still usable
    for answer in (response, again):
        assert answer.status == 502
        error = answer.json()["error"]
        assert error["code"] == "backend_failed"
        assert error["message"]


async def test_backend_dying_mid_stream_leaves_an_unfinished_body() -> None:
    sent = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    script = f"conn.sendall({sent!r}); time.sleep(0.2); os._exit(1)"
    async with running_rph([scripted_app("llm", script)]) as rph:
        sock = await connect(rph.port)
        async with sock:
            await sock.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await read_until_eof(sock) == sent


async def test_backend_silent_for_seconds_then_answering_is_waited_for() -> None:
    async with running_rph([app()]) as rph:
        body = orjson.dumps({"prompt": "hi", "max_tokens": 3, "standin_delay": 2.5})
        response = await request(rph.port, "POST", "/v1/completions", body)
    assert response.status == 200
    assert response.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    "script",
    [
        # More bytes than the response framed: they answer nothing.
        "conn.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nokJUNK')",
        # The same at the end of a body that came in pieces, as a stream does.
        "conn.sendall(b'HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
        "1\\r\\no\\r\\n'); time.sleep(0.05); conn.sendall(b'1\\r\\nk\\r\\n');"
        " time.sleep(0.05); conn.sendall(b'0\\r\\n\\r\\nJUNK')",
        # Keep-alive in words, then a close: the next request needs a new one.
        "conn.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok');"
        " conn.close()",
    ],
    ids=[
        "bytes after the response",
        "bytes after a streamed response",
        "closed after the response",
    ],
)
@pytest.mark.parametrize(
    ("lanes", "threads"),
    [(64, 0), (0, 0), (0, 2)],
    ids=["lane relays", "task relays", "pump thread relays"],
)
async def test_backend_connection_unfit_for_reuse_is_replaced(
    script: str, lanes: int, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lane, "LANE_THREADS", lanes)
    monkeypatch.setattr(pump, "MAX_THREADS", threads)
    # One parser for the three answers, as a client keeps: a byte too many
    # would be read as the start of the next one.
    client = h11.Connection(h11.CLIENT)
    get = h11.Request(method="GET", target="/", headers=[("Host", "x")])
    async with running_rph([scripted_app("llm", script)]) as rph:
        sock = await connect(rph.port)
        async with sock:
            for _ in range(3):
                await sock.send_all(client.send(get) + client.send(h11.EndOfMessage()))
                response = await read_response(sock, client)
                assert (response.status, response.body) == (200, b"ok")
                client.start_next_cycle()


# -- passive paths -----------------------------------------------------------

ABORT = "/api/extra/abort"


def kobold_pair() -> tuple[AppConfig, AppConfig]:
    """Two apps on one port and path; only the first takes "summarize"."""
    summarizer = app("summarizer", body_regex="summarize", passive_paths=(ABORT,))
    chat = app("chat", passive_paths=(ABORT,))
    return summarizer, chat


async def test_passive_request_reaches_the_app_that_is_generating() -> None:
    summarizer, chat = kobold_pair()
    async with running_rph([summarizer, chat]) as rph:
        await rph.supervisor.preload("chat")
        await rph.supervisor.preload("summarizer")
        body = orjson.dumps({"prompt": "summarize", "max_length": LONG})
        sock = await connect(rph.port)
        async with sock:
            await sock.send_all(post(b"/api/extra/generate/stream", body))
            assert b"event: message" in await sock.receive_some(65536)
            aborted = await request(
                rph.port, "POST", ABORT, headers=[("Content-Length", "0")]
            )
            assert aborted.json() == {"success": True}
            streamed = await read_until_eof(sock)
        assert streamed.count(b"event: message") < LONG
        assert (await backend_stats(summarizer))["aborted_streams"] == 1
        assert (await backend_stats(chat))["requests"] == 1  # the stats request


async def test_passive_request_with_nothing_running_is_a_503() -> None:
    summarizer, chat = kobold_pair()
    async with running_rph([summarizer, chat]) as rph:
        response = await request(
            rph.port, "POST", ABORT, headers=[("Content-Length", "0")]
        )
        assert response.status == 503
        assert response.json()["error"]["code"] == "app_not_running"
        assert [a.starts for a in rph.supervisor.apps.values()] == [0, 0]
