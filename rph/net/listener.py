"""Serving one port: accept connections, give each its request loop.

A connection whose handling fails is logged once and closed; the listener
and every other connection go on.
"""

from __future__ import annotations

import logging

import trio

from rph.hosts import bracketed, is_loopback_name
from rph.net.client import ClientConnection
from rph.net.exchange import Exchange
from rph.net.pool import UpstreamPool
from rph.net.router import PortRouter
from rph.net.waits import StopSocket
from rph.proc.supervisor import Supervisor

log = logging.getLogger("rph.net")


async def serve_port(
    host: str,
    port: int,
    router: PortRouter,
    supervisor: Supervisor,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port until cancelled; `started` gets the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    loopback = is_loopback_name(host)
    names = ", ".join(app.name for app in router.apps)
    log.info("listening on http://%s:%d for %s", bracketed(host), bound, names)
    task_status.started(bound)
    pool = UpstreamPool()
    stop = StopSocket()

    async def handle(stream: trio.SocketStream) -> None:
        peer = _peer_of(stream)
        try:
            conn = ClientConnection(stream, peer)  # takes the socket over
        except OSError:
            await stream.aclose()  # the client was already gone
            return
        exchange = Exchange(conn, router, supervisor, loopback, pool, stop)
        try:
            async with conn.stream:
                await exchange.serve()
        except Exception:
            log.exception("connection from %s failed", peer)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.sweep_forever)
            nursery.start_soon(stop.stop_when_cancelled)
            await trio.serve_listeners(handle, listeners)
    finally:
        stop.close()


def _peer_of(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "?"
    return str(address[0])
