"""RPH as a whole: end leftovers, supervise, listen on every port.

`serve` is what `python -m rph` runs and what the tests run in-process:
one supervisor and one listener per configured port in one nursery.
Cancelling it stops listening first, then every app and pausable tree.
"""

from __future__ import annotations

import logging

import trio

from rph.config import Config
from rph.net.listener import serve_port
from rph.net.router import PortRouter
from rph.proc.leftovers import Ledger
from rph.proc.lifetime import open_supervisor
from rph.proc.supervisor import Supervisor

log = logging.getLogger("rph")


async def serve(
    config: Config,
    ledger: Ledger | None = None,
    *,
    task_status: trio.TaskStatus[tuple[Supervisor, dict[int, int]]] = (
        trio.TASK_STATUS_IGNORED
    ),
) -> None:
    """Run RPH for `config` until cancelled.

    `started` gets the supervisor and, for each configured port, the port
    actually bound (they differ only for port 0, which tests use).
    """
    if ledger is not None:
        ended = await ledger.end_leftovers()
        if ended:
            log.warning("ended %d process(es) left by a killed RPH", ended)
    try:
        async with (
            open_supervisor(config, ledger) as supervisor,
            trio.open_nursery() as listeners,
        ):
            bound: dict[int, int] = {}
            for port, host in config.ports().items():
                apps = [app for app in config.apps if app.port == port]
                router = PortRouter(apps)
                bound[port] = await listeners.start(
                    serve_port, host, port, router, supervisor
                )
            task_status.started((supervisor, bound))
            # Pausables alone (no port to listen on) still run until cancelled.
            await trio.sleep_forever()
    finally:
        if ledger is not None:
            ledger.close()
