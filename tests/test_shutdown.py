"""Stopping RPH itself: Ctrl-C or SIGTERM ends every program it started.

RPH runs here as a user runs it, `python -m rph --config FILE` in a process
of its own, with a stand-in backend that a first request has started.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import trio
from support import (
    connect,
    free_port,
    python_program,
    read_until_eof,
    request,
    standin,
)

from rph.proc.changes import Changes

# Exit status of an RPH killed by a second Ctrl-C (128 + SIGINT, as shells do).
KILLED_AT_ONCE = 130

# Far longer than any of these tests may take: a stop that waited for it
# would fail the test on its timeout.
PATIENT_STOP = 60

# A killed process is gone within milliseconds; this only bounds the wait.
KILL_NOTICED = 5


@dataclass
class RunningRPH:
    process: trio.Process
    port: int
    log: bytearray
    log_grew: Changes

    def log_text(self) -> str:
        return self.log.decode(errors="replace")

    async def wait_for_log(self, text: str) -> None:
        await self.log_grew.wait_until(lambda: text.encode() in self.log)


@asynccontextmanager
async def rph_process(
    tmp_path: Path, entry: dict[str, Any]
) -> AsyncIterator[RunningRPH]:
    """`python -m rph` on a config of one app; killed if a test leaves it up."""
    port = free_port()
    config = tmp_path / "config.json"
    config.write_bytes(orjson.dumps([{**entry, "port": port}]))
    # The record of started children goes to the test's folder, not the
    # user's state folder.
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    command = [sys.executable, "-m", "rph", "--config", str(config)]
    process = await trio.lowlevel.open_process(
        command, stderr=subprocess.PIPE, env=env, cwd=tmp_path
    )
    rph = RunningRPH(process, port, bytearray(), Changes())

    async def collect_log() -> None:
        assert process.stderr is not None
        async for chunk in process.stderr:
            rph.log.extend(chunk)
            rph.log_grew.notify()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect_log)
            with trio.fail_after(10):
                await rph.wait_for_log("listening on")
            yield rph
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        print(rph.log_text())  # pytest shows it when the test failed
        assert process.stderr is not None
        await process.stderr.aclose()


def stand_in_entry(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    backend = free_port()
    return {
        "type": "ondemand",
        "name": "llm",
        "cmdline": list(standin(backend)),
        "workdir": str(tmp_path),
        "endpoint": f"http://127.0.0.1:{backend}",
        **changes,
    }


async def start_backend(rph: RunningRPH) -> list[psutil.Process]:
    """Start the app with one request; returns its process tree."""
    body = b'{"prompt": "hi", "max_tokens": 1}'
    response = await request(rph.port, "POST", "/v1/completions", body)
    assert response.status == 200, rph.log_text()
    status = await request(rph.port, "GET", "/rph/status")
    root = psutil.Process(status.json()["apps"][0]["pid"])
    return [root, *root.children(recursive=True)]


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `processes` still running (a zombie holds nothing)."""
    running = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
        except psutil.NoSuchProcess:
            continue
    return running


async def wait_exit(rph: RunningRPH) -> int:
    with trio.fail_after(20):
        return await rph.process.wait()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
async def test_a_stop_signal_stops_every_child_and_exits_0(
    tmp_path: Path, signum: signal.Signals
) -> None:
    async with rph_process(tmp_path, stand_in_entry(tmp_path)) as rph:
        tree = await start_backend(rph)

        rph.process.send_signal(signum)

        assert await wait_exit(rph) == 0, rph.log_text()
        assert not alive(tree)
        assert "stopping llm (shutdown)" in rph.log_text()


@pytest.mark.timeout(30)
async def test_a_second_ctrl_c_kills_a_slow_tree_at_once(tmp_path: Path) -> None:
    # A launcher whose helper ignores the polite stop: the tree outlives it
    # for `stop_timeout`, unless the user insists.
    backend = free_port()
    stubborn = python_program(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "time.sleep(600)\n"
    )
    script = f"{shlex.join(stubborn)} & {shlex.join(standin(backend))} & wait"
    entry = stand_in_entry(
        tmp_path,
        cmdline=["sh", "-c", script],
        endpoint=f"http://127.0.0.1:{backend}",
        stop_timeout=PATIENT_STOP,
    )
    async with rph_process(tmp_path, entry) as rph:
        tree = await start_backend(rph)
        assert len(tree) >= 3  # the shell, the helper, the server
        rph.process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            await rph.wait_for_log("stopping llm (shutdown)")

        rph.process.send_signal(signal.SIGINT)

        assert await wait_exit(rph) == KILLED_AT_ONCE, rph.log_text()
        # SIGKILL was sent, not waited for: the kernel ends them a moment
        # later, long before the 60 s of the polite stop.
        _, survivors = await trio.to_thread.run_sync(
            psutil.wait_procs, alive(tree), KILL_NOTICED
        )
        assert not alive(survivors)


@pytest.mark.timeout(30)
async def test_a_stop_signal_mid_stream_ends_the_stream_and_exits_0(
    tmp_path: Path,
) -> None:
    async with rph_process(tmp_path, stand_in_entry(tmp_path)) as rph:
        tree = await start_backend(rph)
        sock = await connect(rph.port)
        async with sock:
            body = b'{"prompt": "hi", "max_tokens": 100000, "stream": true}'
            head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
            length = b"Content-Length: %d\r\n\r\n" % len(body)
            await sock.send_all(head + length + body)
            # Two reads: the second piece of a stream is relayed by a thread.
            received = await sock.receive_some(65536)
            while received.count(b"data: ") < 3:
                received += await sock.receive_some(65536)

            rph.process.send_signal(signal.SIGTERM)

            assert await wait_exit(rph) == 0, rph.log_text()
            with trio.fail_after(KILL_NOTICED):
                await read_until_eof(sock)  # the stream ends, it does not hang
        assert not alive(tree)
