"""Nothing RPH started outlives it, and nothing it did not start is touched.

RPH killed outright (SIGKILL) cannot stop its children. On Linux the
kernel kills each direct child with it, but grandchildren survive: the
next RPH on the same config ends them, from the state file, before it
serves. These tests run RPH as a real `python -m rph` process with its
state folder in the test's temporary folder (XDG_STATE_HOME).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import trio
from support import (
    ROOT,
    STANDIN,
    app,
    free_port,
    pausable,
    python_program,
    request,
    running_rph,
    wait_accepting,
)

from rph.proc import platform
from rph.proc.leftovers import AlreadyRunning, Ledger

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="kills with POSIX signals"
)

# A program whose own child outlives it: what a launcher script or a
# server with worker processes looks like. Prints both pids.
FORKING = """
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
print("parent", os.getpid(), "worker", worker.pid, flush=True)
time.sleep(3600)
"""

# How often a condition nothing notifies about is looked at again.
POLL = 0.05

# An RPH asked to stop by a failed test's cleanup gets this long; its
# children's stop_timeout is the default 10 s.
RPH_STOP_WAIT = 15.0


def is_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waits only to be reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_quietly(pids: Iterable[int]) -> None:
    """Test cleanup: whatever a failed assertion left running is ended."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def end(process: trio.Process) -> None:
    """Kill `process` if it still runs, reap it, close its pipes."""
    if process.returncode is None:
        process.kill()
    await process.wait()
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            await pipe.aclose()


async def wait_until_gone(pid: int) -> None:
    while not is_gone(pid):  # noqa: ASYNC110 - a stranger's exit notifies nobody
        await trio.sleep(POLL)


async def wait_for_descendants(pid: int) -> list[int]:
    while not descendants(pid):  # noqa: ASYNC110 - nothing notifies a fork
        await trio.sleep(POLL)
    return descendants(pid)


# -- the state file, on its own ----------------------------------------------


def write_predecessor_file(path: Path, children: list[dict[str, Any]]) -> None:
    """The state file as an RPH that was killed left it."""
    dead_owner = {"pid": 2**22 + 1, "create_time": 1.0}  # above any pid_max
    data = {"owner": dead_owner, "children": children}
    path.write_bytes(orjson.dumps(data))


@pytest.mark.timeout(20)
async def test_a_recycled_pid_is_left_alone(tmp_path: Path) -> None:
    # The entry names this very test process, but with another creation
    # time: the pid was recycled, the process is a stranger.
    me = os.getpid()
    stranger = {"pid": me, "create_time": platform.create_time(me) - 1000.0}
    ledger = Ledger(tmp_path / "children.json")
    write_predecessor_file(ledger.path, [{**stranger, "command": "llm-server"}])

    assert await ledger.end_leftovers() == 0
    assert not is_gone(me)


def test_the_state_file_holds_no_secret(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "children.json")
    me = os.getpid()
    ledger.record(me, platform.create_time(me), ["server", "--api-key", "sk-123"])
    written = ledger.path.read_text()
    assert "sk-123" not in written
    assert "server --api-key ***" in written


