"""The supervisor's state as plain data, for `/rph/status` and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from rph.proc.child import Child
from rph.proc.ondemand import State

if TYPE_CHECKING:
    from rph.proc.supervisor import Supervisor

# Status shows the tail of each program's output, not all that is kept.
STATUS_LINES = 5


def describe(supervisor: Supervisor) -> dict[str, Any]:
    """Every app and pausable with its state; the coordinator's state.

    The keys come in the order README.md shows them, the long
    `last_output` after the counters, so that a pretty-printed answer reads
    like the README's example; a test holds the two together."""
    now = trio.current_time()
    apps = []
    for app in supervisor.apps.values():
        deadline = app.idle_deadline()
        apps.append(
            {
                "name": app.name,
                "state": app.state.value,
                **_process(app.child, now),
                "in_flight": app.in_flight,
                "waiting": supervisor.waiting_for(app.name),
                "idle_stop_in": None
                if deadline is None
                else round(max(0.0, deadline - now), 1),
                "starts": app.starts,
                "restarts": app.crashes,
                "port": app.config.port,
                "path": app.config.path,
                "endpoint": app.config.endpoint,
                "last_output": _last_output(app.child, app.last_lines),
                "ready": app.state is State.READY,
            }
        )
    pausables = []
    for pausable in supervisor.pausables:
        pausables.append(
            {
                "name": pausable.name,
                "state": pausable.state.value,
                **_process(pausable.child, now),
                "restarts": pausable.restarts,
                "restart_in": None
                if pausable.restart_at is None
                else round(max(0.0, pausable.restart_at - now), 1),
                "last_output": _last_output(pausable.child, pausable.last_lines),
            }
        )
    return {
        "coordinator": "on" if supervisor.coordinator_on else "off",
        "apps": apps,
        "pausables": pausables,
    }


def _process(child: Child | None, now: float) -> dict[str, Any]:
    """The running process's pid and uptime, both None when none runs."""
    return {
        "pid": child.pid if child else None,
        "uptime": round(now - child.started_at, 1) if child else None,
    }


def _last_output(child: Child | None, kept_lines: Sequence[str]) -> list[str]:
    """What the program prints now, or printed before it stopped."""
    lines = list(child.last_lines if child else kept_lines)
    return lines[-STATUS_LINES:]
