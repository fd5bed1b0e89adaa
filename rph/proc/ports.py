"""Who already listens on a port RPH is about to start an app on.

If an app's endpoint accepts connections before RPH started the app, the
answers would come from a leftover or a stranger, not from the configured
program: RPH refuses to start, naming the process that holds the port. It
looks before a request queues too, so that nothing is paused or stopped
for a start that would be refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil
import trio

from rph.proc import readiness
from rph.redact import mask_cmdline

if TYPE_CHECKING:
    from rph.proc.child import Child
    from rph.proc.ondemand import OnDemandApp

log = logging.getLogger("rph.proc")

# Enough of a command line to recognise the program, short enough for a
# one-line error.
SHOWN_COMMAND_CHARS = 200


@dataclass(frozen=True)
class Holder:
    """Who accepts connections on a port."""

    pid: int | None  # None when the system does not say
    description: str  # "pid N (its command line)", or "another program"


async def holder_of(host: str, port: int) -> Holder | None:
    """Whoever accepts connections there, or None."""
    try:
        candidates = await readiness.resolve(host, port)
    except OSError:
        return None
    if await readiness.accepts_connections(candidates) is None:
        return None
    # Listing every socket and reading a command line take milliseconds,
    # and requests keep asking while the port stays taken: not in the loop.
    return await trio.to_thread.run_sync(_holder_listening_on, port)


def _holder_listening_on(port: int) -> Holder:
    pid = listener_pid(port)
    shown = describe_process(pid) if pid is not None else None
    return Holder(pid, shown or "another program")


async def refuse_if_taken(
    app: OnDemandApp, apps: Iterable[OnDemandApp], trees: list[Child]
) -> None:
    """Raise BackendFailed (502) if a program RPH did not start holds the
    endpoint of `app`, which is stopped; `trees` are those RPH runs.

    Checked before a request queues: a queued request pauses the pausables
    and stops conflicting apps, for nothing if the start is refused after.
    The start looks again: the port may be taken meanwhile, or held by a
    pausable that this look cannot tell.
    """
    port = app.config.endpoint_port
    if any(a.is_active() and a.config.endpoint_port == port for a in apps):
        return  # an app of RPH's holds it, and makes way before the start
    holder = await app.endpoint_holder()
    if holder is None:
        return
    # Walking the process trees reads the process table: not in the loop.
    if await trio.to_thread.run_sync(_may_be_ours, holder.pid, trees):
        return
    error = app.endpoint_taken(holder)
    log.error("%s", error.log_text())
    raise error


def _may_be_ours(pid: int | None, trees: list[Child]) -> bool:
    """True if `pid` is of one of `trees`, or if the system did not say
    whose it is (None) while any of them runs."""
    if pid is None:
        return bool(trees)
    return any(tree.has_member(pid) for tree in trees)


def describe_listener(port: int) -> str | None:
    """'pid N (its command line)' of the process listening on `port`, or None."""
    pid = listener_pid(port)
    return describe_process(pid) if pid is not None else None


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on `port`, if the system says."""
    # Listing sockets may need privileges on macOS; then the port is only
    # reported as taken, without a name.
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN
            if listening and conn.laddr and conn.laddr.port == port:
                return conn.pid
    return None


def describe_process(pid: int) -> str | None:
    """'pid N (its command line)', or None if it is gone."""
    with contextlib.suppress(psutil.Error, OSError):
        # A stranger's command line may carry its secrets; this text
        # reaches the log and clients' error messages.
        shown = mask_cmdline(psutil.Process(pid).cmdline())[:SHOWN_COMMAND_CHARS]
        return f"pid {pid} ({shown})"
    return None