@pytest.mark.timeout(20)
async def test_leftovers_are_ended_whole_grandchildren_included(
    tmp_path: Path,
) -> None:
    # A leftover tree whose root is already gone (killed with its RPH) and
    # whose worker was re-parented away: found by its session.
    process = await trio.lowlevel.open_process(
        python_program(FORKING), stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert process.stdout is not None
        output = b""
        while not output.endswith(b"\n"):
            output += await process.stdout.receive_some()
        line = output.decode().split()
        root, worker = int(line[1]), int(line[3])
        entry = {"pid": root, "create_time": platform.create_time(root), "command": ""}
        process.kill()
        await process.wait()
        assert not is_gone(worker)

        ledger = Ledger(tmp_path / "children.json")
        write_predecessor_file(ledger.path, [entry])
        assert await ledger.end_leftovers() == 1
        assert is_gone(worker)
    finally:
        # The worker shares the leftover's process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await end(process)


@pytest.mark.timeout(20)
async def test_an_rph_that_runs_keeps_its_children(tmp_path: Path) -> None:
    # The file's owner is alive: a second RPH on the same config refuses to
    # start instead of killing the first one's children.
    sleeper = await trio.lowlevel.open_process(
        python_program("input()"), stdin=subprocess.PIPE
    )
    try:
        owner = {"pid": sleeper.pid, "create_time": platform.create_time(sleeper.pid)}
        ledger = Ledger(tmp_path / "children.json")
        ledger.path.write_bytes(orjson.dumps({"owner": owner, "children": []}))
        with pytest.raises(AlreadyRunning, match=f"pid {sleeper.pid}"):
            await ledger.end_leftovers()
    finally:
        await end(sleeper)


# -- RPH killed outright --------------------------------------------------------


def write_config(tmp_path: Path, entries: list[dict[str, Any]]) -> Path:
    path = tmp_path / "config.json"
    path.write_bytes(orjson.dumps(entries))
    return path


@asynccontextmanager
async def rph_process(config: Path, log: Path) -> AsyncIterator[trio.Process]:
    """`python -m rph` on `config`, its state folder under the config's."""
    env = {**os.environ, "XDG_STATE_HOME": str(config.parent / "state")}
    command = [sys.executable, "-m", "rph", "--config", str(config)]
    with log.open("ab") as output:
        process = await trio.lowlevel.open_process(
            command, cwd=ROOT, env=env, stdout=output, stderr=output
        )
    try:
        yield process
    finally:
        # A failed test leaves RPH running: asked to stop, it ends every tree
        # it started, grandchildren included, which a kill would not.
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(RPH_STOP_WAIT, shield=True):
                await process.wait()
        await end(process)


async def status(port: int) -> dict[str, Any]:
    response = await request(port, "GET", "/rph/status")
    assert response.status == 200
    data: dict[str, Any] = response.json()
    return data


def state_files(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "state").glob("rph/children-*.json"))


@pytest.mark.timeout(40)
async def test_rph_killed_while_a_pausable_runs(tmp_path: Path) -> None:
    port, backend = free_port(), free_port()
    config = write_config(
        tmp_path,
        [
            {
                "type": "ondemand",
                "name": "llm",
                "cmdline": [sys.executable, str(STANDIN), "--port", str(backend)],
                "endpoint": f"http://127.0.0.1:{backend}",
                "port": port,
            },
            {
                "type": "pausable",
                "name": "miner",
                "cmdline": list(python_program(FORKING)),
            },
        ],
    )
    log = tmp_path / "rph.log"
    leftovers: list[int] = []
    try:
        async with rph_process(config, log) as first:
            await wait_accepting(port, first)
            miner = (await status(port))["pausables"][0]
            leftovers = [miner["pid"], *await wait_for_descendants(miner["pid"])]
            assert state_files(tmp_path)

            first.send_signal(signal.SIGKILL)
            await first.wait()

        # The kernel ended the child RPH started; its worker lives on.
        await wait_until_gone(miner["pid"])
        assert not is_gone(leftovers[1])

        async with rph_process(config, log) as second:
            await wait_accepting(port, second)
            # Before it served anything, the leftover worker was ended.
            assert all(is_gone(pid) for pid in leftovers)
            resumed = (await status(port))["pausables"][0]
            assert resumed["pid"] not in leftovers
            second.send_signal(signal.SIGTERM)
            assert await second.wait() == 0

        assert "leftover" in log.read_text()
        # A clean exit stops everything and leaves no state file behind.
        assert is_gone(resumed["pid"])
        assert not state_files(tmp_path)
    finally:
        kill_quietly(leftovers)


