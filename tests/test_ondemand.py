"""An on-demand app as a user meets it: started by a request, stopped when idle.

Every backend is a real program on a real port (the stand-in, a shell
wrapper around it, or a few lines of `python -c`), every client a real
socket, and RPH runs in-process so that a test can wait on its supervisor.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
from collections.abc import Callable
from typing import Any

import orjson
import psutil
import pytest
import trio
from support import (
    Response,
    app,
    free_port,
    python_program,
    request,
    running_rph,
    standin,
)

from rph.config_keys import SECONDS_PER_MINUTE
from rph.proc.ondemand import OnDemandApp, State
from rph.proc.supervisor import Supervisor

# The stand-in's pace in the streaming tests: slow enough that "one by one"
# and "all at the end" are far apart, fast enough for a quick test.
TOKEN_INTERVAL = 0.1
TOKENS = 8

# A 2 MB prompt, as a long chat history pasted into a front-end.
BIG_BODY_BYTES = 2 * 1024 * 1024

# The idle timeout of the idle tests, in minutes as a config file says it:
# 0.3 s, short enough for a test, long enough to see a stream outlive it.
SHORT_TIMEOUT_MINUTES = 0.005

# Bounds that only tell "answered at once" from "waited out a timeout".
NO_NOTICEABLE_PAUSE = 1.0
LONG_START_TIMEOUT = 30.0


def minutes(value: float) -> float:
    """A config file's `timeout` in minutes, as AppConfig holds it (seconds)."""
    return value * SECONDS_PER_MINUTE


def completion(**fields: Any) -> bytes:
    return orjson.dumps({"prompt": "hi", **fields})


def sse_events(response: Response) -> list[tuple[float, dict[str, Any]]]:
    """Each JSON `data:` event of a stream, with the time its last byte came."""
    events = []
    pending = b""
    for arrived, piece in response.pieces:
        pending += piece
        *complete, pending = pending.split(b"\n\n")
        for event in complete:
            data = event.removeprefix(b"data: ")
            if data.startswith(b"{"):
                events.append((arrived, json.loads(data)))
    return events


def backend_pid(supervisor: Supervisor, name: str = "llm") -> int:
    child = supervisor.apps[name].child
    assert child is not None, f"{name} has no running child"
    return child.pid


