"""How many threads of one kind may run at once, counted per trio run.

Lanes and relay threads each have a limit, read when the run first needs
it (tests lower it before RPH starts), and a run of its own: RPH in tests
runs many trio runs in one process.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class ThreadLimit:
    """A trio.CapacityLimiter per run, of the capacity `capacity()` says."""

    def __init__(self, name: str, capacity: Callable[[], int]) -> None:
        self.name = name
        self._capacity = capacity
        self._of_run: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar(
            name
        )

    def __repr__(self) -> str:
        return f"<ThreadLimit {self.name}>"

    @property
    def limiter(self) -> trio.CapacityLimiter:
        try:
            return self._of_run.get()
        except LookupError:
            limiter = trio.CapacityLimiter(self._capacity())
            self._of_run.set(limiter)
            return limiter

    def has_room(self) -> bool:
        """Whether one more thread may start now."""
        return self.limiter.available_tokens > 0
