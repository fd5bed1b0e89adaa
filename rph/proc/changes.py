"""A broadcast of "something changed", for tasks that wait on a condition.

The supervisor's state (apps, queue, pausables, coordinator) changes in
small synchronous steps, in the run loop, or for in-flight counts in the
threads of lanes too (which notify through the run loop when
`has_waiters`). Any task that waits for a condition on
that state re-checks it after every change instead of holding a separate
event per condition.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class Changes:
    def __init__(self) -> None:
        self._event = trio.Event()
        # Every lease notifies twice, and nearly always nobody waits: the
        # event is only spent (and replaced) when a task waits on it.
        self._waiting = 0

    @property
    def has_waiters(self) -> bool:
        """Whether a task waits; read from threads, so never reset early."""
        return bool(self._waiting)

    def notify(self) -> None:
        """Wake every task waiting in `wait` or `wait_until`."""
        if self._waiting:
            self._event.set()
            self._event = trio.Event()

    async def wait(self) -> None:
        """Block until the next `notify`."""
        self._waiting += 1
        try:
            await self._event.wait()
        finally:
            self._waiting -= 1

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Block until `condition()` holds; returns at once if it does.

        The waiter counts before the condition is read: a thread that
        changes the state in between sees it and notifies.
        """
        self._waiting += 1
        try:
            while not condition():
                await self._event.wait()
        finally:
            self._waiting -= 1
