"""The warm measures, each taken on three sides in turn.

Every measure runs in rounds; each round takes one sample on each side:
directly, through RPH, and through the bare forwarder (the floor), in an
order that changes every round, so that whatever else the machine does at
that moment weighs on all three. A sample is a dict of named series
(first-token times, per-event delays, throughputs). RPH's CPU time over
the whole measure is kept alongside: the direct and floor samples do not
pass through RPH, so nearly all of it goes to RPH's own samples.

Each sample also checks what it received: every stream complete, every
status 200, every large body's sha256 as sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from benchmarks.client import Connection, Response, request_bytes
from benchmarks.loads import Load
from benchmarks.stack import Stack

SIDES = ("direct", "rph", "floor")
# A sample is swayed by the one just before it (a CPU kept busy or left to
# idle, the stand-in's caches), so the order changes every round: each
# rotation of the sides, then the same reversed. In every two rounds each
# side goes before each other side once; the rotations alone would put
# direct before RPH in two rounds of three.
ROTATIONS = [SIDES[turn:] + SIDES[:turn] for turn in range(len(SIDES))]
ORDERS = [order for rotation in ROTATIONS for order in (rotation, rotation[::-1])]
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
MB = 1_000_000

# What SillyTavern polls between generations: small, answered at once.
SMALL_REQUEST = request_bytes("GET", "/v1/models")

Series = dict[str, list[float]]
Sample = Callable[[int], Awaitable[Series]]


@dataclass
class Checks:
    """Integrity checks: how many passed, and what each failure saw."""

    passed: dict[str, int] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        if ok:
            self.passed[name] = self.passed.get(name, 0) + 1
        else:
            self.failed.setdefault(name, []).append(detail)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class Measure:
    """One measure's series for each side, and RPH's CPU time meanwhile."""

    series: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rph_cpu: float = 0.0
    seconds: float = 0.0

    def values(self, name: str, side: str) -> list[float]:
        return self.series.get(name, {}).get(side, [])


def completion(prompt: str, tokens: int) -> bytes:
    body = {"prompt": prompt, "stream": True, "max_tokens": tokens}
    return request_bytes("POST", "/v1/completions", json.dumps(body).encode())


def pattern_sha256(size: int) -> str:
    """The sha256 of the stand-in's /download body of `size` bytes."""
    block = bytes(range(256)) * 1024
    digest = hashlib.sha256()
    for offset in range(0, size, len(block)):
        digest.update(block[: size - offset])
    return digest.hexdigest()


class Bench:
    """The warm measures against one running stack."""

    def __init__(self, stack: Stack, load: Load, checks: Checks) -> None:
        self.stack = stack
        self.load = load
        self.checks = checks

    async def interleave(self, rounds: int, sample: Sample) -> Measure:
        """Run `sample` `rounds` times on each side, taking turns."""
        ports = {
            "direct": self.stack.direct_port,
            "rph": self.stack.rph_port,
            "floor": self.stack.floor_port,
        }
        measure = Measure()
        began, cpu = time.monotonic(), self.stack.cpu_seconds()
        for index in range(rounds):
            for side in ORDERS[index % len(ORDERS)]:
                for name, values in (await sample(ports[side])).items():
                    measure.series.setdefault(name, {}).setdefault(side, [])
                    measure.series[name][side].extend(values)
        measure.rph_cpu = self.stack.cpu_seconds() - cpu
        measure.seconds = time.monotonic() - began
        return measure

    def _check_stream(self, response: Response, tokens: int) -> None:
        # The stand-in stamps each token event and the finish event.
        complete = len(response.events) == tokens + 1 and response.saw_done
        detail = f"status {response.status}, {len(response.events)} events"
        self.checks.check(
            "streams complete", response.status == 200 and complete, detail
        )

    async def first_token(self, prompt_bytes: int, rounds: int) -> Measure:
        """Time to first token on a fresh connection, prompt of that size."""
        request = completion("x" * prompt_bytes, tokens=1)

        async def sample(port: int) -> Series:
            start = time.time_ns()
            connection = await Connection.open(port)
            try:
                response = await connection.exchange(request, stream=True)
            finally:
                connection.close()
            self._check_stream(response, tokens=1)
            return {"first": [(response.events[0][1] - start) / NS_PER_MS]}

        return await self.interleave(rounds, sample)

    async def streams(self, clients: int) -> Measure:
        """`clients` streams at once: first token, and each event's delay."""
        tokens = self.load.stream_tokens
        request = completion("Once upon a time", tokens)

        async def one(port: int, series: Series) -> None:
            start = time.time_ns()
            connection = await Connection.open(port)
            try:
                response = await connection.exchange(request, stream=True)
            finally:
                connection.close()
            self._check_stream(response, tokens)
            series["first"].append((response.events[0][1] - start) / NS_PER_MS)
            series["event"].extend(
                (arrived - stamp) / NS_PER_MS for stamp, arrived in response.events
            )

        async def sample(port: int) -> Series:
            series: Series = {"first": [], "event": []}
            await asyncio.gather(*(one(port, series) for _ in range(clients)))
            return series

        return await self.interleave(self.load.stream_rounds, sample)

    async def upload(self) -> Measure:
        """A large body sent to /echo, which answers with its sha256."""
        body = bytes(range(256)) * (self.load.upload_bytes // 256)
        digest = hashlib.sha256(body).hexdigest()
        request = request_bytes("POST", "/echo", body)

        async def sample(port: int) -> Series:
            start = time.time_ns()
            connection = await Connection.open(port)
            try:
                response = await connection.exchange(request, keep_body=True)
            finally:
                connection.close()
            echo = json.loads(response.body)
            same = echo.get("body_sha256") == digest
            self.checks.check("upload sha256", same, f"{echo.get('body_length')} bytes")
            seconds = (response.done_ns - start) / NS_PER_S
            return {"mbps": [len(body) / seconds / MB]}

        return await self.interleave(self.load.transfer_rounds, sample)

    async def download(self) -> Measure:
        """A large body from /download, its sha256 checked after timing."""
        size = self.load.download_bytes
        digest = pattern_sha256(size)
        request = request_bytes("GET", f"/download?bytes={size}")

        async def sample(port: int) -> Series:
            start = time.time_ns()
            connection = await Connection.open(port)
            try:
                response = await connection.exchange(request, keep_body=True)
            finally:
                connection.close()
            seconds = (response.done_ns - start) / NS_PER_S
            received = hashlib.sha256()
            for piece in response.pieces:
                received.update(piece)
            same = received.hexdigest() == digest
            self.checks.check("download sha256", same, f"{response.body_size} bytes")
            return {"mbps": [size / seconds / MB]}

        return await self.interleave(self.load.transfer_rounds, sample)

    async def keepalive(self) -> Measure:
        """Small requests one after another on one keep-alive connection."""
        count = self.load.keepalive_requests

        async def sample(port: int) -> Series:
            connection = await Connection.open(port)
            latencies = []
            try:
                start = time.time_ns()
                for _ in range(count):
                    sent = time.time_ns()
                    response = await connection.exchange(SMALL_REQUEST)
                    latencies.append((response.done_ns - sent) / NS_PER_MS)
                    self.checks.check("small requests 200", response.status == 200)
                seconds = (time.time_ns() - start) / NS_PER_S
            finally:
                connection.close()
            return {"rps": [count / seconds], "latency": latencies}

        return await self.interleave(self.load.keepalive_rounds, sample)
