"""Backend connections outlive the client connections that opened them.

Clients that open a new connection per request (curl, the OpenAI SDK
without a session) still reach the backend over one kept connection, so no
TCP handshake sits on the path to their first token. A kept connection that
the backend closed is never used, and none is kept for long.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from scripted import scripted_app
from support import app, request, running_rph

from rph.config import AppConfig
from rph.net.pool import IDLE_KEPT, SWEEP_EVERY

# A little past the longest a connection may stay idle in the pool.
IDLE_GONE = IDLE_KEPT + SWEEP_EVERY + 1.0
POLL = 0.05  # seconds between looks at the stand-in's counters


async def backend_stats(config: AppConfig) -> dict[str, Any]:
    """The stand-in's counters, asked directly (its own connection counts)."""
    response = await request(config.endpoint_port, "GET", "/stats")
    stats: dict[str, Any] = response.json()
    return stats


@pytest.mark.timeout(20)
async def test_clients_on_fresh_connections_share_one_backend_connection() -> None:
    llm = app()
    async with running_rph([llm]) as rph:
        await rph.supervisor.preload("llm")
        before = await backend_stats(llm)
        for _ in range(10):
            response = await request(rph.port, "GET", "/v1/models")
            assert response.status == 200
        after = await backend_stats(llm)
    # One connection for asking the stats again, and one through RPH — or
    # a few, when a client's next connection is answered before RPH has
    # seen the previous one close, and found its backend connection free.
    assert after["connections"] - before["connections"] - 1 <= 3
    assert after["requests"] - before["requests"] == 10 + 1


@pytest.mark.timeout(20)
async def test_a_backend_that_closes_after_each_answer_still_serves_everyone() -> None:
    # It says keep-alive, then closes: a kept connection is found closed.
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    backend = scripted_app("llm", f"conn.sendall({answer!r})\nconn.close()")
    async with running_rph([backend]) as rph:
        for _ in range(4):
            response = await request(rph.port, "GET", "/")
            assert (response.status, response.body) == (200, b"ok")


@pytest.mark.slow
@pytest.mark.timeout(30)
async def test_idle_backend_connections_are_closed_after_a_few_seconds() -> None:
    llm = app()
    async with running_rph([llm]) as rph:
        await rph.supervisor.preload("llm")
        response = await request(rph.port, "GET", "/v1/models")
        assert response.status == 200
        with trio.fail_after(IDLE_GONE):
            while True:
                # Only the connection asking for the stats is left open.
                if (await backend_stats(llm))["open_connections"] == 1:
                    break
                await trio.sleep(POLL)
