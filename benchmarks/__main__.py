"""`python -m benchmarks` (`make bench`): RPH against direct, one run.

Prints the table and writes every sample to a JSON file (by default under
benchmarks/results/). Exits 1 if an integrity check failed; a missed
target is reported, not an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.coldstart import cold_starts
from benchmarks.endurance import endurance
from benchmarks.loads import FULL, LOADS, Load
from benchmarks.measures import Bench, Checks, Measure
from benchmarks.report import table
from benchmarks.stack import ROOT, open_stack
from benchmarks.summary import sections

RESULTS = ROOT / "benchmarks" / "results"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure RPH against the same backend reached directly.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="fewer rounds: under a minute"
    )
    size.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny load that only proves every measure runs (tests)",
    )
    parser.add_argument("--json", type=Path, help="where to write the results")
    return parser.parse_args(argv)


async def run(load: Load) -> tuple[dict[str, Any], Checks]:
    checks = Checks()
    results: dict[str, Any] = {}
    async with open_stack(load) as stack:
        results["rss_ready"] = stack.rss()
        bench = Bench(stack, load, checks)
        results["first_small"] = await bench.first_token(100, load.ttft_rounds)
        results["first_big"] = await bench.first_token(
            load.big_prompt_bytes, load.big_prompt_rounds
        )
        for clients in load.concurrency:
            results[f"streams_{clients}"] = await bench.streams(clients)
        results["upload"] = await bench.upload()
        results["download"] = await bench.download()
        results["keepalive"] = await bench.keepalive()
        results["cold"] = await cold_starts(stack, load.cold_rounds, checks)
        results["endurance"] = await endurance(stack, load.endurance_exchanges, checks)
    return results, checks


def machine() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "commit": commit,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    load = LOADS["quick"] if args.quick else LOADS["smoke"] if args.smoke else FULL
    command = " ".join(
        ["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]
    )
    before = machine()
    began = time.monotonic()
    results, checks = asyncio.run(run(load))
    seconds = time.monotonic() - began

    parts = sections(load, results)
    print(table(parts))
    load_average = before["load_average"]
    print(f"\n{command}: {seconds:.0f} s, {before['cpus']} CPUs,", end=" ")
    print(f"load average before {load_average}")
    if not checks.ok:
        for name, details in checks.failed.items():
            print(f"integrity check FAILED: {name} ({len(details)}x): {details[:3]}")

    report = {
        "command": command,
        "load": load.name,
        "seconds": seconds,
        "machine": before,
        "load_average_after": machine()["load_average"],
        "sections": {title: [row.as_json() for row in rows] for title, rows in parts},
        "checks": {"ok": checks.ok, "passed": checks.passed, "failed": checks.failed},
        "samples": {
            key: value.series if isinstance(value, Measure) else value
            for key, value in results.items()
        },
    }
    path = (
        args.json
        or RESULTS / f"bench-{load.name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"results: {path}")
    return 0 if checks.ok else 1


if __name__ == "__main__":
    sys.exit(main())
