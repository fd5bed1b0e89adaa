"""Watching a client while its request is being answered.

A backend that processes a long prompt sends nothing for minutes; a client
that gives up meanwhile must stop it at once, not when a write would fail.
The connection's reader reads the socket the whole time and tells the
watch of the request being answered:

- an EOF while the request waits for its app to start means the client
  left: the exchange is cancelled and the app never sees the request;
- an EOF that came together with the request, or once the app is leased,
  is a half-close: it is passed on to the backend after the request, which
  may still answer (and which, like llama-server, may take it as an abort);
- a reset means the client left, whenever it comes;
- bytes are the next, pipelined, request and kept for it.
"""

from __future__ import annotations

import trio

from rph.net.client import ClientConnection, ClientGone
from rph.net.upstream import Upstream, half_close


class ClientWatch:
    """Acts on what the client does while its request is being answered."""

    def __init__(self, conn: ClientConnection, scope: trio.CancelScope) -> None:
        self.conn = conn
        self.scope = scope  # cancelled when the client leaves
        self.leased = False  # the app is ready and holds the request
        self.upstream: Upstream | None = None  # the request went out on it
        self.gone = False

    def __repr__(self) -> str:
        return f"<ClientWatch leased={self.leased} gone={self.gone}>"

    async def start(self) -> None:
        """Take in what came with the request, then watch until `stop`."""
        conn = self.conn
        try:
            # Whatever already waits in the socket (an EOF above all) came
            # with the request, not after it: the reader takes it in first.
            while conn.has_unread() and await conn.receive():
                pass
        except ClientGone:
            self._client_left()
            return
        if conn.reset:
            self._client_left()
            return
        conn.on_eof = self._client_eof
        conn.on_reset = self._client_left

    def stop(self) -> None:
        """Stop acting on the client; its reader goes on reading."""
        self.conn.on_eof = None
        self.conn.on_reset = None

    async def forwarded(self, upstream: Upstream | None) -> None:
        """The request went out on `upstream` (None: it is being resent)."""
        self.upstream = upstream
        if upstream is not None and self.conn.eof:
            await half_close(upstream)

    async def _client_eof(self) -> None:
        if not self.leased:
            self._client_left()
        elif self.upstream is not None:
            await half_close(self.upstream)

    def _client_left(self) -> None:
        self.gone = True
        self.scope.cancel()
