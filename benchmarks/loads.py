"""How much of each measure a run takes: the full run, --quick, --smoke.

The full run is the one quoted in the README; --quick gives the same table
in under a minute with fewer rounds (p99s from few samples are rough);
--smoke only proves that every measure runs and that its integrity checks
pass, on a load too small for its figures to mean anything.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Load:
    name: str
    # Time to first token on a fresh connection, small and 1 MB prompts.
    ttft_rounds: int
    big_prompt_rounds: int
    big_prompt_bytes: int
    # Streams: each round opens this many clients at once, for each count.
    concurrency: tuple[int, ...]
    stream_rounds: int
    stream_tokens: int
    # Large bodies, integrity checked by sha256.
    transfer_rounds: int
    upload_bytes: int
    download_bytes: int
    # Small requests one after another on one keep-alive connection.
    keepalive_rounds: int
    keepalive_requests: int
    # Cold starts of a backend that loads for `cold_load_delay` seconds.
    cold_rounds: int
    cold_load_delay: float
    # Exchanges through RPH while its memory and descriptors are watched.
    endurance_exchanges: int
    # The stand-in's time between tokens: 50 tokens/s, a fast local model.
    token_interval: float = 0.02


FULL = Load(
    name="full",
    ttft_rounds=200,
    big_prompt_rounds=40,
    big_prompt_bytes=MIB,
    concurrency=(1, 16, 64),
    stream_rounds=10,
    stream_tokens=40,
    transfer_rounds=10,
    upload_bytes=16 * MIB,
    download_bytes=64 * MIB,
    keepalive_rounds=20,
    keepalive_requests=500,
    cold_rounds=10,
    cold_load_delay=0.2,
    endurance_exchanges=10_000,
)

QUICK = Load(
    name="quick",
    ttft_rounds=40,
    big_prompt_rounds=10,
    big_prompt_bytes=MIB,
    concurrency=(1, 16, 64),
    stream_rounds=3,
    stream_tokens=20,
    transfer_rounds=3,
    upload_bytes=16 * MIB,
    download_bytes=64 * MIB,
    keepalive_rounds=6,
    keepalive_requests=200,
    cold_rounds=3,
    cold_load_delay=0.2,
    endurance_exchanges=1_000,
)

SMOKE = Load(
    name="smoke",
    ttft_rounds=2,
    big_prompt_rounds=1,
    big_prompt_bytes=64 * 1024,
    concurrency=(1, 4),
    stream_rounds=1,
    stream_tokens=3,
    transfer_rounds=1,
    upload_bytes=MIB,
    download_bytes=4 * MIB,
    keepalive_rounds=1,
    keepalive_requests=20,
    cold_rounds=1,
    cold_load_delay=0.0,
    endurance_exchanges=100,
)

LOADS = {load.name: load for load in (FULL, QUICK, SMOKE)}
