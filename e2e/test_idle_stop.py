"""Idle stop: RPH ends the real server's process, and the next request
starts it again."""

from __future__ import annotations

import httpx
import psutil
import pytest
from clients import port_accepts, wait_until
from rph_process import IDLE_TIMEOUT_MINUTES, RunningRPH

# The idle timeout, then a stop that takes a fraction of a second; a busy
# machine may take a few seconds more.
STOPPED_WITHIN = IDLE_TIMEOUT_MINUTES * 60 + 15.0


def complete(rph: RunningRPH) -> httpx.Response:
    return httpx.post(
        f"{rph.url('tiny-idle')}/v1/completions",
        json={"prompt": "Hello", "max_tokens": 8},
        timeout=60,
    )


@pytest.mark.timeout(90)
def test_idle_stop_frees_the_server_and_the_next_request_restarts_it(
    rph: RunningRPH,
) -> None:
    assert complete(rph).status_code == 200
    first = rph.status("tiny-idle")
    assert first["state"] == "ready"
    server = psutil.Process(first["pid"])

    wait_until(
        lambda: rph.status("tiny-idle")["state"] == "stopped",
        "the idle stop",
        STOPPED_WITHIN,
    )
    assert not server.is_running(), "the server's process is gone"
    assert not port_accepts(rph.backends["tiny-idle"]), "its port is free"

    answer = complete(rph)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["text"]
    again = rph.status("tiny-idle")
    assert again["state"] == "ready"
    assert again["starts"] == first["starts"] + 1
    assert again["pid"] != first["pid"]