def tree_of(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def all_gone(processes: list[psutil.Process]) -> bool:
    """True when none of `processes` runs any more.

    A zombie counts as gone: it holds no memory, only an exit status that
    its new parent (init, for an orphan) has not collected yet.
    """
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def pid_gone(pid: int) -> bool:
    try:
        return all_gone([psutil.Process(pid)])
    except psutil.NoSuchProcess:
        return True


async def wait_for(supervisor: Supervisor, condition: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        await supervisor.changes.wait_until(condition)


def is_stopped(app_: OnDemandApp) -> Callable[[], bool]:
    return lambda: app_.state is State.STOPPED


# -- cold and warm --------------------------------------------------------


@pytest.mark.timeout(20)
async def test_cold_start_holds_the_request_then_streams_events_one_by_one() -> None:
    backend = free_port()
    command = standin(
        backend, "--load-delay", "0.5", "--token-interval", str(TOKEN_INTERVAL)
    )
    async with running_rph([app(cmdline=command, backend_port=backend)]) as rph:
        llm = rph.supervisor.apps["llm"]
        assert llm.state is State.STOPPED

        body = completion(stream=True, max_tokens=TOKENS)
        response = await request(rph.port, "POST", "/v1/completions", body)

        assert response.status == 200
        assert llm.starts == 1
        assert response.body.endswith(b"data: [DONE]\n\n")
        tokens = [(at, e) for at, e in sse_events(response) if e["choices"][0]["text"]]
        assert len(tokens) == TOKENS

        # Relayed as they come: the spread of arrivals at the client follows
        # the backend's own spacing, where a buffered answer would arrive all
        # at once after the last token. Two intervals of slack absorb a busy
        # machine and still tell the two apart.
        arrival_spread = tokens[-1][0] - tokens[0][0]
        stamps = [event["standin_ns"] for _, event in tokens]
        stamp_spread = (stamps[-1] - stamps[0]) / 1e9
        assert stamp_spread >= (TOKENS - 1) * TOKEN_INTERVAL * 0.9
        slack = 2 * TOKEN_INTERVAL
        assert arrival_spread == pytest.approx(stamp_spread, abs=slack)


@pytest.mark.timeout(20)
async def test_warm_requests_reach_the_same_backend_and_big_bodies_arrive_whole() -> (
    None
):
    async with running_rph([app()]) as rph:
        first = await request(rph.port, "POST", "/v1/completions", completion())
        assert first.status == 200
        pid = backend_pid(rph.supervisor)

        prompt = "Once upon a time, " * (BIG_BODY_BYTES // 18)
        body = orjson.dumps({"prompt": prompt, "max_tokens": 1})
        assert len(body) >= BIG_BODY_BYTES
        echo = await request(
            rph.port, "POST", "/echo", body, [("Content-Type", "application/json")]
        )

        assert echo.status == 200
        assert echo.json()["body_length"] == len(body)
        assert echo.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert rph.supervisor.apps["llm"].starts == 1
        assert backend_pid(rph.supervisor) == pid


# -- routing --------------------------------------------------------------


def two_models(pattern: str) -> list[Any]:
    """A chat model as the default of /v1 and a summarizer chosen by body."""
    chat_port, summary_port = free_port(), free_port()
    return [
        app(
            "chat",
            path="/v1",
            backend_port=chat_port,
            cmdline=standin(chat_port, "--model", "chat"),
        ),
        app(
            "summarizer",
            path="/v1",
            body_regex=pattern,
            backend_port=summary_port,
            cmdline=standin(summary_port, "--model", "summarizer"),
        ),
    ]


async def model_answering(port: int, prompt: str) -> str:
    body = orjson.dumps({"prompt": prompt, "max_tokens": 1})
    response = await request(port, "POST", "/v1/completions", body)
    assert response.status == 200, response.body
    return str(response.json()["model"])


@pytest.mark.timeout(20)
async def test_body_regex_chooses_the_app_and_unknown_paths_get_404() -> None:
    async with running_rph(two_models("summarize")) as rph:
        assert await model_answering(rph.port, "Please summarize this.") == (
            "summarizer"
        )
        assert await model_answering(rph.port, "Tell me a story.") == "chat"

        response = await request(rph.port, "GET", "/api/v1/model")

        assert response.status == 404
        assert response.header(b"content-type") == b"application/json"
        error = response.json()["error"]
        assert "/api/v1/model" in error["message"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "no_app"


@pytest.mark.timeout(20)
async def test_a_404_under_a_longer_path_names_the_apps_whose_patterns_failed() -> None:
    # `a` would take model "a", but `/v1` is the longer path: its apps alone
    # are asked, and the message must not read as "nothing serves /v1".
    apps = [
        app("a", body_regex='"model": "a"'),
        app("b", path="/v1", body_regex='"model": "b"'),
    ]
    async with running_rph(apps) as rph:
        body = orjson.dumps({"model": "a", "prompt": "Hi"})
        response = await request(rph.port, "POST", "/v1/completions", body)

        assert response.status == 404
        message = response.json()["error"]["message"]
        assert "/v1/completions" in message
        assert "under /v1 go only to the apps of that path" in message
        assert "no body_regex of the apps of /v1 (b) matched" in message
        assert rph.supervisor.apps["a"].starts == 0


@pytest.mark.timeout(20)
async def test_a_404_with_no_shorter_path_names_only_the_patterns_that_failed() -> None:
    async with running_rph([app("b", path="/v1", body_regex='"model": "b"')]) as rph:
        body = orjson.dumps({"model": "a", "prompt": "Hi"})
        response = await request(rph.port, "POST", "/v1/completions", body)

        assert response.status == 404
        message = response.json()["error"]["message"]
        assert message == (
            "no app on this port answers /v1/completions with this body:"
            " no body_regex of the apps of /v1 (b) matched"
        )


@pytest.mark.timeout(20)
async def test_the_seeds_pattern_routes_a_big_body_without_a_pause() -> None:
    async with running_rph(two_models(".*summarize.*")) as rph:
        assert await model_answering(rph.port, "warm up") == "chat"

        # Pretty-printed JSON over many lines; "." must cross the newlines.
        prompt = "A long chat history line.\n" * (BIG_BODY_BYTES // 26)
        began = trio.current_time()
        assert await model_answering(rph.port, prompt) == "chat"
        took = trio.current_time() - began
        assert await model_answering(rph.port, prompt + "summarize it") == (
            "summarizer"
        )

        # Python's re needs minutes for this; RE2 milliseconds.
        assert took < NO_NOTICEABLE_PAUSE


# -- idle stop ------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_an_idle_app_stops_after_its_timeout() -> None:
    timeout = minutes(SHORT_TIMEOUT_MINUTES)
    async with running_rph([app(timeout=timeout)]) as rph:
        llm = rph.supervisor.apps["llm"]
        await request(rph.port, "POST", "/v1/completions", completion())
        finished = trio.current_time()
        backend = psutil.Process(backend_pid(rph.supervisor))

        await wait_for(rph.supervisor, is_stopped(llm))

        assert trio.current_time() - finished >= timeout
        assert all_gone([backend])
        status = await request(rph.port, "GET", "/rph/status")
        assert status.json()["apps"][0]["state"] == "stopped"
        assert status.json()["apps"][0]["pid"] is None


@pytest.mark.timeout(20)
async def test_no_idle_stop_while_a_stream_outlives_the_timeout() -> None:
    timeout = minutes(SHORT_TIMEOUT_MINUTES)
    backend = free_port()
    command = standin(backend, "--token-interval", str(TOKEN_INTERVAL))
    tokens = round(3 * timeout / TOKEN_INTERVAL)  # a stream of three timeouts
    config = app(cmdline=command, backend_port=backend, timeout=timeout)
    async with running_rph([config]) as rph, trio.open_nursery() as nursery:
        llm = rph.supervisor.apps["llm"]
        await request(rph.port, "POST", "/v1/completions", completion())
        pid = backend_pid(rph.supervisor)
        states: list[State] = []

        async def record_states() -> None:
            while True:
                await rph.supervisor.changes.wait()
                states.append(llm.state)

        nursery.start_soon(record_states)
        body = completion(stream=True, max_tokens=tokens)
        began = trio.current_time()
        response = await request(rph.port, "POST", "/v1/completions", body)
        streamed_for = trio.current_time() - began

        assert streamed_for > timeout
        assert response.body.endswith(b"data: [DONE]\n\n")
        assert len(sse_events(response)) == tokens + 1  # and the finish event
        # Every change the supervisor went through left the app ready.
        assert all(state is State.READY for state in [*states, llm.state])
        assert backend_pid(rph.supervisor) == pid

        # Once the stream is over, the idle clock runs again.
        await wait_for(rph.supervisor, is_stopped(llm))
        nursery.cancel_scope.cancel()


# -- failures -------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_an_app_that_crashed_is_started_again_by_the_next_request() -> None:
    async with running_rph([app()]) as rph:
        llm = rph.supervisor.apps["llm"]
        await request(rph.port, "POST", "/v1/completions", completion())
        crashed = backend_pid(rph.supervisor)

        os.kill(crashed, signal.SIGKILL)
        await wait_for(rph.supervisor, is_stopped(llm))
        response = await request(rph.port, "POST", "/v1/completions", completion())

        assert response.status == 200
        assert llm.crashes == 1
        assert llm.starts == 2
        assert backend_pid(rph.supervisor) != crashed


@pytest.mark.timeout(20)
async def test_a_backend_that_exits_while_starting_fails_its_waiters_at_once() -> None:
    # Fails after a moment of loading, so that every request arrives first.
    program = python_program(
        "import sys, time\n"
        "print('loading model', flush=True)\n"
        "time.sleep(0.5)\n"
        "print('error: /models/missing.gguf: no such file', flush=True)\n"
        "sys.exit(3)\n"
    )
    config = app(cmdline=program, start_timeout=LONG_START_TIMEOUT)
    clients = 3
    async with running_rph([config]) as rph:
        responses: list[Response] = []

        async def ask() -> None:
            body = completion()
            responses.append(await request(rph.port, "POST", "/v1/completions", body))

        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(ask)
        took = trio.current_time() - began

        assert [response.status for response in responses] == [502] * clients
        for response in responses:
            message = response.json()["error"]["message"]
            assert "error: /models/missing.gguf: no such file" in message
            assert "exit code 3" in message
        assert took < LONG_START_TIMEOUT / 3
        assert rph.supervisor.apps["llm"].starts == 1
        assert rph.supervisor.apps["llm"].state is State.STOPPED


@pytest.mark.timeout(20)
async def test_a_start_past_start_timeout_gets_504_and_the_tree_is_gone() -> None:
    # Prints its own pid and its child's, then never binds its port.
    program = python_program(
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time;"
        " time.sleep(600)'])\n"
        "print('pids', os.getpid(), child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    config = app(cmdline=program, start_timeout=1.0, stop_timeout=1.0)
    async with running_rph([config]) as rph:
        response = await request(rph.port, "POST", "/v1/completions", completion())

        assert response.status == 504
        message = response.json()["error"]["message"]
        assert "start_timeout" in message
        pids = [int(p) for p in message.split("pids ")[1].split()[:2]]
        assert all(pid_gone(pid) for pid in pids)
        assert rph.supervisor.apps["llm"].state is State.STOPPED


async def test_what_a_python_server_prints_while_loading_reaches_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Python buffers print() into a pipe; KoboldCpp is Python. Without RPH
    # asking for unbuffered output this line would die in the buffer.
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    program = python_program(
        "import time\nprint('loading weights: layer 12 of 40')\ntime.sleep(600)\n"
    )
    config = app(cmdline=program, start_timeout=1.0, stop_timeout=1.0)
    async with running_rph([config]) as rph:
        response = await request(rph.port, "POST", "/v1/completions", completion())

        assert response.status == 504
        assert "layer 12 of 40" in response.json()["error"]["message"]


# -- process trees --------------------------------------------------------


@pytest.mark.timeout(20)
async def test_stopping_a_shell_wrapper_ends_every_process_of_its_tree() -> None:
    # A launcher script as people write them: a helper that ignores SIGTERM
    # in the background, then the server, and the shell waits for both.
    backend = free_port()
    stubborn = shlex.join(
        python_program(
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "time.sleep(600)\n"
        )
    )
    server = shlex.join(standin(backend))
    script = f"{stubborn} & {server} & wait"
    config = app(cmdline=("sh", "-c", script), backend_port=backend, stop_timeout=0.5)
    async with running_rph([config]) as rph:
        response = await request(rph.port, "POST", "/v1/completions", completion())
        assert response.status == 200
        tree = tree_of(backend_pid(rph.supervisor))
        assert len(tree) >= 3  # the shell, the helper, the server

        stop = await request(rph.port, "POST", "/rph/apps/llm/stop")

        assert stop.status == 200
        assert stop.json()["state"] == "stopped"
        assert all_gone(tree)


@pytest.mark.timeout(20)
async def test_requests_during_a_cold_start_share_one_start() -> None:
    backend = free_port()
    command = standin(backend, "--load-delay", "0.5")
    clients = 5
    async with running_rph([app(cmdline=command, backend_port=backend)]) as rph:
        statuses: list[int] = []

        async def ask() -> None:
            body = completion(stream=True, max_tokens=2)
            response = await request(rph.port, "POST", "/v1/completions", body)
            statuses.append(response.status)

        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(ask)

        assert statuses == [200] * clients
        status = await request(rph.port, "GET", "/rph/status")
        assert status.json()["apps"][0]["starts"] == 1