@pytest.mark.timeout(40)
async def test_rph_killed_while_apps_run(tmp_path: Path) -> None:
    port = free_port()
    plain_backend, wrapped_backend = free_port(), free_port()
    standin = f"{sys.executable} {STANDIN}"
    config = write_config(
        tmp_path,
        [
            {
                "type": "ondemand",
                "name": "plain",
                "cmdline": f"{standin} --port {plain_backend}",
                "endpoint": f"http://127.0.0.1:{plain_backend}",
                "port": port,
                "path": "/plain",
            },
            {
                # A launcher script: the shell is RPH's child, the server
                # its grandchild, which no parent-death signal reaches.
                "type": "ondemand",
                "name": "wrapped",
                "cmdline": ["sh", "-c", f"{standin} --port {wrapped_backend} & wait"],
                "endpoint": f"http://127.0.0.1:{wrapped_backend}",
                "port": port,
                "path": "/v1",
            },
        ],
    )
    log = tmp_path / "rph.log"
    leftovers: list[int] = []
    try:
        async with rph_process(config, log) as first:
            await wait_accepting(port, first)
            for name in ("plain", "wrapped"):
                started = await request(port, "POST", f"/rph/apps/{name}/start")
                assert started.status == 200
                root = started.json()["pid"]
                leftovers += [root, *descendants(root)]
            assert len(leftovers) == 3  # plain, the shell, the wrapped server

            first.send_signal(signal.SIGKILL)
            await first.wait()

        survivor = leftovers[-1]
        assert not is_gone(survivor)  # still holding its port

        async with rph_process(config, log) as second:
            await wait_accepting(port, second)
            assert all(is_gone(pid) for pid in leftovers)
            # The port is free again: the app starts anew, no 502 "port in use".
            body = b'{"prompt": "hi", "max_tokens": 1}'
            answer = await request(port, "POST", "/v1/completions", body)
            assert answer.status == 200
            second.send_signal(signal.SIGTERM)
            assert await second.wait() == 0
    finally:
        kill_quietly(leftovers)


# -- a healthy RPH --------------------------------------------------------------

# Trio's worker threads retire after 10 s idle; a child armed with
# PR_SET_PDEATHSIG from one of them would die then.
OUTLIVES_THREADS = 15.0


@pytest.mark.timeout(40)
async def test_children_live_on_under_a_healthy_rph() -> None:
    miner = pausable("miner", python_program("import time; time.sleep(3600)"))
    async with running_rph([app()], [miner]) as rph:
        assert (await request(rph.port, "POST", "/rph/apps/llm/start")).status == 200
        before = rph.supervisor.status()
        pids = [before["apps"][0]["pid"], before["pausables"][0]["pid"]]
        # Worker threads run meanwhile (a name to resolve), then go idle.
        await trio.socket.getaddrinfo("localhost", rph.port)

        await trio.sleep(OUTLIVES_THREADS)  # the wait is what is tested
        after = rph.supervisor.status()
        assert [after["apps"][0]["pid"], after["pausables"][0]["pid"]] == pids
        assert not any(is_gone(pid) for pid in pids)
        assert after["pausables"][0]["restarts"] == 0


# -- a port someone else holds -------------------------------------------------


@pytest.mark.timeout(20)
async def test_an_app_whose_port_is_taken_is_not_started() -> None:
    llm = app()
    listeners = await trio.open_tcp_listeners(llm.endpoint_port, host="127.0.0.1")
    try:
        async with running_rph([llm]) as rph:
            body = b'{"prompt": "hi"}'
            answer = await request(rph.port, "POST", "/v1/completions", body)
            assert answer.status == 502
            message = answer.json()["error"]["message"]
            assert f"port {llm.endpoint_port} is already in use" in message
            assert f"pid {os.getpid()}" in message
            assert "python" in message
            assert rph.supervisor.apps["llm"].starts == 0
    finally:
        for listener in listeners:
            await listener.aclose()
