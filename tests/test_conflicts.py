"""Conflicting apps take turns without cutting a stream or thrashing.

Two stand-in backends on one RPH port, told apart by the model named in
the body, conflict (they would not both fit on the GPU). What a user
notices: a stream is never cut by a swap, requests sent together are
served in batches, and a request abandoned while it waited changes nothing.
"""

from __future__ import annotations

import orjson
import pytest
import trio
from support import Response, app, connect, request, running_rph, standin

from rph.config import AppConfig
from rph.proc import admission
from rph.proc.ondemand import State

# Fast enough that a test takes a second, slow enough that a stream is
# surely still open while the other app's request arrives.
TOKEN_INTERVAL = 0.05


def conflicting_pair(tokens: int = 2, load_delay: float = 0) -> list[AppConfig]:
    """Apps "a" and "b" on one port, chosen by `"model": "a"` or `"b"`."""
    pair = []
    for name, rival in (("a", "b"), ("b", "a")):
        base = app(name)
        pair.append(
            app(
                name,
                backend_port=base.endpoint_port,
                cmdline=standin(
                    base.endpoint_port,
                    "--model",
                    name,
                    "--token-interval",
                    str(TOKEN_INTERVAL),
                    "--tokens",
                    str(tokens),
                    "--load-delay",
                    str(load_delay),
                ),
                body_regex=f'"model": *"{name}"',
                # Named on one side only: conflicts hold both ways.
                conflicts_with=(rival,) if name == "a" else (),
            )
        )
    return pair


def completion(model: str, tokens: int) -> bytes:
    return orjson.dumps({"model": model, "prompt": "hi", "max_tokens": tokens})


def stream(model: str, tokens: int) -> bytes:
    body = {"model": model, "prompt": "hi", "max_tokens": tokens, "stream": True}
    return orjson.dumps(body)


def answered_by(response: Response) -> str:
    return str(response.json()["model"])


@pytest.mark.timeout(30)
async def test_a_swap_waits_until_the_open_stream_has_ended() -> None:
    async with running_rph(conflicting_pair()) as rph:
        apps = rph.supervisor.apps
        responses: dict[str, Response] = {}

        async def ask(model: str, body: bytes) -> None:
            responses[model] = await request(rph.port, "POST", "/v1/completions", body)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "a", stream("a", 20))
            await rph.supervisor.changes.wait_until(lambda: apps["a"].in_flight == 1)
            nursery.start_soon(ask, "b", completion("b", 1))

        a, b = responses["a"], responses["b"]
        assert a.status == b.status == 200
        # The stream came whole: 20 tokens, the finish event and [DONE].
        assert a.body.count(b"data: ") == 22
        assert a.body.endswith(b"data: [DONE]\n\n")
        # b was answered only after a's last byte, by the app named b.
        assert b.pieces[0][0] > a.pieces[-1][0]
        assert answered_by(b) == "b"
        assert (apps["a"].starts, apps["b"].starts) == (1, 1)
        assert apps["a"].state is State.STOPPED
        assert apps["b"].state is State.READY


@pytest.mark.timeout(30)
async def test_interleaved_requests_are_served_in_batches_with_one_swap() -> None:
    async with running_rph(conflicting_pair()) as rph:
        responses: list[Response] = []

        async def ask(model: str) -> None:
            body = completion(model, 2)
            responses.append(await request(rph.port, "POST", "/v1/completions", body))

        async with trio.open_nursery() as nursery:
            for model in "ababab":
                nursery.start_soon(ask, model)

        assert [r.status for r in responses] == [200] * 6
        served = [answered_by(r) for r in responses]
        # In order of completion: all of one app, then all of the other.
        assert served in (list("aaabbb"), list("bbbaaa"))
        apps = rph.supervisor.apps
        assert (apps["a"].starts, apps["b"].starts) == (1, 1)
        first, second = (apps[served[0]], apps[served[-1]])
        assert first.state is State.STOPPED
        assert second.state is State.READY


@pytest.mark.timeout(30)
async def test_a_swap_slower_than_the_grace_still_serves_in_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Loading a model takes longer than SWAP_GRACE: the requests that
    # waited for a start are served by it, not sent to the back again.
    monkeypatch.setattr(admission, "SWAP_GRACE", 0.1)
    async with running_rph(conflicting_pair(load_delay=0.5)) as rph:
        served: list[str] = []

        async def ask(model: str) -> None:
            body = completion(model, 1)
            response = await request(rph.port, "POST", "/v1/completions", body)
            assert response.status == 200
            served.append(answered_by(response))

        async with trio.open_nursery() as nursery:
            for model in "abab":
                nursery.start_soon(ask, model)

        assert served in (list("aabb"), list("bbaa"))
        apps = rph.supervisor.apps
        assert (apps["a"].starts, apps["b"].starts) == (1, 1)


@pytest.mark.timeout(30)
async def test_a_request_abandoned_while_waiting_causes_no_swap() -> None:
    async with running_rph(conflicting_pair()) as rph:
        supervisor = rph.supervisor
        apps = supervisor.apps
        responses: list[Response] = []

        async def stream_a() -> None:
            body = stream("a", 40)  # 2 s: long enough to wait, ask, give up
            responses.append(await request(rph.port, "POST", "/v1/completions", body))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream_a)
            await supervisor.changes.wait_until(lambda: apps["a"].in_flight == 1)
            assert apps["a"].child is not None
            a_pid = apps["a"].child.pid

            # A client asks for b, then gives up while a still streams.
            body = completion("b", 1)
            head = (
                b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            impatient = await connect(rph.port)
            await impatient.send_all(head + body)
            await supervisor.changes.wait_until(lambda: supervisor.waiting_for("b") > 0)
            await impatient.aclose()
            await supervisor.changes.wait_until(lambda: not supervisor.waiting_for("b"))
            assert apps["a"].in_flight == 1  # a's stream goes on meanwhile

        assert responses[0].status == 200
        assert responses[0].body.endswith(b"data: [DONE]\n\n")
        # Nothing swapped: a still runs, the same process; b never started.
        after = await request(rph.port, "GET", "/rph/status")
        states = {a["name"]: a for a in after.json()["apps"]}
        assert states["a"]["state"] == "ready"
        assert states["a"]["pid"] == a_pid
        assert states["b"]["state"] == "stopped"
        assert apps["b"].starts == 0


@pytest.mark.timeout(30)
async def test_a_busy_app_lets_a_waiting_rival_in_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a is never idle: its requests overlap. A request for b still gets its
    # turn once it has waited SWAP_GRACE; a's later requests queue behind.
    monkeypatch.setattr(admission, "SWAP_GRACE", 0.5)
    async with running_rph(conflicting_pair()) as rph:
        apps = rph.supervisor.apps
        finished: list[tuple[str, float]] = []

        async def ask(model: str, body: bytes) -> None:
            response = await request(rph.port, "POST", "/v1/completions", body)
            assert response.status == 200
            finished.append((model, trio.current_time()))

        async def keep_a_busy() -> None:
            # Each stream of 0.5 s overlaps the next for 0.25 s, for 3 s.
            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(ask, "a", stream("a", 10))
                    await trio.sleep(0.25)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_a_busy)
            await rph.supervisor.changes.wait_until(lambda: apps["a"].in_flight > 0)
            nursery.start_soon(ask, "b", completion("b", 1))

        b_done = next(when for model, when in finished if model == "b")
        # b did not wait for a's 3 s of traffic to end: a's later requests
        # were served after b, by a second start of a.
        assert any(model == "a" and when > b_done for model, when in finished)
        assert apps["b"].starts == 1
        assert apps["a"].starts == 2
