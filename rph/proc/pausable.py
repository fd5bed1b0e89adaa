"""A pausable program: kept running whenever the GPU is not needed.

Pausables are long-running GPU programs (a miner, a training run, a folding
client) that RPH stops before any on-demand app starts and brings back when
the last one has stopped. One that exits by itself is restarted after a
backoff that doubles from 1 s to 60 s and starts over once the program has
run for 60 s: a program that crashes at once does not spin, one that
crashes once a day restarts quickly. What is left of its tree is ended
before the restart.
"""

from __future__ import annotations

import enum
import logging
import subprocess
from typing import Protocol

import trio

from rph.config import PausableConfig
from rph.proc.changes import Changes
from rph.proc.child import Child
from rph.proc.leftovers import Ledger
from rph.proc.ondemand import describe_exit
from rph.redact import mask_cmdline

log = logging.getLogger("rph.proc")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
# A run this long proves the program healthy again: the next crash restarts
# it after BACKOFF_FIRST.
BACKOFF_RESET_AFTER = 60.0


class PausableState(enum.Enum):
    STOPPED = "stopped"
    RUNNING = "running"
    STOPPING = "stopping"
    BACKOFF = "backoff"  # exited by itself; restarts after a delay


class Coordination(Protocol):
    """What a pausable asks of the supervisor."""

    changes: Changes

    def pausables_wanted(self) -> bool: ...

    def pause_reason(self) -> str: ...


def next_delay(previous: float | None, ran_for: float) -> float:
    """The wait before restarting a program that has just exited by itself.

    `previous` is the wait before its last restart, None if it has not been
    restarted since it last proved healthy; `ran_for` is how long it ran
    this time.
    """
    if previous is None or ran_for >= BACKOFF_RESET_AFTER:
        return BACKOFF_FIRST
    return min(previous * 2, BACKOFF_MAX)


class Pausable:
    def __init__(self, config: PausableConfig, ledger: Ledger | None) -> None:
        self.config = config
        self.name = config.name
        self.state = PausableState.STOPPED
        self.child: Child | None = None
        self.restarts = 0
        self.last_delay: float | None = None  # the backoff before the last restart
        self.restart_at: float | None = None
        self.last_lines: tuple[str, ...] = ()
        self._ledger = ledger

    def __repr__(self) -> str:
        return f"<Pausable {self.name} {self.state.value} restarts={self.restarts}>"

    def holds_nothing(self) -> bool:
        """True when no process of this pausable exists."""
        return self.state in (PausableState.STOPPED, PausableState.BACKOFF)

    async def run(self, coordination: Coordination) -> None:
        """Keep the program running while wanted; never returns."""
        changes = coordination.changes
        previous: float | None = None
        why = "starting"
        while True:
            await changes.wait_until(coordination.pausables_wanted)
            child = self._spawn(why)
            exit_reason: str | None
            if child is None:
                ran_for, exit_reason = 0.0, "could not be started"
            else:
                ran_for, exit_reason = await self._hold(child, coordination)
            if ran_for >= BACKOFF_RESET_AFTER:
                previous = None
            if exit_reason is None:
                why = "resuming, the GPU is free"
                continue

            # Exited by itself; what was left of its tree is gone. Wait out
            # the backoff, cut short if the GPU is claimed meanwhile.
            previous = delay = next_delay(previous, ran_for)
            self.restarts += 1
            self.last_delay = delay
            why = f"restart {self.restarts}, after it {exit_reason}"
            log.warning(
                "%s %s after %.1f s; restart %d in %g s",
                self.name,
                exit_reason,
                ran_for,
                self.restarts,
                delay,
            )
            self.restart_at = trio.current_time() + delay
            self._set(PausableState.BACKOFF, changes)
            with trio.move_on_after(delay):
                await changes.wait_until(lambda: not coordination.pausables_wanted())
            self.restart_at = None
            self._set(PausableState.STOPPED, changes)

    def _spawn(self, why: str) -> Child | None:
        config = self.config
        try:
            child = Child(
                self.name, config.cmdline, config.workdir, config.env, self._ledger
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            log.error("%s: cannot run %s: %s", self.name, config.cmdline[0], exc)
            return None
        log.info(
            "%s running (%s), pid %d: %s",
            self.name,
            why,
            child.pid,
            mask_cmdline(config.cmdline),
        )
        return child

    async def _hold(
        self, child: Child, coordination: Coordination
    ) -> tuple[float, str | None]:
        """Run `child` until it exits or is no longer wanted.

        Returns how long it ran, and how it exited when it did by itself
        (None when RPH paused it). Either way no process of its tree is
        left.
        """
        changes = coordination.changes
        self.child = child
        self._set(PausableState.RUNNING, changes)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child.watch)

            async def pause_when_unwanted() -> None:
                await changes.wait_until(lambda: not coordination.pausables_wanted())
                self._set(PausableState.STOPPING, changes)
                log.info("pausing %s (%s)", self.name, coordination.pause_reason())
                await child.stop(self.config.stop_timeout)

            nursery.start_soon(pause_when_unwanted)
            await child.exited.wait()
            if not child.stopping:
                nursery.cancel_scope.cancel()
        ran_for = trio.current_time() - child.started_at

        exit_reason: str | None = None
        if child.stopping:
            log.info("%s paused", self.name)
        else:
            exit_reason = f"exited by itself ({describe_exit(child.returncode)})"
            with trio.CancelScope(shield=True):
                await child.stop(self.config.stop_timeout)
        self.last_lines = tuple(child.last_lines)
        self.child = None
        self._set(PausableState.STOPPED, changes)
        return ran_for, exit_reason

    def _set(self, state: PausableState, changes: Changes) -> None:
        self.state = state
        changes.notify()
