"""A pausable program: kept running whenever the GPU is not needed.

Pausables are long-running GPU programs (a miner, a training run, a folding
client) that RPH stops before any on-demand app starts and brings back when
the last one has stopped. One that exits by itself is restarted after a
backoff that doubles from 1 s to 60 s and starts over once the program has
run for 60 s: a program that crashes at once does not spin, one that
crashes once a day restarts quickly.
"""

from __future__ import annotations

import enum
import logging
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
    BACKOFF = "waiting to restart"


class Coordination(Protocol):
    """What a pausable asks of the supervisor."""

    changes: Changes

    def pausables_wanted(self) -> bool: ...

    def pause_reason(self) -> str: ...


def next_backoff(current: float, ran_for: float) -> float:
    """The delay before the restart after this one, given how long it ran."""
    if ran_for >= BACKOFF_RESET_AFTER:
        return BACKOFF_FIRST
    return min(current * 2, BACKOFF_MAX)


class Pausable:
    def __init__(self, config: PausableConfig, ledger: Ledger | None) -> None:
        self.config = config
        self.name = config.name
        self.state = PausableState.STOPPED
        self.child: Child | None = None
        self.restarts = 0
        self.delay = BACKOFF_FIRST
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
        delay = BACKOFF_FIRST
        while True:
            await changes.wait_until(coordination.pausables_wanted)
            child = self._spawn()
            if child is None:
                exited_by_itself, ran_for = True, 0.0
            else:
                exited_by_itself, ran_for = await self._hold(child, coordination)
            if not exited_by_itself:
                continue

            # Exited by itself: end what is left of its tree, then wait out
            # the backoff (cut short if the GPU is claimed meanwhile).
            delay = next_backoff(delay, ran_for) if self.restarts else delay
            self.restarts += 1
            self.delay = delay
            self._set(PausableState.BACKOFF, changes)
            log.warning("%s restarting in %g s", self.name, delay)
            with trio.move_on_after(delay):
                await changes.wait_until(lambda: not coordination.pausables_wanted())
            self._set(PausableState.STOPPED, changes)

    def _spawn(self) -> Child | None:
        config = self.config
        try:
            child = Child(
                self.name, config.cmdline, config.workdir, config.env, self._ledger
            )
        except OSError as exc:
            log.error("%s: cannot run %s: %s", self.name, config.cmdline[0], exc)
            return None
        log.info("%s running: %s", self.name, mask_cmdline(config.cmdline))
        return child

    async def _hold(
        self, child: Child, coordination: Coordination
    ) -> tuple[bool, float]:
        """Run `child` until it exits or is no longer wanted.

        Returns whether it exited by itself, and for how long it ran.
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
        by_itself = not child.stopping
        if by_itself:
            log.warning(
                "%s exited by itself (%s) after %.0f s",
                self.name,
                describe_exit(child.returncode),
                ran_for,
            )
            with trio.CancelScope(shield=True):
                await child.stop(self.config.stop_timeout)
        else:
            log.info("%s paused", self.name)
        self.last_lines = tuple(child.last_lines)
        self.child = None
        self._set(PausableState.STOPPED, changes)
        return by_itself, ran_for

    def _set(self, state: PausableState, changes: Changes) -> None:
        self.state = state
        changes.notify()
