"""Cold starts, split into the backend's part and RPH's own.

Each round stops the `cold` app through RPH's control endpoint, then sends
a streaming request on a fresh connection and follows it:

    request sent → backend process running → backend ready → first byte

The middle stamps come from the stand-in itself (`stamped_standin.py`), on
the wall clock the client reads. "Request → running" is spawning plus the
interpreter's start; "running → ready" is the backend loading; "ready →
first byte" is RPH's own part: noticing readiness (TCP, then `health`) and
forwarding the request. Only the last is RPH's to make fast.
"""

from __future__ import annotations

import time

from benchmarks.client import Connection
from benchmarks.measures import NS_PER_MS, Checks, completion
from benchmarks.stack import Stack, control

PHASES = ("spawn", "load", "rph", "total")


def _stamps(text: str) -> dict[str, int]:
    stamps = {}
    for line in text.splitlines():
        what, _, ns = line.partition(" ")
        stamps[what] = int(ns)
    return stamps


async def cold_starts(
    stack: Stack, rounds: int, checks: Checks
) -> dict[str, list[float]]:
    """Milliseconds of each phase, one value per round."""
    request = completion("Hello", tokens=1)
    phases: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for _ in range(rounds):
        await control(stack.cold_port, "/rph/apps/cold/stop")
        stack.stamps.write_text("")

        sent = time.time_ns()
        connection = await Connection.open(stack.cold_port)
        try:
            response = await connection.exchange(request, stream=True)
        finally:
            connection.close()
        stamps = _stamps(stack.stamps.read_text())
        complete = response.status == 200 and response.saw_done
        checks.check("cold start answered", complete, f"status {response.status}")
        checks.check(
            "cold start stamped", {"up", "ready"} <= stamps.keys(), str(stamps)
        )
        if not complete or not {"up", "ready"} <= stamps.keys():
            continue

        first = response.first_byte_ns
        phases["spawn"].append((stamps["up"] - sent) / NS_PER_MS)
        phases["load"].append((stamps["ready"] - stamps["up"]) / NS_PER_MS)
        phases["rph"].append((first - stamps["ready"]) / NS_PER_MS)
        phases["total"].append((first - sent) / NS_PER_MS)
    return phases
