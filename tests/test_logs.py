"""The log a person running RPH reads: what started, what stopped, and why.

RPH runs in-process and pytest's caplog holds every record; each test makes
a real program start, get ready, idle out, crash or print, and checks the
lines a person would look for, with their reasons, and that no secret or
body reaches the log.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys

import h11
import psutil
import pytest
import trio
import trio.testing
from support import (
    app,
    connect,
    free_port,
    pausable,
    python_program,
    request,
    running_rph,
    standin,
)

from rph.proc import ondemand
from rph.proc.ondemand import State

# An idle timeout (seconds) short enough for a test.
SHORT_IDLE = 0.3

# A program that prints a line and then holds on, like a GPU miner.
MINER = python_program(
    "import time; print('mining', flush=True); time.sleep(120)",
)


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="rph")
    return caplog


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def line_matching(caplog: pytest.LogCaptureFixture, pattern: str) -> str:
    """The first log line that `pattern` matches whole; fails listing them all."""
    for line in lines(caplog):
        if re.fullmatch(pattern, line):
            return line
    pytest.fail(f"no log line matches {pattern!r}:\n" + "\n".join(lines(caplog)))


@pytest.mark.timeout(30)
async def test_start_ready_idle_stop_and_exit(log: pytest.LogCaptureFixture) -> None:
    llm = app("llm", timeout=SHORT_IDLE)
    async with running_rph([llm]) as rph:
        assert (await request(rph.port, "GET", "/v1/models")).status == 200
        state = rph.supervisor.apps["llm"]
        await rph.supervisor.changes.wait_until(lambda: state.state is State.STOPPED)

    line_matching(log, rf"listening on http://127\.0\.0\.1:{rph.port} for llm")
    started = line_matching(log, r"starting llm: .*")
    assert " ".join(llm.cmdline) in started
    line_matching(log, r"\[llm\] listening on http://127\.0\.0\.1:\d+")
    line_matching(log, r"llm ready after \d+\.\d s")
    line_matching(log, r"stopping llm \(idle for [\d.]+ min\)")
    line_matching(
        log, r"llm stopped after \d+\.\d s \((exit code \d+|killed by signal \d+)\)"
    )


@pytest.mark.timeout(30)
async def test_crash_is_logged_with_its_signal(log: pytest.LogCaptureFixture) -> None:
    async with running_rph([app("llm")]) as rph:
        assert (await request(rph.port, "GET", "/v1/models")).status == 200
        state = rph.supervisor.apps["llm"]
        assert state.child is not None
        psutil.Process(state.child.pid).kill()
        await rph.supervisor.changes.wait_until(lambda: state.state is State.STOPPED)

    killed = "killed by signal 9" if sys.platform != "win32" else r"exit code \d+"
    line_matching(
        log,
        rf"llm exited by itself \({killed}\); the next request starts it again",
    )
    line_matching(log, r"stopping llm \(crashed\)")


@pytest.mark.timeout(30)
async def test_shutdown_is_the_reason_given(log: pytest.LogCaptureFixture) -> None:
    async with running_rph([app("llm")]) as rph:
        assert (await request(rph.port, "GET", "/v1/models")).status == 200
    line_matching(log, r"stopping llm \(shutdown\)")


@pytest.mark.timeout(30)
async def test_shutdown_during_a_start_is_no_error(
    log: pytest.LogCaptureFixture,
) -> None:
    backend = free_port()
    slow = app(
        "llm", backend_port=backend, cmdline=standin(backend, "--load-delay", "60")
    )

    async def ask(port: int) -> None:
        # Whether the waiting client gets a 503 or a closed connection is
        # the shutdown's business; here only the log is.
        with contextlib.suppress(h11.RemoteProtocolError):
            await request(port, "GET", "/v1/models")

    async with trio.open_nursery() as clients, running_rph([slow]) as rph:
        clients.start_soon(ask, rph.port)
        state = rph.supervisor.apps["llm"]
        await rph.supervisor.changes.wait_until(lambda: state.state is State.STARTING)

    line_matching(log, r"start of llm abandoned \(shutdown\)")
    assert not [r for r in log.records if r.levelno >= logging.ERROR]


@pytest.mark.timeout(30)
async def test_a_failed_start_logs_what_the_app_said(
    log: pytest.LogCaptureFixture,
) -> None:
    failing = app(
        "llm",
        cmdline=python_program(
            "import sys; print('error: model file not found', flush=True); sys.exit(3)"
        ),
    )
    async with running_rph([failing]) as rph:
        assert (await request(rph.port, "GET", "/v1/models")).status == 502

    line_matching(log, r"\[llm\] error: model file not found")
    failure = next(line for line in lines(log) if "exited while starting" in line)
    assert "exit code 3" in failure
    assert "error: model file not found" in failure


@pytest.mark.timeout(30)
async def test_a_long_start_says_it_is_still_waiting(
    log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real interval is 10 s; the line is the same at any interval.
    monkeypatch.setattr(ondemand, "STILL_WAITING_EVERY", 0.2)
    backend = free_port()
    slow = app(
        "llm", backend_port=backend, cmdline=standin(backend, "--load-delay", "1")
    )
    async with running_rph([slow]) as rph:
        assert (await request(rph.port, "GET", "/v1/models")).status == 200

    line_matching(log, r"still waiting for llm, \d+ s: loading model for 1 s")


@pytest.mark.timeout(30)
async def test_secret_options_are_masked_on_start(
    log: pytest.LogCaptureFixture,
) -> None:
    # A program that takes the options, and fails to start (502) at once.
    program = python_program("import sys; sys.exit(1)")
    cmdline = (*program, "--api-key", "sk-live-1234", "HF_TOKEN=hf_abcd")
    secretive = app("llm", cmdline=cmdline)
    async with running_rph([secretive]) as rph:
        assert (await request(rph.port, "GET", "/v1/models")).status == 502

    started = line_matching(log, r"starting llm: .*")
    assert started.endswith("--api-key *** HF_TOKEN=***")
    assert "sk-live-1234" not in log.text
    assert "hf_abcd" not in log.text


@pytest.mark.timeout(30)
async def test_one_debug_line_per_exchange_without_body_or_secrets(
    log: pytest.LogCaptureFixture,
) -> None:
    body = b'{"prompt": "my private diary", "max_tokens": 3}'
    async with running_rph([app("llm")]) as rph, await connect(rph.port) as stream:
        response = await request(
            rph.port,
            "POST",
            "/v1/completions?api_key=sk-in-query",
            body=body,
            headers=[("Authorization", "Bearer sk-in-header")],
            stream=stream,
        )
        assert response.status == 200
        # The line is written once the exchange is over: when the next
        # request on the connection is answered, it has been.
        await request(rph.port, "GET", "/rph/status", stream=stream)

    exchange = line_matching(
        log,
        r"127\.0\.0\.1 POST /v1/completions -> llm 200 up=(\d+) down=(\d+)"
        r" ttfb=\d+\.\d+s total=\d+\.\d+s",
    )
    up, down = re.findall(r"(?:up|down)=(\d+)", exchange)
    assert int(up) == len(body)
    assert int(down) >= len(response.body)
    for secret in ("my private diary", "sk-in-header", "sk-in-query"):
        assert secret not in log.text


async def test_a_client_leaving_mid_stream_is_logged_as_aborted(
    log: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    slow = app(
        "llm",
        backend_port=port,
        cmdline=standin(port, "--token-interval", "0.2"),
    )
    async with running_rph([slow]) as rph:
        llm = rph.supervisor.apps["llm"]
        async with await connect(rph.port) as stream:
            body = b'{"prompt": "hi", "stream": true, "max_tokens": 50}'
            await stream.send_all(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            while b"data: " not in await stream.receive_some(65536):
                pass
        await rph.supervisor.changes.wait_until(lambda: llm.in_flight == 0)
        await trio.testing.wait_all_tasks_blocked()

    line_matching(
        log,
        r"127\.0\.0\.1 POST /v1/completions -> llm 200 (aborted|\(client closed\))"
        r" up=\d+ down=[1-9]\d*"
        r" ttfb=\d+\.\d+s total=\d+\.\d+s",
    )


@pytest.mark.timeout(30)
async def test_pausable_paused_and_resumed_with_reasons(
    log: pytest.LogCaptureFixture,
) -> None:
    async with running_rph([app("llm")], [pausable("miner", MINER)]) as rph:
        miner = rph.supervisor.pausables[0]
        await rph.supervisor.changes.wait_until(lambda: miner.child is not None)
        assert (await request(rph.port, "GET", "/v1/models")).status == 200
        await rph.supervisor.unload("llm")
        await rph.supervisor.changes.wait_until(lambda: miner.child is not None)

        assert (await request(rph.port, "GET", "/stopcoordinator")).status == 200
        assert (await request(rph.port, "GET", "/startcoordinator")).status == 200

    shown = lines(log)
    paused = shown.index(line_matching(log, r"pausing miner \(llm needs the GPU\)"))
    resumed = [i for i, line in enumerate(shown) if re.match(r"miner running", line)]
    assert len(resumed) >= 2  # the first start, and after llm stopped
    assert resumed[0] < paused < resumed[1]
    assert shown[resumed[1]].startswith("miner running (resuming, the GPU is free)")
    line_matching(log, r"pausing miner \(coordinator off\)")
    line_matching(log, r"coordinator off")
    line_matching(log, r"coordinator on")
