"""The design's table, row by row, from one run's results.

Targets are those of the Performance section of the design: ratios to
direct for the warm measures, an absolute bound for RPH's part of a cold
start, no growth for memory and descriptors.
"""

from __future__ import annotations

from typing import Any

from benchmarks.loads import MIB, Load
from benchmarks.measures import Measure
from benchmarks.report import Row
from benchmarks.stack import CPU_TICK

US_PER_S = 1_000_000

# Python's allocator keeps the pools it once used; past the warm-up block,
# memory that nothing leaks stays within this.
FLAT_RSS_MIB = 2.0

Section = tuple[str, list[Row]]


def compare(
    label: str,
    unit: str,
    measure: Measure,
    series: str,
    *,
    higher_is_better: bool = False,
    target: tuple[str, float] | None = None,
) -> Row:
    """A row of one series, direct against RPH (and the floor)."""
    return Row(
        label,
        unit,
        rph=measure.values(series, "rph"),
        direct=measure.values(series, "direct"),
        floor=measure.values(series, "floor"),
        higher_is_better=higher_is_better,
        target=target,
    )


def sections(load: Load, results: dict[str, Any]) -> list[Section]:
    return [
        ("warm, ratio to direct", _warm(load, results)),
        ("concurrent streams", _streams(load, results)),
        (
            f"cold start, {load.cold_load_delay:g} s model load (absolute)",
            _cold(results["cold"]),
        ),
        ("RPH's CPU time", _cpu(load, results)),
        (
            f"memory and descriptors, {results['endurance']['abandoned']}"
            " streams abandoned",
            _memory(results),
        ),
    ]


def _warm(load: Load, results: dict[str, Any]) -> list[Row]:
    big = load.big_prompt_bytes
    prompt = "1 MB" if big >= MIB else f"{big // 1024} KiB"
    single = results[f"streams_{load.concurrency[0]}"]
    keepalive = results["keepalive"]
    rate = {"higher_is_better": True}
    return [
        compare(
            "first token, fresh connection",
            "ms",
            results["first_small"],
            "first",
            target=("<=", 1.3),
        ),
        compare(
            f"first token, {prompt} prompt",
            "ms",
            results["first_big"],
            "first",
            target=("<=", 1.5),
        ),
        compare("delay per streamed event", "ms", single, "event", target=("<=", 1.3)),
        compare(
            f"upload {load.upload_bytes // MIB} MiB",
            "MB/s",
            results["upload"],
            "mbps",
            target=(">=", 0.7),
            **rate,
        ),
        compare(
            f"download {load.download_bytes // MIB} MiB",
            "MB/s",
            results["download"],
            "mbps",
            target=(">=", 0.5),
            **rate,
        ),
        compare(
            "small requests, one keep-alive connection",
            "req/s",
            keepalive,
            "rps",
            target=(">=", 0.5),
            **rate,
        ),
        compare("  each small request", "ms", keepalive, "latency"),
    ]


def _streams(load: Load, results: dict[str, Any]) -> list[Row]:
    rows = []
    for clients in load.concurrency:
        measure = results[f"streams_{clients}"]
        # The design sets a target for the 64 streams' first token only.
        target = ("<=", 1.5) if clients == 64 else None
        rows.append(
            compare(
                f"{clients} streams: first token", "ms", measure, "first", target=target
            )
        )
        rows.append(
            compare(f"{clients} streams: delay per event", "ms", measure, "event")
        )
    return rows


def _cold(phases: dict[str, list[float]]) -> list[Row]:
    return [
        Row("request sent → backend process running", "ms", phases["spawn"]),
        Row("backend running → ready (its own load)", "ms", phases["load"]),
        Row(
            "backend ready → first byte (RPH's part)",
            "ms",
            phases["rph"],
            target=("<", 50.0),
            judged="max",
        ),
        Row("request sent → first byte", "ms", phases["total"]),
    ]


def _cpu(load: Load, results: dict[str, Any]) -> list[Row]:
    clients = load.concurrency[-1]
    busiest: Measure = results[f"streams_{clients}"]
    events = max(1, len(busiest.values("event", "rph")))
    keepalive: Measure = results["keepalive"]
    requests = load.keepalive_rounds * load.keepalive_requests
    return [
        cpu_row(f"per streamed event ({clients} streams)", busiest.rph_cpu, events),
        cpu_row("per small keep-alive request", keepalive.rph_cpu, requests),
    ]


def cpu_row(label: str, cpu_seconds: float, count: int) -> Row:
    """RPH's CPU time per unit of work, or a row that says it was too
    little to count: under one tick the clock may read 0 whatever the
    cost, and "0.00 µs" would read as a measurement."""
    if cpu_seconds < CPU_TICK:
        reason = f"RPH used under one CPU clock tick ({CPU_TICK * 1000:g} ms)"
        return Row(label, "µs", [], not_measured=reason)
    return Row(label, "µs", [cpu_seconds / count * US_PER_S])


def _memory(results: dict[str, Any]) -> list[Row]:
    run = results["endurance"]
    samples = run["samples"]
    warmed, last = samples[0], samples[-1]
    return [
        Row(
            "RPH resident memory, bench app ready", "MiB", [results["rss_ready"] / MIB]
        ),
        Row(f"… before {run['exchanges']} exchanges", "MiB", [run["rss_before"] / MIB]),
        Row(f"… after {warmed['exchanges']} (warm-up)", "MiB", [warmed["rss"] / MIB]),
        Row(f"… after {last['exchanges']}", "MiB", [last["rss"] / MIB]),
        Row(
            "growth after warm-up",
            "MiB",
            [(last["rss"] - warmed["rss"]) / MIB],
            target=("<=", FLAT_RSS_MIB),
        ),
        Row("RPH open descriptors, before", "fds", [run["fds_before"]]),
        # Between blocks the count moves with the connections open at that
        # moment (clients just gone, backend connections kept for reuse);
        # a leak shows once RPH is idle again.
        Row("descriptors after each block", "fds", [s["fds"] for s in samples]),
        Row(
            "descriptors once idle, minus before",
            "fds",
            [run["fds_idle"] - run["fds_before"]],
            target=("<=", 0),
        ),
    ]
