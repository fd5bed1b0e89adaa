"""The control endpoints: status, preload, unload, and the coordinator.

A user (or a script) watches `/rph/status`, preloads and unloads apps, and
switches the coordinator that pauses GPU programs; every answer is JSON,
and every answer comes when what it says is true.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from typing import Any

import orjson
import psutil
import pytest
import trio
from support import (
    ROOT,
    STANDIN,
    Response,
    app,
    free_port,
    pausable,
    python_program,
    request,
    running_rph,
)

from rph.proc.ondemand import State
from rph.proc.pausable import PausableState
from rph.proc.supervisor import Supervisor

# Starts a helper that ignores SIGTERM, then becomes the stand-in (argv:
# standin path, port, extra options): stopping it takes the whole
# stop_timeout, long enough to see "stopping" in the status.
STUBBORN_STANDIN = """
import os, subprocess, sys
subprocess.Popen([sys.executable, "-c", '''
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(3600)
'''])
standin, port, *options = sys.argv[1:]
os.execv(sys.executable, [sys.executable, standin, "--port", port, *options])
"""

# How often the starting app's status is asked for until it has a pid.
POLL = 0.02

README = ROOT / "README.md"

SLEEPER = "import time; print('up', flush=True); time.sleep(3600)"


def stubborn_app(name: str = "llm", **changes: Any) -> Any:
    backend = free_port()
    options = ("--load-delay", "0.5", "--token-interval", "0.05")
    cmdline = (*python_program(STUBBORN_STANDIN), str(STANDIN), str(backend))
    return app(
        name,
        backend_port=backend,
        cmdline=(*cmdline, *options),
        stop_timeout=1.0,
        **changes,
    )


async def get(port: int, path: str) -> Any:
    response = await request(port, "GET", path)
    assert response.status == 200
    assert response.header(b"content-type") == b"application/json"
    return response.json()


async def app_status(port: int, name: str = "llm") -> dict[str, Any]:
    status = await get(port, "/rph/status")
    return next(a for a in status["apps"] if a["name"] == name)


def app_state(supervisor: Supervisor, state: State) -> Callable[[], bool]:
    return lambda: supervisor.apps["llm"].state is state


STREAM = b'{"prompt": "hi", "max_tokens": 20, "stream": true}'


@pytest.mark.timeout(30)
async def test_status_follows_an_app_from_stopped_to_ready_to_stopped() -> None:
    async with running_rph([stubborn_app(timeout=60.0)]) as rph:
        supervisor, port = rph.supervisor, rph.port
        wait_until = supervisor.changes.wait_until

        first = await app_status(port)
        assert first["state"] == "stopped"
        assert first["pid"] is None
        assert (first["in_flight"], first["starts"], first["restarts"]) == (0, 0, 0)
        assert first["idle_stop_in"] is None

        answers: dict[str, Response] = {}

        async def post(action: str) -> None:
            answers[action] = await request(port, "POST", f"/rph/apps/llm/{action}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post, "start")
            # The app loads for 0.5 s: the status shows it starting, with
            # the pid of its process.
            starting = await app_status(port)
            while starting["pid"] is None:
                await trio.sleep(POLL)
                starting = await app_status(port)
            assert starting["state"] == "starting"

        # The preload answered once the app was ready: its backend answers
        # a direct connection now.
        started = answers["start"]
        assert started.status == 200
        assert started.json()["state"] == "ready"
        backend = await trio.open_tcp_stream("127.0.0.1", supervisor_port(rph))
        await backend.aclose()
        ready = await app_status(port)
        assert ready["state"] == "ready"
        assert ready["pid"] == starting["pid"]
        assert 0 < ready["idle_stop_in"] <= 60
        assert any("listening on" in line for line in ready["last_output"])

        streams: list[Response] = []

        async def stream() -> None:
            streams.append(await request(port, "POST", "/v1/completions", STREAM))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream)
            await wait_until(lambda: supervisor.apps["llm"].in_flight == 1)
            busy = await app_status(port)
            assert busy["in_flight"] == 1
            assert busy["idle_stop_in"] is None  # no idle stop under a stream

            # Unloading waits for the stream; the stop takes stop_timeout.
            nursery.start_soon(post, "stop")
            await wait_until(app_state(supervisor, State.STOPPING))
            stopping = await app_status(port)
            assert stopping["state"] == "stopping"
            assert stopping["in_flight"] == 0

        assert streams[0].body.endswith(b"data: [DONE]\n\n")
        stopped_answer = answers["stop"]
        assert stopped_answer.status == 200
        assert stopped_answer.json()["state"] == "stopped"
        assert stopped_answer.pieces[0][0] > streams[0].pieces[-1][0]
        assert is_gone(ready["pid"])

        last = await app_status(port)
        assert last["state"] == "stopped"
        assert last["pid"] is None
        assert last["starts"] == 1
        assert last["last_output"][-1] == "stopping"


def supervisor_port(rph: Any) -> int:
    """The backend port of the only app."""
    return int(rph.supervisor.apps["llm"].config.endpoint_port)


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def readme_status_example() -> dict[str, Any]:
    """The `/rph/status` answer that README.md shows in full."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"^```json\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    shown = [orjson.loads(block) for block in blocks if '"apps": [' in block]
    assert len(shown) == 1, "README.md should show one whole status answer"
    return dict(shown[0])


@pytest.mark.timeout(20)
async def test_status_has_the_readmes_keys_in_the_readmes_order() -> None:
    example = readme_status_example()
    training = pausable("training", python_program(SLEEPER))
    async with running_rph([app("chat")], [training]) as rph:
        status = await get(rph.port, "/rph/status")

    assert list(status) == list(example)
    assert list(status["apps"][0]) == list(example["apps"][0])
    assert list(status["pausables"][0]) == list(example["pausables"][0])


@pytest.mark.timeout(30)
async def test_status_counts_a_crash_and_the_next_request_starts_again() -> None:
    async with running_rph([app()]) as rph:
        supervisor, port = rph.supervisor, rph.port
        await request(port, "POST", "/rph/apps/llm/start")
        pid = (await app_status(port))["pid"]

        os.kill(pid, signal.SIGKILL)
        await supervisor.changes.wait_until(app_state(supervisor, State.STOPPED))
        crashed = await app_status(port)
        assert (crashed["state"], crashed["pid"], crashed["restarts"]) == (
            "stopped",
            None,
            1,
        )

        body = b'{"prompt": "hi", "max_tokens": 1}'
        response = await request(port, "POST", "/v1/completions", body)
        assert response.status == 200
        again = await app_status(port)
        assert again["state"] == "ready"
        assert again["starts"] == 2
        assert again["pid"] != pid


@pytest.mark.timeout(30)
async def test_coordinator_endpoints_answer_get_and_post_with_json() -> None:
    miner = pausable("miner", python_program(SLEEPER))
    async with running_rph([app()], [miner]) as rph:
        port = rph.port
        paused = rph.supervisor.pausables[0]
        await rph.supervisor.changes.wait_until(
            lambda: paused.state is PausableState.RUNNING
        )

        for method in ("GET", "POST"):
            off = await request(port, method, "/stopcoordinator")
            assert off.status == 200
            assert off.header(b"content-type") == b"application/json"
            # It answers once the GPU is free: the pausable has stopped.
            assert off.json()["coordinator"] == "off"
            assert off.json()["pausables"][0]["state"] == "stopped"
            assert off.json()["pausables"][0]["pid"] is None

            on = await request(port, method, "/startcoordinator")
            assert on.status == 200
            assert on.json()["coordinator"] == "on"
            await rph.supervisor.changes.wait_until(
                lambda: paused.state is PausableState.RUNNING
            )
            status = await get(port, "/rph/status")
            assert status["coordinator"] == "on"
            assert status["pausables"][0]["state"] == "running"


@pytest.mark.timeout(30)
async def test_pausables_stay_stopped_through_app_traffic_until_startcoordinator() -> (
    None
):
    miner = pausable("miner", python_program(SLEEPER))
    async with running_rph([app(timeout=0.3)], [miner]) as rph:
        supervisor, port = rph.supervisor, rph.port
        paused = supervisor.pausables[0]
        await supervisor.changes.wait_until(
            lambda: paused.state is PausableState.RUNNING
        )
        await request(port, "POST", "/stopcoordinator")

        # An app comes and goes (idle stop) while the coordinator is off.
        body = b'{"prompt": "hi", "max_tokens": 1}'
        assert (await request(port, "POST", "/v1/completions", body)).status == 200
        await supervisor.changes.wait_until(app_state(supervisor, State.STOPPED))
        status = await get(port, "/rph/status")
        assert status["apps"][0]["starts"] == 1
        assert status["coordinator"] == "off"
        assert status["pausables"][0]["state"] == "stopped"
        assert paused.child is None

        await request(port, "POST", "/startcoordinator")
        await supervisor.changes.wait_until(
            lambda: paused.state is PausableState.RUNNING
        )


@pytest.mark.timeout(30)
async def test_startcoordinator_while_an_app_runs_waits_for_it_to_stop() -> None:
    miner = pausable("miner", python_program(SLEEPER))
    async with running_rph([app()], [miner]) as rph:
        supervisor, port = rph.supervisor, rph.port
        paused = supervisor.pausables[0]
        await request(port, "POST", "/stopcoordinator")
        assert (await request(port, "POST", "/rph/apps/llm/start")).status == 200

        on = await request(port, "POST", "/startcoordinator")
        assert on.json()["coordinator"] == "on"
        assert on.json()["pausables"][0]["state"] == "stopped"
        assert (await get(port, "/rph/status"))["pausables"][0]["pid"] is None

        assert (await request(port, "POST", "/rph/apps/llm/stop")).status == 200
        await supervisor.changes.wait_until(
            lambda: paused.state is PausableState.RUNNING
        )
        assert paused.child is not None
        assert psutil.pid_exists(paused.child.pid)


@pytest.mark.timeout(30)
async def test_pausable_status_shows_the_wait_before_a_restart() -> None:
    crasher = pausable("crasher", python_program("print('bye'); raise SystemExit(3)"))
    async with running_rph([app()], [crasher]) as rph:
        paused = rph.supervisor.pausables[0]
        await rph.supervisor.changes.wait_until(
            lambda: paused.state is PausableState.BACKOFF
        )
        status = (await get(rph.port, "/rph/status"))["pausables"][0]
        assert status["state"] == "backoff"
        assert status["restarts"] >= 1
        assert 0 <= status["restart_in"] <= 60
        assert status["last_output"] == ["bye"]
