"""Backend connections kept between client connections.

Many clients open a new connection for each request (curl, SillyTavern's
server-side fetches, the OpenAI SDK without a session). Without a pool RPH
would open a new backend connection for each of them too, and the TCP
handshake and the backend's accept would sit on the path to every first
token. So when a client connection ends, its backend connection — if the
last response left it clean — waits here for the next request to the same
start of the same app.

Not for long: backends close idle connections themselves (llama-server and
uvicorn after 5 s), so RPH closes its own after IDLE_KEPT. One that the
backend closed anyway is found out before use (it reads as EOF) or, in a
race, the exchange resends the request on a new connection.

The threads that answer plain requests (net/lane) take from the pool too,
so its lists change under a lock.
"""

from __future__ import annotations

import threading
from collections import deque

import trio

from rph.net.upstream import Upstream
from rph.proc.readiness import Endpoint

# Shorter than the 5 s after which common backends close an idle connection.
IDLE_KEPT = 3.0

# No more idle connections per app start than a busy front-end has requests
# in flight at once; beyond that a connection is closed, not kept.
IDLE_LIMIT = 64

# Idle connections past IDLE_KEPT are closed on this beat, so that none
# holds a descriptor long after its last use.
SWEEP_EVERY = 1.0


class UpstreamPool:
    """Idle backend connections of one listening port, newest last."""

    def __init__(self) -> None:
        self._idle: dict[Endpoint, deque[tuple[float, Upstream]]] = {}
        self._kept = trio.Event()
        self._closed = False  # the port stopped serving: nothing is kept
        self._lock = threading.Lock()
        # What `keep_at_once` needs of the run loop, from a thread.
        self._clock = trio.lowlevel.current_clock()
        self._token = trio.lowlevel.current_trio_token()

    def __repr__(self) -> str:
        return f"<UpstreamPool idle={len(self)}>"

    def __len__(self) -> int:
        with self._lock:  # a lane may add an endpoint's list meanwhile
            return sum(len(idle) for idle in self._idle.values())

    async def take(self, endpoint: Endpoint) -> Upstream | None:
        """An idle connection fit for `endpoint`, or None."""
        while upstream := self._pop(endpoint):
            if upstream.is_fit_for(endpoint):
                return upstream
            await upstream.aclose()  # closed by the backend, or another start's
        return None

    def take_at_once(self, endpoint: Endpoint) -> Upstream | None:
        """`take`, for a thread."""
        while upstream := self._pop(endpoint):
            if upstream.is_fit_for(endpoint):
                return upstream
            upstream.close_now()
        return None

    def _pop(self, endpoint: Endpoint) -> Upstream | None:
        with self._lock:
            idle = self._idle.get(endpoint)
            # The newest: the least likely closed by the backend.
            return idle.pop()[1] if idle else None

    async def keep(self, upstream: Upstream) -> None:
        """Keep `upstream` for a later client, or close it if none is needed."""
        fit = upstream.is_fit_for(upstream.owner)
        with self._lock:
            idle = self._idle.setdefault(upstream.owner, deque())
            kept = fit and not self._closed and len(idle) < IDLE_LIMIT
            if kept:
                idle.append((trio.current_time(), upstream))
        if not kept:
            await upstream.aclose()
            return
        self._kept.set()

    def keep_at_once(self, upstream: Upstream) -> None:
        """`keep`, for a thread: as soon as its client has left, so that
        the client's next connection finds it here."""
        fit = upstream.is_fit_for(upstream.owner)
        with self._lock:
            idle = self._idle.setdefault(upstream.owner, deque())
            kept = fit and not self._closed and len(idle) < IDLE_LIMIT
            if kept:
                idle.append((self._clock.current_time(), upstream))
        if not kept:
            upstream.close_now()
            return
        self._token.run_sync_soon(self._wake_sweeper)

    def _wake_sweeper(self) -> None:
        # Run by the run loop: the event is the one the sweeper waits on.
        self._kept.set()

    async def sweep_forever(self) -> None:
        """Close connections idle past IDLE_KEPT; all of them when cancelled."""
        try:
            while True:
                if not len(self):
                    self._kept = trio.Event()
                    await self._kept.wait()
                await trio.sleep(SWEEP_EVERY)
                await self._sweep(trio.current_time() - IDLE_KEPT)
        finally:
            self._closed = True
            with trio.CancelScope(shield=True):
                await self._sweep(float("inf"))

    async def _sweep(self, kept_since: float) -> None:
        swept = []
        with self._lock:
            for endpoint, idle in list(self._idle.items()):
                while idle and idle[0][0] <= kept_since:
                    swept.append(idle.popleft()[1])
                if not idle:
                    del self._idle[endpoint]
        for upstream in swept:
            await upstream.aclose()
