"""An app whose endpoint another program holds is refused before anything
is done for it.

The 502 that names the holder comes before a pausable is paused or a
conflicting app is stopped: pausing a training run, then resuming it, for
a start that could not happen loses its work for nothing. A port that one
of RPH's own programs holds does not count: that program makes way.
"""

from __future__ import annotations

import logging
import os

import pytest
import trio
from support import (
    app,
    free_port,
    pausable,
    python_program,
    request,
    running_rph,
    wait_accepting,
)

from rph.proc.ondemand import State
from rph.proc.pausable import PausableState

# A program that prints a line and then holds on, like a training run.
TRAINING = python_program("import time; print('epoch 1', flush=True); time.sleep(120)")


def listening_program(port: int) -> tuple[str, ...]:
    """A pausable that holds `port`, as a server of its own would."""
    return python_program(
        "import socket, time; s = socket.socket();"
        f" s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(120)"
    )


@pytest.mark.timeout(20)
async def test_a_taken_port_pauses_no_pausable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rph")
    squat = app("squat")
    listeners = await trio.open_tcp_listeners(squat.endpoint_port, host="127.0.0.1")
    try:
        async with running_rph([squat], [pausable("bg", TRAINING)]) as rph:
            bg = rph.supervisor.pausables[0]
            await rph.supervisor.changes.wait_until(lambda: bg.child is not None)
            assert bg.child is not None
            running = bg.child.pid

            answer = await request(rph.port, "POST", "/v1/completions", b"{}")

            assert answer.status == 502
            message = answer.json()["error"]["message"]
            assert f"in use by pid {os.getpid()}" in message
            assert bg.state is PausableState.RUNNING
            assert bg.child is not None
            assert bg.child.pid == running
            assert rph.supervisor.apps["squat"].starts == 0
            assert "pausing bg" not in caplog.text
    finally:
        for listener in listeners:
            await listener.aclose()


@pytest.mark.timeout(20)
async def test_a_taken_port_stops_no_conflicting_app() -> None:
    chat = app("chat")
    squat = app("squat", body_regex="squat", conflicts_with=("chat",))
    listeners = await trio.open_tcp_listeners(squat.endpoint_port, host="127.0.0.1")
    try:
        async with running_rph([chat, squat]) as rph:
            assert (await request(rph.port, "GET", "/v1/models")).status == 200

            body = b'{"model": "squat"}'
            answer = await request(rph.port, "POST", "/v1/completions", body)

            assert answer.status == 502
            assert rph.supervisor.apps["chat"].state is State.READY
            assert rph.supervisor.apps["chat"].starts == 1
    finally:
        for listener in listeners:
            await listener.aclose()


@pytest.mark.timeout(30)
async def test_a_port_a_pausable_holds_is_freed_for_the_app() -> None:
    backend = free_port()
    llm = app("llm", backend_port=backend)
    holder = pausable("holder", listening_program(backend))
    async with running_rph([llm], [holder]) as rph:
        await wait_accepting(backend)

        answer = await request(rph.port, "GET", "/v1/models")

        assert answer.status == 200
        assert rph.supervisor.pausables[0].state is not PausableState.RUNNING
