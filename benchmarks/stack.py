"""RPH as a user runs it, a real process, with the stand-in as its app.

`open_stack` writes a temporary config with two on-demand apps, runs
`python -m rph` on it, and preloads the first:

- `bench`, the stand-in that every warm measure talks to, both directly on
  its own port and through RPH, so the two paths end at the same process;
- `cold`, the stand-in run through `stamped_standin.py` behind a `health`
  path, which the cold-start rounds stop and start again.

Beside RPH runs the bare forwarder of `forwarder.py`, in front of the same
stand-in: the floor, what any relay written in Python costs.

RPH's pid is known, so its CPU time, memory and descriptors can be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks.client import HOST, Connection, request_bytes
from benchmarks.loads import Load

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "examples" / "standin.py"
STAMPED_STANDIN = ROOT / "benchmarks" / "stamped_standin.py"
FORWARDER = ROOT / "benchmarks" / "forwarder.py"

# RPH imports its modules and binds in well under a second; a machine busy
# with other work may take several.
RPH_START_LIMIT = 30.0
PORT_POLL = 0.02
# RPH stops its apps on SIGTERM; the stand-in exits at once.
RPH_STOP_LIMIT = 20.0
# The step in which another process's CPU time is counted: Linux counts it
# in clock ticks (1/SC_CLK_TCK s, 10 ms as a rule), Windows at each timer
# interrupt (1/64 s unless a program asks for more). macOS counts finer;
# the tick is then a safe bound. Less than one step may read as 0.
CPU_TICK = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 1 / 64


@dataclass
class Stack:
    process: psutil.Process  # RPH
    rph_port: int  # the bench app, through RPH
    direct_port: int  # the same stand-in, directly
    floor_port: int  # the same stand-in, through the bare forwarder
    cold_port: int  # the cold app, through RPH
    stamps: Path  # where the cold app writes its stamps
    log: Path  # RPH's stderr

    def cpu_seconds(self) -> float:
        """CPU time RPH has used so far, user and system (not its apps)."""
        times = self.process.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def open_fds(self) -> int:
        if sys.platform == "win32":
            return int(self.process.num_handles())
        return int(self.process.num_fds())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def write_config(folder: Path, load: Load, stamps: Path) -> tuple[Path, dict[str, int]]:
    names = ("rph", "direct", "floor", "cold", "cold_backend")
    ports = {name: free_port() for name in names}
    python = sys.executable
    bench = {
        "type": "ondemand",
        "name": "bench",
        "cmdline": [
            python,
            str(STANDIN),
            "--port",
            str(ports["direct"]),
            "--token-interval",
            str(load.token_interval),
        ],
        "workdir": str(ROOT),
        "endpoint": f"http://{HOST}:{ports['direct']}",
        "port": ports["rph"],
        "timeout": 0,
    }
    cold = {
        "type": "ondemand",
        "name": "cold",
        "cmdline": [
            python,
            str(STAMPED_STANDIN),
            str(stamps),
            "--port",
            str(ports["cold_backend"]),
            "--load-delay",
            str(load.cold_load_delay),
            "--token-interval",
            str(load.token_interval),
        ],
        "workdir": str(ROOT),
        "endpoint": f"http://{HOST}:{ports['cold_backend']}",
        "health": "/health",
        "port": ports["cold"],
        "timeout": 0,
    }
    path = folder / "bench-config.json"
    path.write_text(json.dumps([bench, cold], indent=2))
    return path, ports


@contextlib.asynccontextmanager
async def open_stack(load: Load) -> AsyncIterator[Stack]:
    """Run RPH with the bench apps; the bench app is ready on entry."""
    with tempfile.TemporaryDirectory(prefix="rph-bench-") as scratch:
        folder = Path(scratch)
        stamps = folder / "cold-stamps.txt"
        config, ports = write_config(folder, load, stamps)
        log, floor_log = folder / "rph.log", folder / "forwarder.log"
        rph = (sys.executable, "-m", "rph", "--config", str(config))
        floor = (sys.executable, str(FORWARDER), str(ports["floor"]))
        async with (
            _running(*rph, "--log-level", "WARNING", log=log) as process,
            _running(*floor, str(ports["direct"]), log=floor_log) as forwarder,
        ):
            try:
                await _wait_listening(process, ports["rph"], log)
                await _wait_listening(process, ports["cold"], log)
                await _wait_listening(forwarder, ports["floor"], floor_log)
                await control(ports["rph"], "/rph/apps/bench/start")
                yield Stack(
                    psutil.Process(process.pid),
                    ports["rph"],
                    ports["direct"],
                    ports["floor"],
                    ports["cold"],
                    stamps,
                    log,
                )
            except BaseException:
                # Whatever broke, RPH's own account of it helps most; the
                # forwarder writes only when it fails (a traceback).
                print(f"RPH's log:\n{_tail(log)}", file=sys.stderr)
                if floor_log.stat().st_size:
                    print(f"The forwarder's log:\n{_tail(floor_log)}", file=sys.stderr)
                raise


@contextlib.asynccontextmanager
async def _running(*command: str, log: Path) -> AsyncIterator[Process]:
    """A process run from ROOT, its stderr in `log`; stopped on exit."""
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        yield process
    finally:
        await _stop(process)


async def _wait_listening(process: Process, port: int, log: Path) -> None:
    deadline = time.monotonic() + RPH_START_LIMIT
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"pid {process.pid} exited at start:\n{_tail(log)}")
        try:
            connection = await Connection.open(port)
        except OSError:
            await asyncio.sleep(PORT_POLL)
            continue
        connection.close()
        return
    raise RuntimeError(f"nothing listened on {port} within {RPH_START_LIMIT:g} s")


def _tail(log: Path) -> str:
    return log.read_bytes().decode(errors="replace")[-4000:]


async def control(port: int, path: str) -> None:
    """POST a control request to RPH; returns once it has answered 200."""
    connection = await Connection.open(port)
    try:
        response = await connection.exchange(request_bytes("POST", path, close=True))
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"POST {path} answered {response.status}")


async def _stop(process: Process) -> None:
    if process.returncode is None:
        # SIGTERM: RPH stops its apps, then exits; the forwarder just exits.
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), RPH_STOP_LIMIT)
    except TimeoutError:
        process.kill()
        await process.wait()
