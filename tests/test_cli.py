"""`python -m rph` as a person runs it: real processes, real ports.

Checking a config, finding it, refusing a port someone else holds, and the
`status` command that prints what a running RPH is doing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from support import (
    ROOT,
    app,
    free_port,
    pausable,
    python_program,
    request,
    running_rph,
    serve_then_stop,
    standin,
)

from rph.statustext import duration, render

PYTHON = sys.executable
LINUX = sys.platform == "linux"

# A command that only checks, or one that fails at once, ends this fast.
QUICK = 20.0


def entry(name: str, port: int, **keys: Any) -> dict[str, Any]:
    """A config file entry whose program exists on every machine."""
    backend = free_port()
    return {
        "type": "ondemand",
        "name": name,
        "cmdline": list(standin(backend)),
        "endpoint": f"http://127.0.0.1:{backend}",
        "port": port,
        **keys,
    }


def write_config(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(entries, option=orjson.OPT_INDENT_2))
    return path


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose user config folder is an empty one of the test's."""
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "user-config")
    env["XDG_STATE_HOME"] = str(tmp_path / "user-state")
    return env


async def run_rph(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m rph ARGS` to its end; its output is captured."""
    with trio.fail_after(QUICK):
        return await trio.run_process(
            [PYTHON, "-m", "rph", *args],
            cwd=cwd,
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


# --check


async def test_check_prints_one_line_per_app_and_exits_0(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(
        tmp_path / "config.json",
        [
            entry("chat", port, timeout=10, passive_paths=["/api/extra/abort"]),
            entry("summarizer", port, body_regex="summarize", conflicts_with=["chat"]),
            {"type": "pausable", "name": "training", "cmdline": [PYTHON, "-V"]},
        ],
    )
    done = await run_rph("--check", "--config", str(path))

    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0] == f"{path}: OK, 2 on-demand app(s), 1 pausable(s)"
    chat, summarizer, training = lines[1:]
    assert chat.startswith(f"  chat: http://127.0.0.1:{port}/ -> http://127.0.0.1:")
    assert "idle stop after 10 min" in chat
    assert "passive /api/extra/abort" in chat
    assert "when the body matches 'summarize'" in summarizer
    assert "conflicts with chat" in summarizer
    assert "never idle-stopped" in summarizer
    assert training.startswith("  training: pausable")


async def test_check_notes_a_path_whose_patterns_hide_a_shorter_path(
    tmp_path: Path,
) -> None:
    port = free_port()
    path = write_config(
        tmp_path / "config.json",
        [
            entry("a", port, body_regex='"model": "a"'),
            entry("b", port, path="/v1", body_regex='"model": "b"'),
            entry("c", port, path="/api", body_regex="c"),
            entry("api", port, path="/api"),
        ],
    )
    done = await run_rph("--check", "--config", str(path))

    # Still a good config: the note is for the reader, not a refusal.
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stdout.decode().splitlines() if "note:" in line]
    assert notes == [
        f"  note: port {port}: a request under /v1 that no body_regex of b"
        " matches gets 404; the apps of / are not tried"
    ]


async def test_check_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "config.json",
        [
            entry("chat", free_port(), conflict_with=[]),
            entry("coder", free_port(), timeout="ten", workdir="no-such-folder"),
        ],
    )
    done = await run_rph("--check", "--config", str(path))

    assert done.returncode == 2
    assert done.stdout == b""
    problems = done.stderr.decode().splitlines()
    assert problems == [
        f'{path}: entry "chat" (#1): key "conflict_with": unknown key; did you mean'
        ' "conflicts_with"?',
        f'{path}: entry "coder" (#2): key "timeout": expected a number of minutes,'
        ' 0 or more, found "ten"',
        f'{path}: entry "coder" (#2): key "workdir": folder'
        f' "{tmp_path / "no-such-folder"}" does not exist',
    ]


# Which config is loaded


@pytest.mark.skipif(not LINUX, reason="XDG_CONFIG_HOME is Linux's user folder")
async def test_no_config_at_all_explains_how_to_make_one(
    tmp_path: Path, home: dict[str, str]
) -> None:
    done = await run_rph(cwd=tmp_path, env=home)

    assert done.returncode == 2
    (line,) = done.stderr.decode().splitlines()
    assert str(tmp_path / "config.json") in line
    assert str(tmp_path / "user-config" / "rph" / "config.json") in line
    assert f"cp {ROOT / 'config.example.json'} config.json" in line


async def test_a_missing_config_given_explains_how_to_make_it(tmp_path: Path) -> None:
    done = await run_rph("--config", "mine.json", cwd=tmp_path)

    assert done.returncode == 2
    assert done.stderr.decode().strip() == (
        "mine.json: no such config file; make one from the example:"
        f" cp {ROOT / 'config.example.json'} mine.json, then edit each cmdline"
    )


@pytest.mark.skipif(not LINUX, reason="XDG_CONFIG_HOME is Linux's user folder")
@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["current folder", "user config folder"])
async def test_the_log_says_which_config_was_loaded(
    tmp_path: Path, home: dict[str, str], where: str
) -> None:
    folder = tmp_path if where == "current folder" else tmp_path / "user-config/rph"
    port = free_port()
    path = write_config(folder / "config.json", [entry("chat", port)])

    status, logged = await serve_then_stop([], cwd=tmp_path, env=home)

    assert status == 0, logged
    assert f"config {path}\n" in logged
    assert f"listening on http://127.0.0.1:{port} for chat" in logged


@pytest.mark.skipif(os.name == "nt", reason="SIGINT to a child process")
@pytest.mark.timeout(30)
@pytest.mark.parametrize("quiet", [False, True], ids=["loud", "quiet"])
async def test_quiet_apps_hides_the_apps_output_only(
    tmp_path: Path, home: dict[str, str], quiet: bool
) -> None:
    port = free_port()
    path = write_config(tmp_path / "config.json", [entry("chat", port)])
    args = ["--config", str(path), *(["--quiet-apps"] if quiet else [])]

    async def complete() -> None:
        answer = await request(port, "POST", "/v1/completions", b"{}")
        assert answer.status == 200

    status, logged = await serve_then_stop(
        args, cwd=tmp_path, env=home, meanwhile=complete
    )

    assert status == 0, logged
    assert "starting chat: " in logged
    assert "chat ready after " in logged
    assert "stopping chat (shutdown)" in logged
    assert ("[chat] listening on" in logged) is not quiet


# A port someone else holds


@pytest.mark.parametrize("check", [False, True], ids=["start", "--check"])
async def test_a_taken_port_is_named_with_its_holder(
    tmp_path: Path, home: dict[str, str], check: bool
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = write_config(tmp_path / "config.json", [entry("chat", port)])
        done = await run_rph(*(["--check"] if check else []), "--config", str(path))

    assert done.returncode == 1
    assert b"Traceback" not in done.stderr
    assert b"OK" not in done.stdout  # a check that fails says nothing is fine
    (line,) = [
        line for line in done.stderr.decode().splitlines() if "cannot listen" in line
    ]
    assert f"cannot listen on http://127.0.0.1:{port} ({path}): the port is" in line
    # Listing other programs' sockets may need privileges outside Linux.
    holder_name = f"pid {os.getpid()} (" if LINUX else "by "
    assert f"already in use by {holder_name}" in line
    assert line.endswith(f"move the entries of port {port} to another port")


# status


@pytest.mark.timeout(30)
async def test_status_prints_a_table(tmp_path: Path) -> None:
    apps = [app("chat"), app("coder", body_regex="code")]
    miner = pausable("miner", python_program("import time; time.sleep(60)"))
    async with running_rph(apps, [miner]) as rph:
        assert (await request(rph.port, "GET", "/v1/models")).status == 200
        done = await run_rph("status", "--port", str(rph.port), cwd=tmp_path)
        child = rph.supervisor.apps["chat"].child
        assert child is not None
        pid = child.pid

    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert text.startswith("coordinator: on\n")
    header, chat, coder = text.split("\n\n")[1].splitlines()
    pausables_header, paused = text.split("\n\n")[2].splitlines()
    assert pausables_header.split()[:2] == ["PAUSABLE", "STATE"]
    assert paused.split()[:3] == ["miner", "stopped", "-"]
    assert header.split()[:3] == ["APP", "STATE", "PID"]
    assert chat.split()[:3] == ["chat", "ready", str(pid)]
    assert coder.split()[:3] == ["coder", "stopped", "-"]
    # Columns line up: each value starts where its heading does.
    for heading in ("STATE", "PID", "UP", "IN FLIGHT", "STARTS"):
        column = header.index(heading)
        assert chat[column - 1 : column + 1].startswith(" "), heading
        assert chat[column] != " ", heading
    # The app's name once, then the line as the program printed it.
    backend = rph.supervisor.apps["chat"].config.endpoint
    assert f"\n  chat: listening on {backend}\n" in text


@pytest.mark.timeout(30)
async def test_status_finds_the_port_in_the_config(tmp_path: Path) -> None:
    async with running_rph([app("chat")]) as rph:
        # A port open on every address is asked on the loopback one.
        first = entry("chat", rph.port, host="0.0.0.0")
        second = entry("coder", free_port())
        write_config(tmp_path / "config.json", [first, second])
        done = await run_rph("status", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "chat  " in done.stdout.decode()


async def test_status_says_when_rphis_not_running(tmp_path: Path) -> None:
    port = free_port()
    done = await run_rph("status", "--port", str(port), cwd=tmp_path)

    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.decode() == (
        f"rph status: nothing listens on http://127.0.0.1:{port}; RPH is not"
        " running there (start it with: python -m rph --config FILE)\n"
    )


@pytest.mark.timeout(30)
async def test_status_as_text_json_or_refused() -> None:
    async with running_rph([app("chat")]) as rph:
        text = await request(rph.port, "GET", "/rph/status?format=text")
        json = await request(rph.port, "GET", "/rph/status")
        unknown = await request(rph.port, "GET", "/rph/status?format=xml")

    assert text.status == 200
    assert text.header(b"content-type") == b"text/plain; charset=utf-8"
    assert text.body.decode() == render(json.json())
    assert json.header(b"content-type") == b"application/json"
    assert unknown.status == 400
    assert "format=xml" in unknown.json()["error"]["message"]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (0.04, "0.0s"), (4.25, "4.2s"), (185, "3m05s"), (7625, "2h07m")],
)
def test_durations_read_at_a_glance(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown
