"""The record of what RPH started, so that no tree outlives a killed RPH.

On Linux a child dies with RPH, but its own children do not, and macOS and
Windows have no such signal at all. So RPH writes down every child it
starts (pid, creation time, command line) in a state file, one per config
file, and forgets it once its tree is gone. An RPH that starts and finds
entries whose owner is dead ends those trees before it serves anything. The
creation time tells a leftover from an unrelated process that was given a
recycled pid: that one is left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import psutil
import trio

from rph.proc import platform
from rph.redact import mask_cmdline

log = logging.getLogger("rph.proc")

# A leftover's command line is logged up to this long: enough to recognise
# the program, short enough for one log line.
LOGGED_COMMAND_CHARS = 200

# Leftovers are killed outright (their owner is gone, nobody waits for a
# polite stop); the kernel still needs a moment to free a large process.
LEFTOVER_KILL_WAIT = 10.0


class AlreadyRunning(Exception):
    """Another live RPH owns this config: two would fight over its apps."""


class Ledger:
    """The state file of one config: who owns it and which children live."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._children: dict[int, dict[str, object]] = {}

    @classmethod
    def for_config(cls, config_path: Path, folder: Path | None = None) -> Ledger:
        """The ledger of `config_path`, kept in the user's state folder."""
        digest = hashlib.sha256(str(config_path.resolve()).encode()).hexdigest()
        folder = folder or platform.state_folder()
        return cls(folder / f"children-{digest[:16]}.json")

    def record(self, pid: int, created: float, argv: Sequence[str]) -> None:
        # The command is kept for the log line only, so with its secrets
        # masked: the file must not hold an API key in clear.
        command = mask_cmdline(argv)
        self._children[pid] = {"pid": pid, "create_time": created, "command": command}
        self._write()

    def forget(self, pid: int) -> None:
        if self._children.pop(pid, None) is not None:
            self._write()

    async def end_leftovers(self) -> int:
        """End the trees a killed predecessor left; returns how many.

        Raises AlreadyRunning when another live RPH owns this config.
        """
        recorded = self._read()
        owner = recorded.get("owner") or {}
        if _is_running(owner) and owner.get("pid") != os.getpid():
            raise AlreadyRunning(
                f"another RPH (pid {owner['pid']}) is running with this config"
            )

        trees: list[psutil.Process] = []
        for entry in recorded.get("children") or []:
            pid, created = int(entry["pid"]), float(entry["create_time"])
            members = platform.tree_members(pid, created)
            if members:
                log.warning(
                    "ending %d leftover process(es) of %s (pid %d), started by"
                    " an RPH that was killed",
                    len(members),
                    str(entry.get("command", "?"))[:LOGGED_COMMAND_CHARS],
                    pid,
                )
            trees.extend(members)
        platform.kill_all(trees)
        with trio.move_on_after(LEFTOVER_KILL_WAIT):
            while any(platform.is_alive(p) for p in trees):  # noqa: ASYNC110
                await trio.sleep(platform.EXIT_POLL_INTERVAL)
        self._children.clear()
        self._write()
        return len(trees)

    def close(self) -> None:
        """Remove the file: a clean exit leaves nothing behind."""
        if not self._children:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _read(self) -> dict[str, Any]:
        try:
            data = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self) -> None:
        me = {"pid": os.getpid(), "create_time": platform.create_time(os.getpid())}
        data = {"owner": me, "children": list(self._children.values())}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            scratch = self.path.with_suffix(".tmp")
            scratch.write_bytes(orjson.dumps(data))
            os.replace(scratch, self.path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)


def _is_running(entry: dict[str, Any]) -> bool:
    """True if the process `entry` names runs: the same pid and start time,
    and not a zombie (an RPH killed outright whose parent has not reaped it
    yet is gone all the same, and so may have left children)."""
    pid, created = entry.get("pid"), entry.get("create_time")
    if not isinstance(pid, int) or not isinstance(created, float | int):
        return False
    try:
        process = psutil.Process(pid)
        same = abs(process.create_time() - created) < platform.CREATE_TIME_SLACK
    except psutil.Error:
        return False
    return same and platform.is_alive(process)
