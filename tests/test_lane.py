"""Lanes: a connection's plain requests answered by a thread of its own.

What a client notices is only that nothing changes: requests that a lane
cannot answer go to the connection's task in between, in order, on the same
connection, also after a silence that gave the lane back; RPH stops at
once under a lane that waits; the app still stops when idle, and a
conflicting app still gets its turn after a stream that a lane relayed
(test_conflicts).
"""

from __future__ import annotations

import hashlib
import socket
from typing import Any

import pytest
import trio
from scripted import scripted_app
from support import (
    app,
    connect,
    exchange,
    read_until,
    read_until_eof,
    request,
    running_rph,
    status_of,
)

from rph.net import client, http, lane, laneio, waits
from rph.proc.ondemand import State

STREAM = b'{"prompt": "hi", "max_tokens": 5, "stream": true}'


@pytest.mark.timeout(30)
async def test_plain_and_other_requests_alternate_on_one_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answered_in_lanes = 0
    answer = lane.Lane._answer

    def counting_answer(self: lane.Lane, *args: Any) -> bool:
        nonlocal answered_in_lanes
        answered_in_lanes += 1
        return answer(self, *args)

    monkeypatch.setattr(lane.Lane, "_answer", counting_answer)
    async with running_rph([app()]) as rph:
        sock = await connect(rph.port)
        async with sock:
            # Cold: the task waits for the start; the next ones are plain.
            first = await exchange(sock, "POST", "/v1/completions", STREAM)
            assert first.status == 200
            assert first.body.endswith(b"data: [DONE]\n\n")
            models = await exchange(sock, "GET", "/v1/models")
            assert models.status == 200
            # A control endpoint, a chunked upload and an Expect, each
            # answered by the task, then plain requests again.
            status = await exchange(sock, "GET", "/rph/status")
            assert status.json()["apps"][0]["state"] == "ready"
            chunked = await exchange(
                sock,
                "POST",
                "/v1/completions",
                STREAM,
                headers=[("Transfer-Encoding", "chunked")],
            )
            assert chunked.body.endswith(b"data: [DONE]\n\n")
            expecting = await exchange(
                sock,
                "POST",
                "/v1/completions",
                STREAM,
                headers=[("Expect", "100-continue")],
            )
            assert expecting.body.endswith(b"data: [DONE]\n\n")
            again = await exchange(sock, "GET", "/v1/models")
            assert again.body == models.body
    # The two plain requests to a ready app, and those alone.
    assert answered_in_lanes == 2


@pytest.mark.timeout(30)
async def test_connections_beyond_the_lanes_are_answered_by_their_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lane, "LANE_THREADS", 1)
    async with running_rph([app()]) as rph:
        await rph.supervisor.preload("llm")
        first, second = await connect(rph.port), await connect(rph.port)
        async with first, second:
            # The first connection holds the only lane between its requests.
            answers = [await exchange(first, "GET", "/v1/models")]
            for _ in range(3):
                answers.append(await exchange(second, "GET", "/v1/models"))
                answers.append(await exchange(first, "GET", "/v1/models"))
        assert [answer.status for answer in answers] == [200] * 7


@pytest.mark.timeout(20)
async def test_rph_stops_at_once_under_a_lane_waiting_for_a_silent_backend() -> None:
    silent = scripted_app("llm", "time.sleep(600)")
    # Leaving the block stops RPH; its backend ends on the polite signal.
    with trio.fail_after(10):
        async with running_rph([silent]) as rph:
            await rph.supervisor.preload("llm")
            sock = await connect(rph.port)
            await sock.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            llm = rph.supervisor.apps["llm"]
            await rph.supervisor.changes.wait_until(lambda: llm.in_flight == 1)
        await sock.aclose()


async def test_rph_stops_at_once_under_a_lane_in_a_stream_gone_silent() -> None:
    # A stream whose backend stalls after its first token: the lane waits
    # in the stream's standing wait, which must hear the stop too.
    stalled = scripted_app(
        "llm",
        "conn.sendall(b'HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
        "5\\r\\nfirst\\r\\n'); time.sleep(600)",
    )
    with trio.fail_after(10):
        async with running_rph([stalled]) as rph:
            await rph.supervisor.preload("llm")
            sock = await connect(rph.port)
            await sock.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_until(sock, b"first\r\n")
        # Cut short: the client never got the chunk that ends the body.
        assert not (await read_until_eof(sock)).endswith(b"0\r\n\r\n")
        await sock.aclose()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("client_sends", ["its end", "more than a full buffer"])
