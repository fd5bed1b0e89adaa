"""One client connection: read a request, route it, answer it, repeat.

Each request on a keep-alive connection is routed on its own, so one
connection may talk to several apps. The backend connection of the last
request is kept and reused while the next request goes to the same start of
the same app. Errors RPH answers itself end the connection when the request
could not be read whole, and keep it otherwise.
"""

from __future__ import annotations

import contextlib
import logging

import trio

from rph.errors import BackendFailed, BodyTooLarge, RPHError
from rph.net import control
from rph.net.http import (
    ClientConnection,
    ClientGone,
    Request,
    error_response,
    forward_head,
    json_response,
    read_request,
)
from rph.net.relay import (
    ClientAborted,
    ClientWatch,
    Outcome,
    Upstream,
    half_close,
    relay_response,
    send_request,
    tunnel,
)
from rph.net.router import PortRouter, Route
from rph.proc.readiness import Endpoint
from rph.proc.supervisor import Supervisor

log = logging.getLogger("rph.net")


class Exchange:
    """The request loop of one client connection."""

    def __init__(
        self,
        conn: ClientConnection,
        router: PortRouter,
        supervisor: Supervisor,
        loopback_listener: bool,
    ) -> None:
        self.conn = conn
        self.router = router
        self.supervisor = supervisor
        self.loopback_listener = loopback_listener
        self.upstream: Upstream | None = None

    async def serve(self) -> None:
        """Answer requests until either side ends the connection."""
        try:
            while await self._answer_one():
                pass
        finally:
            if self.upstream is not None:
                await self.upstream.aclose()

    async def _answer_one(self) -> bool:
        """Answer the next request; True if the connection goes on."""
        conn = self.conn
        try:
            request = await read_request(conn, self.router.body_limit)
        except ClientGone:
            return False
        except RPHError as error:
            await self._refuse(None, error, close=True)
            return False
        if request is None:
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
        except ClientAborted:
            outcome = None
        self._log(request, route, outcome)
        return outcome is not None and outcome.client_keeps

    async def _forward(self, request: Request, route: Route) -> Outcome | None:
        """Lease the app, forward, relay; None if the client went away."""
        conn = self.conn
        head = forward_head(request, conn.peer)
        outcome: Outcome | None = None
        failure: RPHError | ClientAborted | None = None
        async with trio.open_nursery() as nursery:
            watch = ClientWatch(conn, nursery.cancel_scope)
            watch.start(nursery)
            try:
                outcome = await self._lease_and_relay(request, route, head, watch)
            except (RPHError, ClientAborted) as exc:
                # Raised out of the nursery it would come wrapped in an
                # ExceptionGroup; the caller answers it as it is.
                failure = exc
            await watch.stop()
        if failure is not None:
            raise failure
        return outcome

    async def _lease_and_relay(
        self, request: Request, route: Route, head: bytes, watch: ClientWatch
    ) -> Outcome | None:
        conn = self.conn
        outcome: Outcome | None = None
        if route.passive:
            lease = self.supervisor.lease_running(list(route.siblings))
        else:
            lease = self.supervisor.lease(route.app.name)
        async with lease as endpoint:
            upstream = await self._upstream_for(endpoint)
            try:
                await send_request(upstream, head, request.body)
                watch.forwarded(upstream)
                if conn.eof:
                    await half_close(upstream)
                outcome = await relay_response(conn, upstream, request)
                if outcome.tunnel:
                    # The tunnel reads the client itself, and holds the
                    # lease: no idle stop under an open websocket.
                    await watch.stop()
                    await tunnel(conn, upstream)
                    outcome.client_keeps = False
            finally:
                if outcome is None or not outcome.upstream_reusable:
                    self.upstream = None
                    with trio.CancelScope(shield=True):
                        await upstream.aclose()
        return outcome

    async def _upstream_for(self, endpoint: Endpoint) -> Upstream:
        """The kept backend connection if still good, else a new one."""
        kept = self.upstream
        if kept is not None and kept.owner is endpoint and not kept.is_stale():
            return kept
        if kept is not None:
            await kept.aclose()
        try:
            stream = await endpoint.connect()
        except OSError as exc:
            raise BackendFailed(f"the backend refused the connection: {exc}") from None
        self.upstream = Upstream(stream, endpoint)
        return self.upstream

    async def _answer_control(self, request: Request) -> bool:
        try:
            status, body = await control.answer(
                request, self.supervisor, self.loopback_listener
            )
        except RPHError as error:
            return await self._refuse(request, error, close=False)
        keeps = request.keep_alive
        if request.method == b"HEAD":
            body = b""
        await self._send(json_response(status, body, close=not keeps))
        return keeps

    async def _refuse(
        self, request: Request | None, error: RPHError, close: bool
    ) -> bool:
        """Answer `error`; True if the connection goes on."""
        keeps = not close and request is not None and request.keep_alive
        log.log(
            logging.WARNING if error.status >= 500 else logging.INFO,
            "%s %s %s: %d %s",
            self.conn.peer,
            request.method.decode() if request else "-",
            request.path if request else "-",
            error.status,
            error.message.splitlines()[0] if error.message else "",
        )
        await self._send(error_response(error, close=not keeps))
        return keeps

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.conn.stream.send_all(data)

    def _log(self, request: Request, route: Route, outcome: Outcome | None) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        now = trio.current_time()
        status = outcome.status if outcome else "aborted"
        sent = outcome.bytes_down if outcome else 0
        ttfb = (
            f"{outcome.first_byte_at - request.started:.3f}s"
            if outcome and outcome.first_byte_at
            else "-"
        )
        log.debug(
            "%s %s %s -> %s %s up=%d down=%d ttfb=%s total=%.3fs",
            self.conn.peer,
            request.method.decode(),
            request.path,
            route.app.name,
            status,
            len(request.body),
            sent,
            ttfb,
            now - request.started,
        )
