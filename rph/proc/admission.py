"""Who may use, start or make way for an app: the queue's rules.

Pure functions over the supervisor's state, with no awaits and no clock of
their own, so that each rule reads (and can be tested) on its own:

- a request joins a ready app unless a conflicting request that arrived
  earlier has been overtaken for longer than `SWAP_GRACE`;
- a stopped app starts once nothing that conflicts with it is active or
  waited for earlier;
- a ready app with nothing in flight makes way for the first conflicting
  request in the queue.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rph.errors import RPHError
from rph.proc.ondemand import OnDemandApp, StartAttempt

# How long a request for a conflicting app may wait while the running app
# keeps taking new requests. Long enough that requests sent together are
# served in batches, short enough that a summarizer call is not starved by
# a busy chat model.
SWAP_GRACE = 10.0


@dataclass(eq=False)
class Waiter:
    """A request queued for an app that it cannot use yet."""

    app: OnDemandApp
    since: float
    attempt: StartAttempt | None = None
    admitted: bool = False
    error: RPHError | None = None


def overtaken_too_long(
    app: OnDemandApp, arrived: float, queue: Sequence[Waiter], now: float
) -> bool:
    """True if a request arriving at `arrived` must queue behind a rival.

    A rival is a conflicting request that arrived earlier and has waited
    SWAP_GRACE while `app` was ready. Time spent while the app was loading
    does not count, or a load slower than the grace would send each side's
    requests behind the other's forever.
    """
    return any(
        w.app.conflicts_with(app)
        and w.since < arrived
        and now - max(w.since, app.ready_since) > SWAP_GRACE
        for w in queue
    )


def may_start(
    app: OnDemandApp,
    position: int,
    apps: Iterable[OnDemandApp],
    queue: Sequence[Waiter],
) -> bool:
    """True if the waiter at `position` of `queue` may start `app` now."""
    if any(other.is_active() and other.conflicts_with(app) for other in apps):
        return False
    return not any(w.app.conflicts_with(app) for w in queue[:position])


def first_rival_waiting(
    app: OnDemandApp, queue: Sequence[Waiter]
) -> OnDemandApp | None:
    """The app of the first queued request that `app` must make way for."""
    for waiter in queue:
        if waiter.app.conflicts_with(app):
            return waiter.app
    return None
