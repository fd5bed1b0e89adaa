"""Pausables give the GPU up before an app starts, and take it back after.

Each pausable is a tiny real program; its tree includes a grandchild that
ignores SIGTERM, so "stopped" has to mean the whole tree, not the process
RPH started. The backoff between restarts is checked as a pure function
and on a program killed from outside.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from support import (
    STANDIN,
    app,
    free_port,
    pausable,
    python_program,
    request,
    running_rph,
)

from rph.proc.ondemand import State, describe_exit
from rph.proc.pausable import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    BACKOFF_RESET_AFTER,
    Pausable,
    PausableState,
    next_delay,
)

# A pausable whose tree has a grandchild that ignores the polite SIGTERM:
# only the kill after stop_timeout ends it. Each prints its pid once up.
MINER = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", '''
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("worker", os.getpid(), flush=True)
time.sleep(3600)
'''])
print("miner up", flush=True)
time.sleep(3600)
"""

# Writes which of the pids listed in argv[1] still run into argv[2], then
# becomes the stand-in backend on port argv[3]: the app's first act is to
# look whether the pausable's tree is gone.
LOOK_THEN_SERVE = """
import os, sys, psutil
alive = []
for pid in map(int, open(sys.argv[1]).read().split()):
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            alive.append(pid)
    except psutil.NoSuchProcess:
        pass
open(sys.argv[2], "w").write(" ".join(map(str, alive)))
os.execv(sys.executable, [sys.executable, sys.argv[4], "--port", sys.argv[3]])
"""

SLEEPER = "import time; print('up', flush=True); time.sleep(3600)"

COMPLETION = b'{"prompt": "hi", "max_tokens": 2}'

# Polling interval for conditions nothing notifies about (output lines).
POLL = 0.02


