"""Every log record is one line, as `python -m rph` writes it to stderr.

A start that fails logs the last lines the app printed; they must not
become lines of their own, without time or level, that a `grep ERROR` or a
log rotation cuts away from their record. The client's error still shows
them a line each.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import ROOT, free_port, python_program, request, serve_then_stop

from rph.errors import BackendFailed, StartTimeout
from rph.logline import OneLineFormatter

# A program that prints on both of its outputs and exits while starting.
FAILER = python_program(
    "import sys; print('boom', flush=True);"
    " print('second line', file=sys.stderr, flush=True); sys.exit(3)"
)

# A program that never gets ready and prints nothing.
SILENT = python_program("import time; time.sleep(60)")

# What every line RPH logs starts with: the time and the level.
RECORD_START = re.compile(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")


def entry(name: str, port: int, path: str, cmdline: tuple[str, ...]) -> dict[str, Any]:
    return {
        "type": "ondemand",
        "name": name,
        "cmdline": list(cmdline),
        "endpoint": f"http://127.0.0.1:{free_port()}",
        "port": port,
        "path": path,
        # Long enough for a Python program to start and fail on a busy
        # machine; the silent one is abandoned after it.
        "start_timeout": 3,
    }


@pytest.mark.timeout(30)
async def test_a_failed_start_is_logged_on_one_line(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.json"
    config.write_bytes(
        orjson.dumps(
            [entry("failer", port, "/", FAILER), entry("silent", port, "/s", SILENT)]
        )
    )
    answers = {}

    async def fail_both() -> None:
        answers["failed"] = await request(port, "GET", "/")
        answers["timed out"] = await request(port, "GET", "/s")

    status, logged = await serve_then_stop(
        ["--config", str(config)], cwd=ROOT, meanwhile=fail_both
    )
    assert status == 0, logged
    failed, timed_out = answers["failed"], answers["timed out"]

    # The client reads the app's lines one below the other.
    assert failed.status == 502
    assert failed.json()["error"]["message"] == (
        "failer exited while starting (exit code 3). Last output:\nboom\nsecond line"
    )
    assert timed_out.status == 504
    assert timed_out.json()["error"]["message"].endswith(
        "(start_timeout). Last output:\n(nothing)"
    )

    lines = logged.splitlines()
    assert [line for line in lines if not RECORD_START.match(line)] == []
    errors = [line[len("00:00:00 ERROR   ") :] for line in lines if " ERROR " in line]
    assert errors == [
        "failer exited while starting (exit code 3). Last output: boom | second line",
        "silent was not ready after 3 s (start_timeout). Last output: (nothing)",
    ]
    # The line of the refused request names its status, without the output
    # that the error line before it holds already.
    refused = "WARNING 127.0.0.1 GET /: 502 failer exited while starting (exit code 3)."
    assert any(line.endswith(refused) for line in lines), lines


def test_an_error_reads_whole_in_its_answer_and_on_one_log_line() -> None:
    failed = BackendFailed("llm exited while starting.", last_output=["a", "b\rc"])
    assert failed.message == "llm exited while starting. Last output:\na\nb\rc"
    assert failed.log_text() == "llm exited while starting. Last output: a | b | c"
    silent = StartTimeout("llm was not ready.", last_output=[])
    assert silent.log_text() == "llm was not ready. Last output: (nothing)"


def test_the_formatter_keeps_a_record_on_one_line() -> None:
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "rph.app", logging.INFO, __file__, 1, "[%s] %s", ("app", "10%\r20%\n"), None
    )
    assert formatter.format(record) == "INFO [app] 10% | 20%"
