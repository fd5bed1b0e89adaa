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
"""

from __future__ import annotations

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

    def __repr__(self) -> str:
        return f"<UpstreamPool idle={len(self)}>"

    def __len__(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    async def take(self, endpoint: Endpoint) -> Upstream | None:
        """An idle connection fit for `endpoint`, or None."""
        idle = self._idle.get(endpoint)
        while idle:
            _, upstream = idle.pop()  # the newest: the least likely closed
            if upstream.is_fit_for(endpoint):
                return upstream
            await upstream.aclose()  # closed by the backend, or another start's
        return None

    async def keep(self, upstream: Upstream) -> None:
        """Keep `upstream` for a later client, or close it if none is needed."""
        idle = self._idle.setdefault(upstream.owner, deque())
        fit = upstream.is_fit_for(upstream.owner)
        if self._closed or len(idle) >= IDLE_LIMIT or not fit:
            await upstream.aclose()
            return
        idle.append((trio.current_time(), upstream))
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
        for endpoint, idle in list(self._idle.items()):
            while idle and idle[0][0] <= kept_since:
                _, upstream = idle.popleft()
                await upstream.aclose()
            if not idle:
                del self._idle[endpoint]