async def wait_for(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - output lines notify nobody
        await trio.sleep(POLL)


def tree_pids(miner: Pausable) -> list[int]:
    assert miner.child is not None
    root = psutil.Process(miner.child.pid)
    return [root.pid] + [p.pid for p in root.children(recursive=True)]


def runs(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- the backoff as a pure function ---------------------------------------

delays = st.floats(min_value=BACKOFF_FIRST, max_value=BACKOFF_MAX)
durations = st.floats(min_value=0, max_value=10 * BACKOFF_RESET_AFTER)


@given(previous=st.none() | delays, ran_for=durations)
def test_backoff_stays_between_first_and_max(
    previous: float | None, ran_for: float
) -> None:
    assert BACKOFF_FIRST <= next_delay(previous, ran_for) <= BACKOFF_MAX


@given(previous=st.none() | delays, ran_for=durations)
def test_a_first_crash_or_one_after_a_healthy_run_waits_the_least(
    previous: float | None, ran_for: float
) -> None:
    if previous is None or ran_for >= BACKOFF_RESET_AFTER:
        assert next_delay(previous, ran_for) == BACKOFF_FIRST


@given(
    previous=delays,
    ran_for=st.floats(min_value=0, max_value=BACKOFF_RESET_AFTER, exclude_max=True),
)
def test_a_quick_crash_waits_twice_as_long_as_before_up_to_the_max(
    previous: float, ran_for: float
) -> None:
    assert next_delay(previous, ran_for) == min(2 * previous, BACKOFF_MAX)


@given(crashes=st.integers(min_value=1, max_value=20))
def test_quick_crashes_wait_1_2_4_up_to_60_seconds(crashes: int) -> None:
    waited: list[float] = []
    previous = None
    for _ in range(crashes):
        previous = next_delay(previous, ran_for=0.5)
        waited.append(previous)
    expected = [min(2.0**n, BACKOFF_MAX) for n in range(crashes)]
    assert waited == expected


# -- real programs ----------------------------------------------------------


@pytest.mark.timeout(30)
async def test_pausable_tree_is_gone_before_the_app_starts_and_back_after(
    tmp_path: Path,
) -> None:
    pids_file, seen_file = tmp_path / "miner-pids", tmp_path / "seen-at-start"
    backend = free_port()
    paths = [pids_file, seen_file, backend, STANDIN]
    look_then_serve = (*python_program(LOOK_THEN_SERVE), *map(str, paths))
    llm = app(cmdline=look_then_serve, backend_port=backend, timeout=0.5)
    miner_config = pausable("miner", python_program(MINER), stop_timeout=0.5)

    async with running_rph([llm], [miner_config]) as rph:
        miner = rph.supervisor.pausables[0]
        await wait_for(lambda: any("worker" in line for line in miner_lines(miner)))
        before = tree_pids(miner)
        assert len(before) == 2
        assert all(runs(pid) for pid in before)
        pids_file.write_text(" ".join(map(str, before)))

        response = await request(rph.port, "POST", "/v1/completions", COMPLETION)
        assert response.status == 200
        # The app looked as its first act: nothing of the miner was left,
        # the worker that ignores SIGTERM included.
        assert seen_file.read_text() == ""
        assert miner.state is PausableState.STOPPED

        # The idle stop gives the GPU back to the miner, a new tree.
        llm_app = rph.supervisor.apps["llm"]
        await rph.supervisor.changes.wait_until(
            lambda: (
                llm_app.state is State.STOPPED and miner.state is PausableState.RUNNING
            )
        )
        assert miner.child is not None
        assert runs(miner.child.pid)
        assert miner.child.pid not in before
        assert miner.restarts == 0  # paused and resumed, never crashed


def miner_lines(miner: Pausable) -> list[str]:
    return list(miner.child.last_lines) if miner.child else []


def runs_in_place_of(miner: Pausable, victim: int) -> Callable[[], bool]:
    def condition() -> bool:
        child = miner.child
        running = miner.state is PausableState.RUNNING
        return running and child is not None and child.pid != victim

    return condition


@pytest.mark.timeout(30)
async def test_a_pausable_killed_from_outside_comes_back_ever_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rph")
    miner_config = pausable("miner", python_program(SLEEPER))
    async with running_rph([app()], [miner_config]) as rph:
        miner = rph.supervisor.pausables[0]
        changes = rph.supervisor.changes
        waited = []
        for restart in (1, 2):
            await changes.wait_until(lambda: miner.state is PausableState.RUNNING)
            assert miner.child is not None
            victim = miner.child.pid
            killed_at = trio.current_time()
            os.kill(victim, signal.SIGKILL)
            await changes.wait_until(runs_in_place_of(miner, victim))
            assert miner.child is not None
            assert miner.restarts == restart
            waited.append(miner.child.started_at - killed_at)
            assert miner.last_delay == 2.0 ** (restart - 1)

        assert waited[0] >= 1.0
        assert waited[1] >= 2.0

        status = rph.supervisor.status()["pausables"][0]
        assert status["restarts"] == 2
        assert status["state"] == "running"

    messages = [r.getMessage() for r in caplog.records]
    killed = describe_exit(-signal.SIGKILL)
    assert f"miner exited by itself ({killed})" in "\n".join(messages)
    assert any("restart 1 in 1 s" in m for m in messages)
    assert any("restart 2 in 2 s" in m for m in messages)
    assert any("restart 2, after it exited by itself" in m for m in messages)


@pytest.mark.timeout(30)
async def test_an_app_request_does_not_wait_for_a_pausable_backoff() -> None:
    # The pausable exits at once, again and again; a request meanwhile is
    # answered without waiting for the pausable's growing backoff.
    crasher = pausable("crasher", python_program("raise SystemExit(3)"))
    async with running_rph([app()], [crasher]) as rph:
        pausable_ = rph.supervisor.pausables[0]
        changes = rph.supervisor.changes
        await changes.wait_until(lambda: pausable_.restarts >= 2)
        response = await request(rph.port, "POST", "/v1/completions", COMPLETION)
        assert response.status == 200
        assert pausable_.holds_nothing()
