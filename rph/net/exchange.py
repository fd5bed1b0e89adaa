"""One client connection: read a request, route it, answer it, repeat.

Each request on a keep-alive connection is routed on its own, so one
connection may talk to several apps. The backend connection of the last
request is kept and reused while the next request goes to the same start of
the same app; when the client leaves, the port's pool keeps it for the next
client (net/pool). Plain requests are answered by the connection's lane, a
thread (net/lane); this task answers the others, one at a time, and waits
for the next request when the lane gave back an idle connection.

Errors RPH answers itself end the connection when the request could not be
read whole, and keep it otherwise; an error after the client got bytes of
a response ends the connection without a second response.
"""

from __future__ import annotations

import contextlib

import trio

from rph.errors import BodyTooLarge, RPHError
from rph.net import control, http, lane
from rph.net.accesslog import log_exchange, log_refusal
from rph.net.client import ClientConnection, ClientGone
from rph.net.heads import error_response, forward_head, json_response
from rph.net.http import Request, read_request
from rph.net.lane import Handback, Lane
from rph.net.pool import UpstreamPool
from rph.net.relay import ClientAborted, Outcome, relay_response, tunnel
from rph.net.router import PortRouter, Route
from rph.net.upstream import Upstream, UpstreamClosed, open_upstream, send_request
from rph.net.waits import StopSocket
from rph.net.watch import ClientWatch
from rph.proc.readiness import Endpoint
from rph.proc.supervisor import Supervisor


