"""A supervisor's life: its background tasks, its end, a kill at once.

`open_supervisor` runs the supervisor's tasks (each pausable, each app's
idle timer) shielded from the caller's cancellation: a Ctrl-C that cancels
the listeners must not also cancel the tasks that stop the trees, or
children would outlive RPH. On exit every tree is stopped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from rph.config import Config
from rph.proc import platform
from rph.proc.leftovers import Ledger
from rph.proc.ondemand import OnDemandApp
from rph.proc.supervisor import Supervisor


@asynccontextmanager
async def open_supervisor(
    config: Config, ledger: Ledger | None = None
) -> AsyncIterator[Supervisor]:
    """Run a supervisor for `config`; on exit every tree is stopped."""
    async with trio.open_nursery() as nursery:
        supervisor: Supervisor = await nursery.start(_run_supervisor, config, ledger)
        try:
            yield supervisor
        finally:
            with trio.CancelScope(shield=True):
                await supervisor.shutdown()


async def _run_supervisor(
    config: Config,
    ledger: Ledger | None,
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(config, ledger, nursery)
            for pausable in supervisor.pausables:
                nursery.start_soon(pausable.run, supervisor)
            for app in supervisor.apps.values():
                if app.config.timeout is not None:
                    nursery.start_soon(watch_idle, supervisor, app)
            task_status.started(supervisor)
            await supervisor.closed.wait()
            nursery.cancel_scope.cancel()


async def watch_idle(supervisor: Supervisor, app: OnDemandApp) -> None:
    """Stop `app` `timeout` after its last request; never returns."""
    while True:
        await supervisor.changes.wait_until(lambda: app.idle_deadline() is not None)
        deadline = app.idle_deadline()
        if deadline is None:
            continue  # leased again, by a lane, since
        # Asleep until the deadline, not woken by every request's end: a
        # later request moves the deadline, which is seen on waking.
        await trio.sleep_until(deadline)
        supervisor.stop_idle(app, deadline)


def kill_every_tree(supervisor: Supervisor) -> None:
    """The second Ctrl-C: kill every tree at once, waiting for nothing."""
    children = [app.child for app in supervisor.apps.values()]
    children += [pausable.child for pausable in supervisor.pausables]
    for child in children:
        if child is not None:
            platform.kill_group(child.pid)
            platform.kill_all(platform.tree_members(child.pid, child.create_time))