async def test_a_stream_gone_silent_is_waited_on_not_spun_on(
    client_sends: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client that half-closes, or pipelines more than the lane may hold,
    # while the stream is silent: the lane takes what it may once and then
    # waits for the backend alone, rather than waking again and again on a
    # client it does not read.
    wakes = 0
    wait = waits.Watch.wait

    def counting_wait(self: waits.Watch) -> list[socket.socket]:
        nonlocal wakes
        wakes += 1
        return wait(self)

    monkeypatch.setattr(waits.Watch, "wait", counting_wait)
    # Full after one read, with bytes left unread in the socket.
    monkeypatch.setattr(laneio, "PIPELINE_BUFFER_LIMIT", 16)
    stalled = scripted_app(
        "llm",
        "conn.sendall(b'HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
        "5\\r\\nfirst\\r\\n'); time.sleep(60)",
    )
    async with running_rph([stalled]) as rph:
        await rph.supervisor.preload("llm")
        sock = await connect(rph.port)
        async with sock:
            await sock.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_until(sock, b"first\r\n")
            if client_sends == "its end":
                await sock.send_eof()
            else:
                # More than the socket's buffers hold while RPH reads no
                # more: the send is cut short, with bytes left unread.
                with trio.move_on_after(1):
                    await sock.send_all(b"G" * (4 * client.READ_SIZE))
            # The backend stays silent; a lane spinning on the client would
            # wake thousands of times in this while.
            await trio.sleep(0.5)
            assert wakes <= 3


@pytest.mark.timeout(20)
async def test_an_app_stops_when_idle_after_requests_answered_by_lanes() -> None:
    async with running_rph([app(timeout=0.5)]) as rph:
        llm = rph.supervisor.apps["llm"]
        await rph.supervisor.preload("llm")
        # A stream longer than the idle timeout: the idle watch finds it in
        # flight, and waits to hear of its end from the lane.
        long_stream = b'{"prompt": "hi", "max_tokens": 100, "stream": true}'
        response = await request(rph.port, "POST", "/v1/completions", long_stream)
        assert response.body.endswith(b"data: [DONE]\n\n")
        with trio.fail_after(5):
            await rph.supervisor.changes.wait_until(lambda: llm.state is State.STOPPED)


@pytest.mark.timeout(20)
async def test_a_connection_silent_past_its_lane_is_still_answered_then_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lane, "LANE_IDLE", 0.1)
    monkeypatch.setattr(http, "IDLE_DEADLINE", 1.0)
    async with running_rph([app()]) as rph:
        await rph.supervisor.preload("llm")
        sock = await connect(rph.port)
        async with sock:
            assert (await exchange(sock, "GET", "/v1/models")).status == 200
            # Silent past LANE_IDLE: the lane gave the connection back.
            await trio.sleep(0.3)
            assert (await exchange(sock, "GET", "/v1/models")).status == 200
            # Silent for IDLE_DEADLINE: closed without a word.
            with trio.fail_after(5):
                assert await sock.receive_some(1024) == b""


@pytest.mark.timeout(20)
async def test_a_body_relayed_as_it_comes_then_stalling_gets_408(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http, "BODY_IDLE_DEADLINE", 0.3)
    async with running_rph([app()]) as rph:
        await rph.supervisor.preload("llm")
        sock = await connect(rph.port)
        async with sock:
            # No route reads the body: its first half is already on its way
            # to the backend when the client stops sending.
            head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 400000\r\n\r\n"
            await sock.send_all(head + b"x" * 200_000)
            answer = await read_until_eof(sock)
        assert status_of(answer) == 408
        assert b"Connection: close" in answer
        # The backend's half-read connection was dropped, not reused.
        body = b"y" * 100_000
        response = await request(rph.port, "POST", "/echo", body)
        assert response.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
