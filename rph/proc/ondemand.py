"""One on-demand app: its state, its child, its requests, its idle clock.

An app moves through `stopped → starting → ready → stopping → stopped`. The
supervisor decides *when* it moves (conflicts, queueing, pausables); this
module holds what an app is at any moment and does the moving: spawn and
wait for readiness, stop the tree. A start is shared by every request that
arrives while it runs, and its outcome (ready, or an error with a status)
reaches all of them at once.
"""

from __future__ import annotations

import enum
import logging
import subprocess
import time
from collections.abc import Sequence

import trio

from rph.config import AppConfig
from rph.errors import NOTHING_PRINTED, BackendFailed, RPHError, StartTimeout
from rph.proc import ports, readiness
from rph.proc.child import Child
from rph.proc.leftovers import Ledger
from rph.proc.readiness import Endpoint
from rph.redact import mask_cmdline

log = logging.getLogger("rph.proc")

# While a start takes long the log says so this often, with the last line
# the app printed, so a person watching knows it is loading, not hung.
STILL_WAITING_EVERY = 10.0


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


class StartAttempt:
    """One start of an app, awaited by every request that arrived for it."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: RPHError | None = None

    def finish(self, error: RPHError | None = None) -> None:
        self.error = error
        self.done.set()


class OnDemandApp:
    """What one configured on-demand app is doing now."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = State.STOPPED
        self.child: Child | None = None
        self.endpoint: Endpoint | None = None
        self.attempt: StartAttempt | None = None
        self.in_flight = 0
        self.last_active = trio.current_time()
        self.ready_since = 0.0
        self.starts = 0
        self.crashes = 0
        self.stop_requested = False
        self.last_lines: Sequence[str] = ()

    def __repr__(self) -> str:
        return (
            f"<App {self.name} {self.state.value} in_flight={self.in_flight}"
            f" starts={self.starts} crashes={self.crashes}>"
        )

    def is_active(self) -> bool:
        """True while the app holds (or is about to hold) the GPU."""
        return self.state is not State.STOPPED

    def idle_deadline(self) -> float | None:
        """When the idle stop is due, or None while it cannot happen."""
        timeout = self.config.timeout
        if timeout is None or self.state is not State.READY or self.in_flight:
            return None
        return self.last_active + timeout

    def conflicts_with(self, other: OnDemandApp) -> bool:
        """Conflicts are symmetric: either side may name the other."""
        return (
            other.name in self.config.conflicts_with
            or self.name in other.config.conflicts_with
        )

    async def endpoint_holder(self) -> ports.Holder | None:
        """Who accepts connections on the app's endpoint now, or None."""
        return await ports.holder_of(
            self.config.endpoint_host, self.config.endpoint_port
        )

    def endpoint_taken(self, holder: ports.Holder) -> BackendFailed:
        """The 502 for an endpoint that `holder` holds before a start."""
        return BackendFailed(
            f"{self.name}: port {self.config.endpoint_port} is already in use by"
            f" {holder.description}; RPH will not send requests to a program it"
            " did not start. Stop that program or change the app's endpoint."
        )

    async def check_endpoint_free(self) -> None:
        """Raise BackendFailed (502) if something already listens there."""
        holder = await self.endpoint_holder()
        if holder:
            raise self.endpoint_taken(holder)

    async def start(self, ledger: Ledger | None, nursery: trio.Nursery) -> None:
        """Spawn the child and wait until it is ready.

        The child's watcher runs in `nursery`, which must outlive the app's
        run. Raises BackendFailed (502) if the port is already taken or the child
        exits first, StartTimeout (504) after `start_timeout`; either way no
        process of the tree is left behind.
        """
        config = self.config
        began = trio.current_time()
        await self.check_endpoint_free()

        log.info("starting %s: %s", self.name, mask_cmdline(config.cmdline))
        try:
            self.child = Child(
                self.name, config.cmdline, config.workdir, config.env, ledger
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise BackendFailed(
                f"{self.name}: cannot run {config.cmdline[0]}: {exc}"
            ) from None
        nursery.start_soon(self.child.watch)
        self.starts += 1
        try:
            with trio.fail_after(config.start_timeout):
                self.endpoint = await self._wait_ready(self.child, began)
        except trio.TooSlowError:
            await self._discard_child()
            raise StartTimeout(
                f"{self.name} was not ready after {config.start_timeout:g} s"
                " (start_timeout).",
                last_output=self.last_output(),
            ) from None
        except BaseException:
            await self._discard_child()
            raise
        self.ready_since = trio.current_time()
        log.info("%s ready after %.1f s", self.name, self.ready_since - began)

    async def _wait_ready(self, child: Child, began: float) -> Endpoint:
        config = self.config
        async with trio.open_nursery() as nursery:
            ready: list[Endpoint] = []

            async def poll() -> None:
                ready.append(
                    await readiness.wait_ready(
                        config.endpoint_host, config.endpoint_port, config.health
                    )
                )
                nursery.cancel_scope.cancel()

            async def report_progress() -> None:
                while True:
                    await trio.sleep(STILL_WAITING_EVERY)
                    waited = trio.current_time() - began
                    last = child.last_lines[-1] if child.last_lines else NOTHING_PRINTED
                    log.info(
                        "still waiting for %s, %.0f s: %s", self.name, waited, last
                    )

            nursery.start_soon(poll)
            nursery.start_soon(report_progress)
            await child.exited.wait()
            nursery.cancel_scope.cancel()
        if ready:
            return ready[0]
        raise BackendFailed(
            f"{self.name} exited while starting ({describe_exit(child.returncode)}).",
            last_output=child.last_lines,
        )

    async def stop(self, reason: str) -> None:
        """Stop the whole tree; returns when every process has exited."""
        child = self.child
        if child is None:
            return
        log.info("stopping %s (%s)", self.name, reason)
        began = time.monotonic()
        with trio.CancelScope(shield=True):
            await child.stop(self.config.stop_timeout)
        self.last_lines = tuple(child.last_lines)
        self.child = None
        self.endpoint = None
        log.info(
            "%s stopped after %.1f s (%s)",
            self.name,
            time.monotonic() - began,
            describe_exit(child.returncode),
        )

    async def _discard_child(self) -> None:
        if self.child is not None:
            with trio.CancelScope(shield=True):
                await self.child.stop(self.config.stop_timeout)
            self.last_lines = tuple(self.child.last_lines)
            self.child = None

    def last_output(self) -> Sequence[str]:
        """The last lines the app printed, running or stopped."""
        return self.child.last_lines if self.child else self.last_lines


def describe_exit(code: int | None) -> str:
    """'exit code 1' or 'killed by signal 9' for a child's return code."""
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"
