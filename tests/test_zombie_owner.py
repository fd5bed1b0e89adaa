"""An RPH killed outright and not yet reaped is not a running RPH.

After `kill -9`, RPH stays a zombie until its parent (a shell, a service
manager) collects its exit status. An RPH started in that moment on the
same config must not refuse with "another RPH is running": the zombie
holds no port and no child, and the trees it left must be ended.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import orjson
import psutil
import pytest
import trio
from support import python_program

from rph.proc import platform
from rph.proc.leftovers import Ledger

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="a zombie is a POSIX process state"
)


def become_zombie(pid: int) -> None:
    """Wait for `pid` to exit, leaving it unreaped: a zombie."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


@pytest.mark.timeout(20)
async def test_a_zombie_owner_is_gone_and_its_leftovers_are_ended(
    tmp_path: Path,
) -> None:
    owner = await trio.lowlevel.open_process(python_program("pass"))
    # A child of the killed RPH, in a session of its own as RPH starts them.
    leftover = await trio.lowlevel.open_process(
        python_program("import time; time.sleep(60)"), start_new_session=True
    )
    try:
        await trio.to_thread.run_sync(become_zombie, owner.pid)
        assert psutil.Process(owner.pid).status() == psutil.STATUS_ZOMBIE

        # The state file as the killed RPH wrote it (Ledger._write).
        ledger = Ledger(tmp_path / "children.json")
        entry = {"pid": leftover.pid, "create_time": platform.create_time(leftover.pid)}
        killed = {"pid": owner.pid, "create_time": platform.create_time(owner.pid)}
        ledger.path.write_bytes(
            orjson.dumps(
                {"owner": killed, "children": [{**entry, "command": "llm-server"}]}
            )
        )

        assert await ledger.end_leftovers() == 1
        assert await leftover.wait() == -signal.SIGKILL
    finally:
        for process in (owner, leftover):
            if process.returncode is None:
                process.kill()
            await process.wait()
