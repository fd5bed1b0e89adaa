"""Time to first token through RPH against the same server reached directly.

Measured, not judged: these machines are noisy, so the numbers go into the
report printed at the end of the run, and the checks only make sure every
run produced a token. Each request is a new connection (as curl's would
be) asking for a short streamed completion.

Warm: from the connect to the first `data:` event, RPH and direct in turn.
Cold through RPH: the app is stopped, and the request starts it; the time
runs from the request. Cold direct: the server is launched by hand and the
client retries its connect until the server takes it; the time runs from
the launch. The model load dominates both and varies from one start to the
next, so each cold run also tells how long after the server's port opened
the first token came: that part is what RPH adds or saves.
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest
from clients import RawClient, free_port, port_accepts, post
from rph_process import RunningRPH

COLD_RUNS = 5
WARM_RUNS = 10

# How often the port of a starting server is tried: finer than RPH's own
# readiness poll (20 ms), so the moment it opens is known to a few ms.
PORT_PROBE_INTERVAL = 0.005

# A cold start gives up after this long (a model load takes ~1 s).
START_WITHIN = 60.0
STOP_WITHIN = 10.0

BODY = {"model": "tiny", "prompt": "Hello", "max_tokens": 8, "stream": True}


@dataclass
class Cold:
    first_token: float  # seconds from the request (RPH) or the launch (direct)
    after_open: float  # seconds from the port opening to the first token


def first_token_at(port: int) -> float:
    """When the first event of a streamed completion arrived (monotonic)."""
    request = post(
        "/v1/completions",
        BODY,
        [
            ("Host", f"127.0.0.1:{port}"),
            ("Content-Type", "application/json"),
            ("Content-Length", "{length}"),
        ],
    )
    with RawClient(port) as client:
        client.send(request)
        response = client.read_head()
        assert response.status == 200, response.head
        client.read_body(response, pieces=1)
        assert response.arrivals, "no token came"
        return response.arrivals[0]


def warm(port: int) -> float:
    began = time.monotonic()
    return first_token_at(port) - began


class PortProbe:
    """Notes when a port first accepts a connection, from a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened_at: float | None = None
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)
        self._thread.start()

    def _probe(self) -> None:
        deadline = time.monotonic() + START_WITHIN
        while not self._quit.is_set() and time.monotonic() < deadline:
            if port_accepts(self.port):
                self.opened_at = time.monotonic()
                return
            time.sleep(PORT_PROBE_INTERVAL)

    def wait(self) -> float:
        """When the port opened; fails the check if it never did."""
        self._thread.join()
        assert self.opened_at is not None, f"port {self.port} never opened"
        return self.opened_at

    def close(self) -> None:
        self._quit.set()
        self._thread.join()


def cold_through_rph(rph: RunningRPH) -> Cold:
    rph.stop_app("tiny")
    probe = PortProbe(rph.backends["tiny"])
    try:
        began = time.monotonic()
        first = first_token_at(rph.ports["tiny"])
        opened = probe.wait()
    finally:
        probe.close()
    return Cold(first - began, first - opened)


def cold_direct(server_argv: list[str]) -> Cold:
    port = free_port()
    began = time.monotonic()
    with subprocess.Popen(
        [*server_argv, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as server:
        probe = PortProbe(port)
        try:
            opened = probe.wait()
            first = first_token_at(port)
        finally:
            probe.close()
            server.terminate()
            server.wait(STOP_WITHIN)
    return Cold(first - began, first - opened)


def milliseconds(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:7.1f} ms"


@pytest.mark.timeout(180)
def test_time_to_first_token(
    rph: RunningRPH, server_argv: list[str], report: list[str]
) -> None:
    cold_ours, cold_theirs = [], []
    for _ in range(COLD_RUNS):
        cold_ours.append(cold_through_rph(rph))
        cold_theirs.append(cold_direct(server_argv))

    rph.start_app("tiny")
    warm(rph.ports["tiny"])  # the first prompt after a start is slower
    warm_ours, warm_theirs = [], []
    for _ in range(WARM_RUNS):
        warm_ours.append(warm(rph.ports["tiny"]))
        warm_theirs.append(warm(rph.backends["tiny"]))

    ours = [run.first_token for run in cold_ours]
    theirs = [run.first_token for run in cold_theirs]
    report.append(
        f"cold, median of {COLD_RUNS}: through RPH {milliseconds(ours)}"
        f" from the request, direct {milliseconds(theirs)} from the launch"
    )
    ours = [run.after_open for run in cold_ours]
    theirs = [run.after_open for run in cold_theirs]
    report.append(
        f"  of which after the server's port opened: through RPH"
        f" {milliseconds(ours)}, direct {milliseconds(theirs)}"
    )
    ratio = statistics.median(warm_ours) / statistics.median(warm_theirs)
    report.append(
        f"warm, median of {WARM_RUNS}: through RPH {milliseconds(warm_ours)},"
        f" direct {milliseconds(warm_theirs)}, ratio {ratio:.2f}"
    )
