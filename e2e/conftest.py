"""The end-to-end setup: the provisioned backend and one RPH for the run.

The backend must have been provisioned (`python3 e2e/provision.py`, which
`make e2e` runs first); without it the run stops at once with one line
saying so, rather than skipping checks. RPH runs as a subprocess for the
whole session (see rph_process.py); at the end it gets a Ctrl-C and must
exit 0 having stopped every process it started.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path

import psutil
import pytest
from clients import port_accepts
from provision import default_cache
from rph_process import RunningRPH, launch

# Seconds for RPH to stop everything on Ctrl-C (a llama.cpp server stops in
# well under one; the apps' stop_timeout is 10 s).
EXITS_WITHIN = 30.0

# Marks of a fault in RPH's log: an ERROR line, a traceback, a Python
# warning (an unawaited coroutine, an unclosed socket).
TROUBLE = (" ERROR ", "Traceback (most recent call last)", "Warning: ")
APP_LINE = re.compile(r"\S+ \w+ +\[[^\]]+\] ")

# What test_latency.py measured, printed at the end of the run.
REPORT = pytest.StashKey[list[str]]()


def facts_file() -> Path:
    return default_cache() / "provisioned.json"


def pytest_sessionstart(session: pytest.Session) -> None:
    if not facts_file().is_file():
        pytest.exit(
            f"e2e: FAILED: {facts_file()} is missing: the llama.cpp backend is not"
            " provisioned (run `python3 e2e/provision.py`, as `make e2e` does)",
            returncode=1,
        )


@pytest.fixture(scope="session")
def server_argv() -> list[str]:
    """The provisioned llama.cpp server's command line, without --port."""
    argv = json.loads(facts_file().read_text())["server_argv"]
    # Without this the server prints ~290 lines about the model at start.
    return [str(part) for part in argv] + ["--verbose", "False"]


@pytest.fixture(scope="session")
def rph(
    server_argv: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningRPH]:
    running = launch(tmp_path_factory.mktemp("rph"), server_argv)
    try:
        assert running.process.poll() is None, f"RPH exited:\n{running.log_tail()}"
        yield running
    finally:
        stop(running)


def stop(running: RunningRPH) -> None:
    """Ctrl-C RPH; it must exit 0 with every process it started gone."""
    process = running.process
    if process.poll() is not None:
        pytest.fail(f"RPH exited early, status {process.returncode}")
    tree = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGINT)
    try:
        status = process.wait(EXITS_WITHIN)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"RPH did not stop on Ctrl-C:\n{running.log_tail()}")
    assert status == 0, running.log_tail()
    left = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left after RPH exited: {left}"
    assert not any(port_accepts(port) for port in running.backends.values())
    assert not trouble_in(running), "\n".join(trouble_in(running))


def trouble_in(running: RunningRPH) -> list[str]:
    """Lines of RPH's own log that show a fault: errors, tracebacks, warnings.

    The apps' output (`[name] ...`) is theirs, not RPH's, and is left out.
    """
    return [
        line
        for line in running.log_text().splitlines()
        if any(mark in line for mark in TROUBLE) and not APP_LINE.match(line)
    ]


@pytest.fixture
def report(request: pytest.FixtureRequest) -> list[str]:
    """Lines for the report printed at the end of the run."""
    return request.config.stash.setdefault(REPORT, [])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed check shows the end of RPH's log next to its traceback."""
    report = yield
    running = getattr(item, "funcargs", {}).get("rph")
    if report.failed and isinstance(running, RunningRPH):
        report.sections.append(("RPH log, last lines", running.log_tail()))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(REPORT, [])
    if lines:
        terminalreporter.section("time to first token, through RPH and direct")
        for line in lines:
            terminalreporter.write_line(line)
