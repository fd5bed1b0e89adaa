"""Leasing apps to requests: starts, conflicts, queueing, pausables, status.

`net/` asks for one thing: `lease(name)`, a ready endpoint of that app, kept
alive while the lease is held. Everything that decides when an app starts
or stops happens here, in `_reconcile`, a synchronous step that runs after
every change and so never sees the state half-way:

1. Waiters for a ready app are admitted, unless a request for a
   conflicting app that arrived before them has waited longer than
   `SWAP_GRACE` while the app was ready (then they queue behind it, so a
   busy app cannot starve the other side).
2. A ready app with no request in flight is stopped when a conflicting
   app is waited for, when it was asked to stop, or at shutdown.
3. Stopped apps that are waited for start, in arrival order, once nothing
   that conflicts with them is active or waited for earlier.
4. Pausables run while the coordinator is on and no app is active.

Requests for two conflicting apps sent at once are thus served in batches
(all of A, then all of B), and an app never stops under a request.

Plain requests to a ready app are also leased from the threads that answer
them (net/lane), without a trip through the run loop: `lease_at_once` and
`release_from_thread`. A lock guards what they touch (the in-flight counts
and the decisions that read them), so a thread never joins an app that the
run loop is stopping, and the run loop never stops an app a thread holds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from rph.config import Config
from rph.config_keys import SECONDS_PER_MINUTE
from rph.errors import BackendFailed, NoRoute, NothingRunning, RPHError
from rph.proc import admission, ports
from rph.proc.admission import Waiter
from rph.proc.changes import Changes
from rph.proc.child import Child
from rph.proc.leftovers import Ledger
from rph.proc.ondemand import OnDemandApp, StartAttempt, State, describe_exit
from rph.proc.pausable import Pausable
from rph.proc.readiness import Endpoint
from rph.proc.status import describe

log = logging.getLogger("rph.proc")


class Supervisor:
    """Owns every app and pausable of one config."""

    def __init__(
        self, config: Config, ledger: Ledger | None, nursery: trio.Nursery
    ) -> None:
        self.apps = {app.name: OnDemandApp(app) for app in config.apps}
        self.pausables = [Pausable(p, ledger) for p in config.pausables]
        self.coordinator_on = True
        self.changes = Changes()
        self._queue: list[Waiter] = []
        self._ledger = ledger
        self._nursery = nursery
        self._shutting_down = False
        self._starts: dict[str, trio.CancelScope] = {}
        # How often each app has become stopped (a stop ended, a start failed).
        self._stops = dict.fromkeys(self.apps, 0)
        self.closed = trio.Event()
        # Held for every change of an in-flight count and every decision
        # that reads one; never across an await.
        self._lock = threading.Lock()
        # What threads need of the run loop: its clock, and a way back in.
        self._clock = trio.lowlevel.current_clock()
        self._token = trio.lowlevel.current_trio_token()

    def __repr__(self) -> str:
        apps = ", ".join(repr(app) for app in self.apps.values())
        return f"<Supervisor queue={len(self._queue)} {apps}>"

    # -- leases ---------------------------------------------------------

    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Endpoint]:
        """A ready endpoint of app `name`, kept alive while held.

        Starts the app (after stopping what conflicts with it) if needed.
        Raises the start's error (502, 504) to every request that waited
        for it.
        """
        app = self.apps[name]
        with self._lock:
            joined = self._may_join(app, trio.current_time())
            if joined:
                app.in_flight += 1
        if joined:
            self.changes.notify()
        else:
            await self._wait_for_turn(app)
        try:
            assert app.endpoint is not None
            yield app.endpoint
        finally:
            self._release(app)

    @asynccontextmanager
    async def lease_running(self, names: list[str]) -> AsyncIterator[Endpoint]:
        """Like `lease`, for one of `names` that runs already; never starts.

        The app with requests in flight is preferred: that is the one a
        passive request such as an abort is meant for. Raises
        NothingRunning (503) when none runs.
        """
        ready = [self.apps[n] for n in names if self.apps[n].state is State.READY]
        if not ready:
            raise NothingRunning(
                "no app that could answer this request is running, and this"
                " path never starts one"
            )
        app = max(ready, key=lambda a: a.in_flight > 0)
        with self._lock:
            app.in_flight += 1
        self.changes.notify()
        try:
            assert app.endpoint is not None
            yield app.endpoint
        finally:
            # A passive request (a status poll, an abort) is not use: it
            # does not put the idle stop off.
            self._release(app, active=False)

    def _release(self, app: OnDemandApp, active: bool = True) -> None:
        with self._lock:
            app.in_flight -= 1
            if active:
                app.last_active = trio.current_time()
            idle = app.in_flight == 0
        if idle:
            self._reconcile()

    def lease_at_once(self, name: str) -> Endpoint | None:
        """For a thread: a ready endpoint of app `name`, or None if the
        request would have to wait (the run loop's `lease` does that).

        The lease is held until `release_from_thread`.
        """
        app = self.apps[name]
        with self._lock:
            if not self._may_join(app, self._clock.current_time()):
                return None
            app.in_flight += 1
        if self.changes.has_waiters:
            self._token.run_sync_soon(self.changes.notify)
        return app.endpoint

    def release_from_thread(self, name: str) -> None:
        """Give back a lease of `lease_at_once`."""
        app = self.apps[name]
        with self._lock:
            app.in_flight -= 1
            app.last_active = self._clock.current_time()
            # The run loop decides again only if an idle app matters to
            # anyone: a request waits, a stop is due, a task watches.
            wanted = not app.in_flight and (
                self._queue
                or app.stop_requested
                or self._shutting_down
                or self.changes.has_waiters
            )
        if wanted:
            self._token.run_sync_soon(self._reconcile)

    async def _wait_for_turn(self, app: OnDemandApp) -> None:
        waiter = Waiter(app, trio.current_time())
        if app.state is State.STOPPED:
            trees = [a.child for a in self.apps.values()]
            trees += [p.child for p in self.pausables]
            running = [child for child in trees if child is not None]
            await ports.refuse_if_taken(app, self.apps.values(), running)
        if app.state is State.STARTING:
            waiter.attempt = app.attempt
        with self._lock:
            self._queue.append(waiter)
        try:
            self._reconcile()
            while not waiter.admitted:
                if waiter.error:
                    raise waiter.error
                await self.changes.wait()
        except BaseException:
            # Cancelled (the client left) just as it was admitted: the lease
            # that was counted for it is given back.
            if waiter.admitted:
                self._release(app)
            raise
        finally:
            with self._lock:
                queued = waiter in self._queue
                if queued:
                    self._queue.remove(waiter)
            if queued:
                self._reconcile()

    # -- control --------------------------------------------------------

    def app(self, name: str) -> OnDemandApp:
        try:
            return self.apps[name]
        except KeyError:
            raise NoRoute(f"no on-demand app is named {name!r}") from None

    async def preload(self, name: str) -> None:
        """Start app `name` now, as a request would; returns when ready."""
        async with self.lease(name):
            pass

    async def unload(self, name: str) -> None:
        """Stop app `name` after its in-flight requests; returns when stopped.

        Requests that arrive meanwhile wait, and start it again afterwards.
        """
        app = self.app(name)
        if not app.is_active():
            return
        stops = self._stops[name]
        app.stop_requested = True
        self._reconcile()
        # A waiting request may start the app again in the very step that
        # marks it stopped: the count of stops tells that this one is done.
        await self.changes.wait_until(lambda: self._stops[name] > stops)

    async def set_coordinator(self, on: bool) -> None:
        """Switch the coordinator; returns once no pausable runs, if off.

        On, the pausables start now if no app runs, else once none does.
        """
        if on != self.coordinator_on:
            log.info("coordinator %s", "on" if on else "off")
        self.coordinator_on = on
        self._reconcile()
        if not on:
            await self.changes.wait_until(self._pausables_hold_nothing)

    def waiting_for(self, name: str) -> int:
        """How many requests wait for app `name` to start or to be free."""
        return sum(1 for waiter in self._queue if waiter.app.name == name)

    def pausables_wanted(self) -> bool:
        return (
            self.coordinator_on
            and not self._shutting_down
            and not self._queue
            and not any(app.is_active() for app in self.apps.values())
        )

    def pause_reason(self) -> str:
        if self._shutting_down:
            return "shutdown"
        if not self.coordinator_on:
            return "coordinator off"
        active = [app.name for app in self.apps.values() if app.is_active()]
        waited = [w.app.name for w in self._queue]
        return f"{', '.join(dict.fromkeys(active + waited))} needs the GPU"

    # -- the one place that decides -------------------------------------

    def _reconcile(self) -> None:
        with self._lock:
            self._decide()
        self.changes.notify()

    def _decide(self) -> None:
        for waiter in self._queue:
            if not waiter.admitted and self._may_join(waiter.app, waiter.since):
                waiter.admitted = True
                waiter.app.in_flight += 1
        self._queue = [w for w in self._queue if not w.admitted]

        for app in self.apps.values():
            if app.state is not State.READY or app.in_flight:
                continue
            if self._shutting_down:
                self._begin_stop(app, "shutdown")
            elif app.stop_requested:
                self._begin_stop(app, "unloaded")
            elif rival := admission.first_rival_waiting(app, self._queue):
                self._begin_stop(app, f"conflict with {rival.name}")

        for index, waiter in enumerate(self._queue):
            app = waiter.app
            if app.state is State.STOPPED and self._may_start(app, index):
                self._begin_start(app)

    def _may_join(self, app: OnDemandApp, arrived: float) -> bool:
        """True if a request that arrived at `arrived` may use `app` now."""
        if app.state is not State.READY or app.stop_requested or self._shutting_down:
            return False
        now = self._clock.current_time()  # trio's, readable from threads too
        return not admission.overtaken_too_long(app, arrived, self._queue, now)

    def _may_start(self, app: OnDemandApp, position: int) -> bool:
        if self._shutting_down:
            return False
        return admission.may_start(app, position, self.apps.values(), self._queue)

    # -- transitions ----------------------------------------------------

    def _begin_start(self, app: OnDemandApp) -> None:
        app.state = State.STARTING
        app.attempt = attempt = StartAttempt()
        for waiter in self._queue:
            if waiter.app is app:
                waiter.attempt = attempt
        # Registered before the task runs, so that a shutdown in between
        # still cancels this start.
        scope = self._starts[app.name] = trio.CancelScope()
        self._nursery.start_soon(self._run_start, app, attempt, scope)

    async def _run_start(
        self, app: OnDemandApp, attempt: StartAttempt, scope: trio.CancelScope
    ) -> None:
        try:
            with scope:
                # The pausables see an active app and stop; the start goes on
                # only once their trees have exited and the GPU is free.
                await self.changes.wait_until(self._pausables_hold_nothing)
                await app.start(self._ledger, self._nursery)
            if scope.cancelled_caught:
                raise NothingRunning("RPH is shutting down")
        except Exception as exc:
            # An unexpected failure fails this start, not all of RPH.
            if isinstance(exc, RPHError):
                error = exc
                if scope.cancelled_caught:
                    log.info("start of %s abandoned (shutdown)", app.name)
                else:
                    log.error("%s", error.log_text())
            else:
                log.exception("%s: start failed", app.name)
                error = BackendFailed(f"{app.name}: start failed: {exc!r}")
            self._mark_stopped(app)
            app.attempt = None
            for waiter in self._queue:
                if waiter.attempt is attempt:
                    waiter.error = error
            with self._lock:
                self._queue = [w for w in self._queue if w.attempt is not attempt]
            attempt.finish(error)
        else:
            app.state = State.READY
            # The idle clock starts now: requesters that left during a long
            # load must not make the freshly loaded model look idle for ages.
            app.last_active = trio.current_time()
            assert app.child is not None
            self._nursery.start_soon(self._watch_for_crash, app, app.child)
            attempt.finish()
        finally:
            self._starts.pop(app.name, None)
        self._reconcile()

    def _pausables_hold_nothing(self) -> bool:
        return all(p.holds_nothing() for p in self.pausables)

    def _begin_stop(self, app: OnDemandApp, reason: str) -> None:
        # Only a ready app is stopped this way; one already stopping (say,
        # idle and crashed in the same instant) is stopped once.
        if app.state is not State.READY:
            return
        app.state = State.STOPPING
        self._nursery.start_soon(self._run_stop, app, reason)

    async def _run_stop(self, app: OnDemandApp, reason: str) -> None:
        await app.stop(reason)
        self._mark_stopped(app)
        self._reconcile()

    def _mark_stopped(self, app: OnDemandApp) -> None:
        app.state = State.STOPPED
        app.stop_requested = False
        self._stops[app.name] += 1

    async def _watch_for_crash(self, app: OnDemandApp, child: Child) -> None:
        await child.exited.wait()
        if child.stopping or app.child is not child or app.state is not State.READY:
            return
        app.crashes += 1
        log.warning(
            "%s exited by itself (%s); the next request starts it again",
            app.name,
            describe_exit(child.returncode),
        )
        self._begin_stop(app, "crashed")
        self._reconcile()

    def stop_idle(self, app: OnDemandApp, deadline: float) -> None:
        """Stop `app` if its idle stop is still due at `deadline`.

        A thread may have leased it since the deadline was read.
        """
        with self._lock:
            if app.idle_deadline() != deadline:
                return
            minutes = (app.config.timeout or 0) / SECONDS_PER_MINUTE
            self._begin_stop(app, f"idle for {minutes:g} min")
        self._reconcile()

    # -- shutdown and status ---------------------------------------------

    async def shutdown(self) -> None:
        """Stop every app and pausable tree; returns when all are gone.

        Called once the listeners are closed, so no request holds a lease.
        """
        self._shutting_down = True
        for scope in self._starts.values():
            scope.cancel()
        # Ready apps are stopped by the reconcile; a start ends cancelled, or
        # if it won the race, is stopped by the reconcile when it is ready.
        self._reconcile()
        await self.changes.wait_until(self._all_stopped)
        self.closed.set()

    def _all_stopped(self) -> bool:
        apps_stopped = all(a.state is State.STOPPED for a in self.apps.values())
        return apps_stopped and self._pausables_hold_nothing()

    def status(self) -> dict[str, Any]:
        return describe(self)