class Exchange:
    """The request loop of one client connection."""

    def __init__(
        self,
        conn: ClientConnection,
        router: PortRouter,
        supervisor: Supervisor,
        loopback_listener: bool,
        pool: UpstreamPool,
        stop: StopSocket | None = None,
    ) -> None:
        self.conn = conn
        self.router = router
        self.supervisor = supervisor
        self.loopback_listener = loopback_listener
        self.pool = pool
        self.upstream: Upstream | None = None
        # Without a stop socket, every request is answered by this task.
        self.lane = Lane(conn, router, supervisor, pool, stop) if stop else None

    async def serve(self) -> None:
        """Answer requests until either side ends the connection, then close."""
        try:
            while await self._serve_once():
                pass
        finally:
            upstream, self.upstream = self.upstream, None
            if upstream is not None:
                await self.pool.keep(upstream)
        await self.conn.aclose()

    async def _serve_once(self) -> bool:
        """Answer what comes next, in a lane or here; True if the connection
        goes on."""
        if self.lane is None or not lane.has_room():
            # Answered here one at a time, so that a lane freed meanwhile
            # takes the next.
            return await self._serve_here(just_one=self.lane is not None)

        self.lane.upstream, self.upstream = self.upstream, None
        try:
            handback = await self.lane.run()
        finally:
            self.upstream, self.lane.upstream = self.lane.upstream, None
        if handback is Handback.REQUEST:
            return await self._serve_here(just_one=True)
        if handback is Handback.IDLE:
            return await self._wait_for_request()
        return False

    async def _wait_for_request(self) -> bool:
        """Wait, holding no thread, for the client to send or close."""
        with trio.move_on_after(http.IDLE_DEADLINE - lane.LANE_IDLE):
            await trio.lowlevel.wait_readable(self.conn.fast.raw)
            return True
        return False  # silent for the whole IDLE_DEADLINE: closed

    async def _serve_here(self, just_one: bool) -> bool:
        """Answer requests in this task; True if the connection goes on."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.conn.read_continuously)
            goes_on = await self._answer_one()
            while goes_on and not just_one:
                goes_on = await self._answer_one()
            nursery.cancel_scope.cancel()
        return goes_on

    async def _answer_one(self) -> bool:
        """Answer the next request; True if the connection goes on."""
        try:
            request = await read_request(self.conn, self.router.body_limit)
        except ClientGone:
            return False
        except RPHError as error:
            await self._refuse(None, error, close=True)
            return False

        if control.is_control(request.path):
            return await self._answer_control(request)
        try:
            route = self.router.route(request.path, request.body)
            if len(request.body) > route.app.max_body:
                raise BodyTooLarge(
                    f"request body over {route.app.max_body} bytes (max_body)"
                )
        except RPHError as error:
            return await self._refuse(request, error, close=False)

        try:
            outcome = await self._forward(request, route)
        except RPHError as error:
            return await self._refuse(request, error, close=False)
        now = trio.current_time()
        log_exchange(self.conn.peer, request, route, outcome, self.conn.eof, now)
        return outcome is not None and outcome.client_keeps

    async def _forward(self, request: Request, route: Route) -> Outcome | None:
        """Lease the app, forward, relay; None if the client went away.

        Raises the RPHError to answer while the client has no byte of a
        response.
        """
        outcome = Outcome()
        failure: RPHError | None = None
        with trio.CancelScope() as scope:
            watch = ClientWatch(self.conn, scope)
            await watch.start()
            try:
                await self._lease_and_relay(request, route, watch, outcome)
            except RPHError as error:
                failure = error
            except ClientAborted:
                watch.gone = True
            finally:
                watch.stop()
        if watch.gone:
            outcome.aborted = True
            outcome.client_keeps = False
            return outcome
        if failure is not None:
            if not outcome.head_sent:
                raise failure
            outcome.client_keeps = False  # no second response after the first
        return outcome

    async def _lease_and_relay(
        self, request: Request, route: Route, watch: ClientWatch, outcome: Outcome
    ) -> None:
        head = forward_head(request, self.conn.peer)
        if route.passive:
            lease = self.supervisor.lease_running(list(route.siblings))
        else:
            lease = self.supervisor.lease(route.app.name)
        async with lease as endpoint:
            watch.leased = True
            upstream = await self._upstream_for(endpoint)
            try:
                try:
                    await self._send_and_relay(upstream, head, request, watch, outcome)
                except UpstreamClosed:
                    # A kept connection that the backend closed just as it was
                    # reused (its idle timeout): the request never reached it.
                    if upstream.uses == 1 or upstream.half_closed or outcome.status:
                        raise
                    await watch.forwarded(None)
                    await upstream.aclose()
                    upstream = self.upstream = await open_upstream(endpoint)
                    await self._send_and_relay(upstream, head, request, watch, outcome)
                if outcome.tunnel:
                    # The tunnel reads the client itself, and holds the
                    # lease: no idle stop under an open websocket.
                    watch.stop()
                    await tunnel(self.conn, upstream)
                    outcome.client_keeps = False
            finally:
                if not outcome.upstream_reusable:
                    self.upstream = None
                    with trio.CancelScope(shield=True):
                        await upstream.aclose()

    async def _send_and_relay(
        self,
        upstream: Upstream,
        head: bytes,
        request: Request,
        watch: ClientWatch,
        outcome: Outcome,
    ) -> None:
        await send_request(upstream, head, request.body)
        await watch.forwarded(upstream)
        await relay_response(self.conn, upstream, request, outcome)

    async def _upstream_for(self, endpoint: Endpoint) -> Upstream:
        """The kept backend connection if still good, else a pooled or new one."""
        kept, self.upstream = self.upstream, None
        if kept is not None and kept.is_fit_for(endpoint):
            self.upstream = kept
            return kept
        if kept is not None:
            await self.pool.keep(kept)  # another app's: another client may use it
        self.upstream = await self.pool.take(endpoint) or await open_upstream(endpoint)
        return self.upstream

    async def _answer_control(self, request: Request) -> bool:
        try:
            status, body, content_type = await control.answer(
                request, self.supervisor, self.loopback_listener
            )
        except RPHError as error:
            return await self._refuse(request, error, close=False)
        keeps = request.keep_alive
        head_only = request.method == b"HEAD"
        await self._send(
            json_response(status, body, not keeps, content_type, head_only)
        )
        return keeps

    async def _refuse(
        self, request: Request | None, error: RPHError, close: bool
    ) -> bool:
        """Answer `error`; True if the connection goes on."""
        keeps = not close and request is not None and request.keep_alive
        log_refusal(self.conn.peer, request, error)
        head_only = request is not None and request.method == b"HEAD"
        await self._send(error_response(error, not keeps, head_only))
        return keeps

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(ClientGone):
            await self.conn.send(data)
