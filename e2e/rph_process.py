"""RPH running as a subprocess on a config of real servers.

`launch` writes a config of three on-demand apps and starts RPH on it the
way a user does (`python -m rph --config FILE`):

    tiny       the provisioned llama.cpp server; never idle-stopped (the
               checks stop and start it through RPH's control endpoints)
    tiny-idle  the same server on a port of its own, idle-stopped quickly
    files      `python -m http.server` serving a folder with a 64 MB file

Every app has a port of its own on RPH and on the backend, so a check can
reach the same server through RPH and directly. The checks talk to RPH only
as users do: HTTP on its ports (the apps and the control endpoints) and the
log it writes to stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from clients import free_port, port_accepts, wait_until

ROOT = Path(__file__).resolve().parent.parent

# The file `python -m http.server` serves: 64 MiB of random bytes.
BIG_FILE_NAME = "big.bin"
BIG_FILE_SIZE = 64 * 1024 * 1024

# The idle app is stopped this many minutes after its last request: short,
# so the check waits seconds, and fractional, as users may write it.
IDLE_TIMEOUT_MINUTES = 0.03

# A model load takes about a second here; a loaded CI machine may take more.
START_TIMEOUT = 120

# How a user starts RPH, here with the interpreter of RPH's virtualenv.
RPH_COMMAND = (sys.executable, "-m", "rph")

# Seconds for RPH to bind its ports.
LISTENS_WITHIN = 30.0

# A control request that starts or stops an app answers once it is done;
# a start takes about a second here.
CONTROL_TIMEOUT = 60.0

# Lines of RPH's log shown with a failure.
LOG_TAIL_LINES = 60


@dataclass
class RunningRPH:
    process: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int]  # app name -> the port RPH listens on for it
    backends: dict[str, int]  # app name -> the port the backend listens on
    served: Path  # the folder `files` serves

    def url(self, app: str) -> str:
        """The app's base URL through RPH."""
        return f"http://127.0.0.1:{self.ports[app]}"

    def direct_url(self, app: str) -> str:
        """The same server's base URL, bypassing RPH (it must be running)."""
        return f"http://127.0.0.1:{self.backends[app]}"

    def status(self, app: str) -> dict[str, Any]:
        """The app's entry in /rph/status."""
        answer = httpx.get(f"{self.url(app)}/rph/status").raise_for_status()
        apps: list[dict[str, Any]] = answer.json()["apps"]
        return next(entry for entry in apps if entry["name"] == app)

    def stop_app(self, app: str) -> None:
        """Stop the app now, through RPH; returns once it has stopped."""
        self._control(app, "stop")
        assert self.status(app)["state"] == "stopped"

    def start_app(self, app: str) -> None:
        """Start (preload) the app, through RPH; returns once it is ready."""
        self._control(app, "start")
        assert self.status(app)["state"] == "ready"

    def _control(self, app: str, action: str) -> None:
        httpx.post(
            f"{self.url(app)}/rph/apps/{app}/{action}", timeout=CONTROL_TIMEOUT
        ).raise_for_status()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_size(self) -> int:
        """Where the log ends now; `wait_for_log` looks only past it."""
        return len(self.log_text())

    def wait_for_log(self, needle: str, after: int, within: float) -> str:
        """Wait for a log line containing `needle` past `after`; returns it."""
        found: list[str] = []

        def appeared() -> bool:
            found[:] = [
                line for line in self.log_text()[after:].splitlines() if needle in line
            ]
            return bool(found)

        wait_until(appeared, f"{needle!r} in RPH's log", within)
        return found[0]

    def log_tail(self) -> str:
        return "\n".join(self.log_text().splitlines()[-LOG_TAIL_LINES:])


def launch(folder: Path, server_argv: list[str]) -> RunningRPH:
    """Write the config and the served folder into `folder`, start RPH.

    Returns once RPH listens on every port; fails the check with RPH's log
    if it exits instead.
    """
    served = folder / "served"
    served.mkdir()
    (served / BIG_FILE_NAME).write_bytes(os.urandom(BIG_FILE_SIZE))

    tiny, tiny_backend = llama_app("tiny", server_argv, None)
    idle, idle_backend = llama_app("tiny-idle", server_argv, IDLE_TIMEOUT_MINUTES)
    files, files_backend = files_app(served)
    entries = [tiny, idle, files]
    config = folder / "config.json"
    config.write_text(json.dumps(entries, indent=2))

    log_path = folder / "rph.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*RPH_COMMAND, "--config", str(config), "--log-level", "DEBUG"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    running = RunningRPH(
        process=process,
        log_path=log_path,
        ports={str(entry["name"]): int(str(entry["port"])) for entry in entries},
        backends={
            "tiny": tiny_backend,
            "tiny-idle": idle_backend,
            "files": files_backend,
        },
        served=served,
    )
    wait_until(
        lambda: (
            process.poll() is not None
            or all(port_accepts(port) for port in running.ports.values())
        ),
        "RPH listening on its ports",
        LISTENS_WITHIN,
    )
    return running


def llama_app(
    name: str, server_argv: list[str], timeout: float | None
) -> tuple[dict[str, object], int]:
    """A config entry for the llama.cpp server, and its backend port."""
    backend = free_port()
    entry = {
        "type": "ondemand",
        "name": name,
        "cmdline": [*server_argv, "--port", str(backend)],
        "endpoint": f"http://127.0.0.1:{backend}",
        "port": free_port(),
        "timeout": timeout,
        "start_timeout": START_TIMEOUT,
        # Python buffers a piped stdout: without this the server's
        # "Disconnected from client" would reach RPH's log only at exit.
        "env": {"PYTHONUNBUFFERED": "1"},
    }
    return entry, backend


def files_app(served: Path) -> tuple[dict[str, object], int]:
    """A config entry for `python -m http.server`, and its backend port."""
    backend = free_port()
    entry = {
        "type": "ondemand",
        "name": "files",
        "cmdline": [
            *(sys.executable, "-m", "http.server", "--bind", "127.0.0.1"),
            *("--directory", str(served), str(backend)),
        ],
        "endpoint": f"http://127.0.0.1:{backend}",
        "port": free_port(),
        "timeout": None,
    }
    return entry, backend
