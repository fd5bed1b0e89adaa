"""Many exchanges through RPH, with its memory and descriptors watched.

A mix of what front-ends do: small requests on keep-alive connections,
short streams on fresh ones, streams the client abandons after the first
token (a user pressing Stop), and 64 KiB uploads. The exchanges run in
blocks by several clients at once; after each block, with every client
connection closed, RPH's resident memory and open descriptors are read.
The first block warms RPH up; growth is counted from there. At the end,
once RPH has closed the backend connections it kept idle, its descriptors
are back where they were before.

The stand-in counts the generations cut short: every abandoned stream must
have reached it as an abort, or RPH kept generating for nobody.
"""

from __future__ import annotations

import asyncio
import json
import time

from benchmarks.client import Connection, Response, request_bytes
from benchmarks.measures import SMALL_REQUEST, Checks, completion
from benchmarks.stack import Stack

BLOCKS = 10
CLIENTS = 16
# Out of every ten exchanges: five small, two streams, one abandoned
# stream, one upload, one more small request on a fresh connection.
MIX = (
    "small",
    "small",
    "stream",
    "small",
    "abandon",
    "small",
    "stream",
    "upload",
    "small",
    "fresh",
)
SHORT_STREAM_TOKENS = 4
# Long enough that the client always leaves mid-generation.
ABANDONED_STREAM_TOKENS = 1000
UPLOAD = request_bytes("POST", "/echo", b"u" * 64 * 1024)
# RPH closes a connection's upstream socket as soon as it sees the client
# go; the descriptors are read once their count stops falling.
FD_SETTLE_POLL = 0.02
FD_SETTLE_LIMIT = 2.0
ABORT_SEEN_LIMIT = 5.0
# RPH keeps idle backend connections for a few seconds (rph/net/pool.py).
IDLE_CLOSE_LIMIT = 10.0


async def endurance(stack: Stack, exchanges: int, checks: Checks) -> dict[str, object]:
    """RSS and descriptors after each block, and the verdicts."""
    aborted_before = await _backend_aborts(stack)
    rss_before, fds_before = stack.rss(), await _settled_fds(stack)
    per_block = max(1, exchanges // BLOCKS)
    samples: list[dict[str, int]] = []
    abandoned = 0
    began = time.monotonic()
    for block in range(BLOCKS):
        counts = await asyncio.gather(
            *(
                _client(stack, block * per_block, per_block, client, checks)
                for client in range(CLIENTS)
            )
        )
        abandoned += sum(counts)
        fds = await _settled_fds(stack)
        samples.append(
            {"exchanges": (block + 1) * per_block, "rss": stack.rss(), "fds": fds}
        )
    seconds = time.monotonic() - began

    fds_idle = await _fds_once_idle(stack, fds_before)
    seen = await _wait_aborts(stack, aborted_before + abandoned)
    checks.check(
        "abandoned streams reached the backend",
        seen - aborted_before >= abandoned,
        f"{abandoned} abandoned, backend saw {seen - aborted_before}",
    )
    return {
        "exchanges": per_block * BLOCKS,
        "abandoned": abandoned,
        "seconds": seconds,
        "rss_before": rss_before,
        "fds_before": fds_before,
        "fds_idle": fds_idle,
        "samples": samples,
    }


async def _client(
    stack: Stack, first: int, count: int, client: int, checks: Checks
) -> int:
    """This client's share of one block; returns how many it abandoned."""
    port = stack.rph_port
    kept: Connection | None = None
    abandoned = 0
    try:
        for index in range(first + client, first + count, CLIENTS):
            kind = MIX[index % len(MIX)]
            if kind in ("small", "upload"):
                kept = kept or await Connection.open(port)
                request = SMALL_REQUEST if kind == "small" else UPLOAD
                response = await kept.exchange(request)
            elif kind == "fresh":
                response = await _on_fresh(port, SMALL_REQUEST)
            elif kind == "stream":
                request = completion("hi", SHORT_STREAM_TOKENS)
                response = await _on_fresh(port, request, stream=True)
                complete = len(response.events) == SHORT_STREAM_TOKENS + 1
                checks.check("streams complete", complete and response.saw_done)
            else:
                connection = await Connection.open(port)
                await connection.first_event(completion("hi", ABANDONED_STREAM_TOKENS))
                connection.abort()
                abandoned += 1
                continue
            checks.check("endurance answers 200", response.status == 200)
    finally:
        if kept is not None:
            kept.close()
    return abandoned


async def _on_fresh(port: int, request: bytes, stream: bool = False) -> Response:
    connection = await Connection.open(port)
    try:
        return await connection.exchange(request, stream=stream)
    finally:
        connection.close()


async def _settled_fds(stack: Stack) -> int:
    deadline = time.monotonic() + FD_SETTLE_LIMIT
    fds = stack.open_fds()
    while time.monotonic() < deadline:
        await asyncio.sleep(FD_SETTLE_POLL)
        now = stack.open_fds()
        if now >= fds:
            return now
        fds = now
    return fds


async def _fds_once_idle(stack: Stack, before: int) -> int:
    """RPH's descriptors once it has closed its idle backend connections."""
    deadline = time.monotonic() + IDLE_CLOSE_LIMIT
    while True:
        fds = stack.open_fds()
        if fds <= before or time.monotonic() > deadline:
            return fds
        await asyncio.sleep(FD_SETTLE_POLL)


async def _backend_aborts(stack: Stack) -> int:
    connection = await Connection.open(stack.direct_port)
    try:
        response = await connection.exchange(
            request_bytes("GET", "/stats"), keep_body=True
        )
    finally:
        connection.close()
    return int(json.loads(response.body)["aborted_streams"])


async def _wait_aborts(stack: Stack, expected: int) -> int:
    deadline = time.monotonic() + ABORT_SEEN_LIMIT
    while (seen := await _backend_aborts(stack)) < expected:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(FD_SETTLE_POLL)
    return seen
