"""One child process tree: spawn it, pump its output, stop all of it.

A `Child` is spawned in a process group of its own. A task pumps its merged
stdout and stderr line by line into the log (prefixed with the app's name)
and keeps the last lines for error messages and status. `stop` is polite
first and firm after a grace period, and returns only when every process of
the tree has exited: only then is the GPU memory free again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil
import trio

from rph.proc import platform
from rph.proc.leftovers import Ledger

log = logging.getLogger("rph.proc")
app_log = logging.getLogger("rph.app")

# Enough lines to show why a model failed to load, few enough for a reply.
LAST_LINES_KEPT = 20

# A line longer than this is cut: a child printing a progress bar without
# newlines must not make RPH hold its whole output.
LONGEST_LINE = 4096

# After SIGKILL the kernel needs a moment to tear a large process down
# (unmapping many GiB of memory takes a while); past this, RPH reports the
# leftovers instead of waiting forever.
KILL_WAIT = 10.0

# Output a child has printed by the time it exits is read within this long
# (a grandchild may hold the pipe open forever).
OUTPUT_DRAIN_WAIT = 0.2


class Child:
    """A running child process tree and what it printed."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        ledger: Ledger | None = None,
    ) -> None:
        self.name = name
        self.argv = tuple(argv)
        self._popen = platform.spawn(argv, cwd, env)
        self.pid = self._popen.pid
        self.create_time = platform.create_time(self.pid)
        self.started_at = trio.current_time()
        self.started_wall = time.time()
        self.returncode: int | None = None
        self.exited = trio.Event()
        self.last_lines: deque[str] = deque(maxlen=LAST_LINES_KEPT)
        self._output_done = trio.Event()
        self._stopping = False
        self._stopped = trio.Event()
        self._ledger = ledger
        if ledger:
            ledger.record(self.pid, self.create_time, self.argv)

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exit {self.returncode}"
        return f"<Child {self.name} pid={self.pid} {state}>"

    @property
    def stopped(self) -> bool:
        """True once a stop has finished: no process of the tree is left."""
        return self._stopped.is_set()

    @property
    def stopping(self) -> bool:
        """True once RPH itself asked this child to stop."""
        return self._stopping

    async def watch(self) -> None:
        """Pump output and wait for the exit; returns once the child exited."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_output)
            self.returncode = await platform.wait_exit(self._popen)
            with trio.move_on_after(OUTPUT_DRAIN_WAIT):
                await self._output_done.wait()
            self.exited.set()
            nursery.cancel_scope.cancel()

    def has_member(self, pid: int) -> bool:
        """True if `pid` is a live process of this tree."""
        return any(proc.pid == pid for proc in self._tree())

    async def stop(self, grace: float) -> None:
        """Stop the whole tree: polite signal, `grace` seconds, then kill.

        Returns when no process of the tree is left. Safe to call on a child
        that already exited: the descendants it left behind are still ended.
        A second caller waits for the first one's stop.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            await self._stop_tree(grace)
        finally:
            self._stopped.set()

    async def _stop_tree(self, grace: float) -> None:
        members = self._tree()
        if self.returncode is None:
            platform.ask_to_stop(self._popen)
            platform.terminate_all([p for p in members if p.pid != self.pid])
            with trio.move_on_after(grace):
                await self._wait_gone(members)

        # Whatever survived the grace period, or was left behind by a child
        # that exited by itself, is killed. The tree is searched again: it
        # may have forked meanwhile.
        leftover = {p.pid: p for p in members if platform.is_alive(p)}
        leftover.update((p.pid, p) for p in self._tree())
        if leftover:
            log.warning(
                "%s: killing %d process(es) still running", self.name, len(leftover)
            )
            platform.kill_group(self.pid)
            platform.kill_all(list(leftover.values()))
        with trio.move_on_after(KILL_WAIT):
            await self._wait_gone(list(leftover.values()))
        survivors = [pid for pid, p in leftover.items() if platform.is_alive(p)]
        if survivors:
            log.error("%s: processes %s survived SIGKILL", self.name, survivors)
        elif self._ledger:
            self._ledger.forget(self.pid)

    def _tree(self) -> list[psutil.Process]:
        return platform.tree_members(self.pid, self.create_time)

    async def _wait_gone(self, members: Sequence[psutil.Process]) -> None:
        # Grandchildren send no exit notification to RPH: they are polled.
        while any(platform.is_alive(p) for p in members):  # noqa: ASYNC110
            await trio.sleep(platform.EXIT_POLL_INTERVAL)
        # Reap the child here too: its watcher may have been cancelled.
        if self.returncode is None:
            self.returncode = self._popen.poll()

    async def _pump_output(self) -> None:
        pending = b""
        try:
            async for chunk in platform.read_output(self._popen):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._keep_line(line)
                if len(pending) > LONGEST_LINE:
                    self._keep_line(pending)
                    pending = b""
        finally:
            if pending:
                self._keep_line(pending)
            self._output_done.set()

    def _keep_line(self, raw: bytes) -> None:
        line = raw[:LONGEST_LINE].decode(errors="replace").rstrip("\r")
        self.last_lines.append(line)
        app_log.info("[%s] %s", self.name, line)
