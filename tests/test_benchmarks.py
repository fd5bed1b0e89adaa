"""`make bench` runs, and what it moves arrives intact.

The benchmark runs as a user runs it (`python -m benchmarks`), on its
`--smoke` load: a few rounds of every measure, through a real RPH process.
No figure is asserted — shared machines are too noisy for that — only that
every measure produced one and every integrity check passed: streams
complete, uploads and downloads hashed as sent, abandoned streams seen by
the backend as aborts.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

from benchmarks.report import Row, table
from benchmarks.stack import CPU_TICK
from benchmarks.summary import cpu_row

# A smoke run takes a few seconds; a busy machine may take several times that.
SMOKE_RUN_LIMIT = 120


@pytest.mark.slow
@pytest.mark.timeout(SMOKE_RUN_LIMIT + 10)
def test_benchmark_smoke_run_passes_its_integrity_checks(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_RUN_LIMIT,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    report = json.loads(results.read_text())
    assert report["checks"]["ok"], report["checks"]["failed"]
    passed = report["checks"]["passed"]
    for check in (
        "streams complete",
        "upload sha256",
        "download sha256",
        "small requests 200",
        "cold start answered",
        "abandoned streams reached the backend",
    ):
        assert passed.get(check), f"{check!r} never ran"

    rows = [row for section in report["sections"].values() for row in section]
    # A smoke run may use too little CPU to count; such a row says so.
    unmeasured = [row for row in rows if row["rph"] is None]
    assert all(row["not_measured"] for row in unmeasured)
    assert {row["unit"] for row in unmeasured} <= {"µs"}
    measured = [row for row in rows if row["rph"] is not None]
    assert all(row["rph"]["n"] for row in measured), "a measure has no samples"
    compared = [row for row in rows if row["direct"] is not None]
    assert compared, "no measure was taken directly"
    for row in compared:
        # The floor is absent from the JSON when it has no samples.
        assert row["direct"]["n"], f"{row['label']!r} has no direct samples"
        assert row["floor"], f"{row['label']!r} has no samples through the floor"
        assert row["floor"]["n"], f"{row['label']!r} has no samples through the floor"
    assert "first token, fresh connection" in run.stdout  # the table was printed


def test_the_table_keeps_its_columns_aligned_under_a_long_label() -> None:
    long_label = "small requests, one keep-alive connection, and then some"
    rows = [
        Row("short", "ms", rph=[2.0], direct=[1.0], floor=[1.5]),
        Row(long_label, "req/s", rph=[2000.0], direct=[4000.0], floor=[3000.0]),
    ]

    header, _, _, *lines = table([("warm", rows)]).splitlines()

    # Every figure's column ends where its heading does.
    ratio_end = header.index("ratio") + len("ratio")
    floor_end = header.index("floor") + len("floor")
    assert [line[ratio_end - 4 : ratio_end] for line in lines] == ["2.00", "0.50"]
    assert [line[floor_end - 4 : floor_end] for line in lines] == ["1.50", "0.75"]


def test_cpu_too_little_to_count_is_shown_as_not_measured_not_as_zero() -> None:
    rows = [
        cpu_row("per small keep-alive request", 0.0, 20),
        cpu_row("per streamed event", 2 * CPU_TICK, 10_000),
    ]

    _, _, _, unmeasured, measured = table([("CPU", rows)]).splitlines()

    assert "0.00" not in unmeasured
    assert "—  not measured: RPH used under one CPU clock tick" in unmeasured
    assert "not measured" not in measured
    assert f"{2 * CPU_TICK / 10_000 * 1_000_000:.2f}" in measured
    assert rows[0].as_json()["rph"] is None
    assert rows[1].as_json()["rph"]["n"] == 1
    assert rows[1].as_json()["not_measured"] is None
