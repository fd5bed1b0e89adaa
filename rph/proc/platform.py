"""What differs between Linux, macOS and Windows when RPH holds a process tree.

RPH starts every child in a process group of its own, so that one polite
signal reaches the whole tree, and finds the tree again with psutil when it
must be killed. Everything that depends on the operating system lives here:
how a child is spawned, how it is asked to stop, how its exit is awaited and
how its output is read. The rest of `proc/` is written against these
functions only.

If RPH is killed outright: on Linux each child gets SIGKILL from the kernel
(`PR_SET_PDEATHSIG`), on Windows every process of every tree dies with the
Job Object RPH holds, and on macOS nothing happens at once; on every
platform the next RPH ends what is left (`leftovers`). Windows-only code is
written under `sys.platform == "win32"`, so that mypy checks it for that
platform and skips it for the others.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import cast

import psutil
import trio

# Linux: prctl(PR_SET_PDEATHSIG) makes the kernel signal a child when the
# *thread* that forked it exits. RPH therefore spawns from the trio thread,
# which lives exactly as long as RPH, never from a worker thread.
_PR_SET_PDEATHSIG = 1

# How often exits are polled where no exit notification exists (macOS,
# Windows, and the grandchildren of a tree on every platform).
EXIT_POLL_INTERVAL = 0.02

# psutil reports creation times rounded to the clock tick of the platform.
CREATE_TIME_SLACK = 0.05

# Output is read in pieces of this size; lines are split by the caller.
_READ_SIZE = 65536


if sys.platform == "linux":
    # Looked up once, here: between fork and exec the child must not load
    # libraries or import modules, since another thread of RPH may have
    # held a lock at the moment of the fork.
    _prctl = ctypes.CDLL(None, use_errno=True).prctl

    def _arm_parent_death_signal(parent: int) -> None:
        """Runs in the forked child before exec: die with RPH."""
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # RPH may have died between the fork and the prctl: then nobody
        # would ever send the signal.
        if os.getppid() != parent:
            os._exit(1)


def spawn(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start `argv` as the leader of a new process group, output piped.

    Must be called from the trio thread (see `_arm_parent_death_signal`).
    stderr is merged into stdout so that one pump keeps the lines in order.
    Raises OSError when the program cannot be started.
    """
    # Python programs (KoboldCpp among them) buffer what they print when it
    # goes to a pipe; unbuffered, their lines reach the log as they happen.
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    if sys.platform == "win32":
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            creationflags=subprocess.CREATE_NEW_PROCESS_GROUP,
        )
        _windows_job.assign(popen)
        return popen
    arm: Callable[[], None] | None = None
    if sys.platform == "linux":
        arm = functools.partial(_arm_parent_death_signal, os.getpid())
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=arm,
    )


def ask_to_stop(popen: subprocess.Popen[bytes]) -> None:
    """Send the polite stop to the child's whole process group."""
    with contextlib.suppress(OSError):
        if sys.platform == "win32":
            # Delivered to every console process of the child's group.
            popen.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            os.killpg(popen.pid, signal.SIGTERM)


def kill_group(pid: int) -> None:
    """Kill what is left of the process group led by `pid` (POSIX)."""
    if sys.platform != "win32":
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def create_time(pid: int) -> float:
    """When `pid` started; with the pid it names one process for good."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def tree_members(pid: int, started: float) -> list[psutil.Process]:
    """Every live process of the tree rooted at `pid`, the root included.

    `started` is the root's creation time: a recycled pid belongs to a
    stranger, whose tree is not ours. Descendants are found by parentage
    and, on POSIX, also by session: a grandchild whose parent already
    exited is re-parented to init and only its session still says where it
    came from. (While any process of that session lives, the kernel does
    not hand its id out again as a pid.)
    """
    members: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(pid)
        if abs(root.create_time() - started) >= CREATE_TIME_SLACK:
            return []  # the pid now names a stranger, and so may its session
        members[root.pid] = root
        for child in root.children(recursive=True):
            members[child.pid] = child
    except psutil.Error:
        pass  # the root has gone; its session may not have
    if sys.platform != "win32":
        for proc in psutil.process_iter():
            with contextlib.suppress(OSError):
                if proc.pid not in members and os.getsid(proc.pid) == pid:
                    members[proc.pid] = proc
    return [proc for proc in members.values() if is_alive(proc)]


def is_alive(proc: psutil.Process) -> bool:
    """True while `proc` runs; a zombie has let go of its memory already."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_all(procs: Sequence[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def terminate_all(procs: Sequence[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()


async def wait_exit(popen: subprocess.Popen[bytes]) -> int:
    """Wait until the child exits, reap it and return its exit code."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(popen.pid)
            try:
                await trio.lowlevel.wait_readable(pidfd)
            finally:
                os.close(pidfd)
    while popen.poll() is None:  # noqa: ASYNC110 - no exit notification here
        await trio.sleep(EXIT_POLL_INTERVAL)
    return popen.returncode


async def read_output(popen: subprocess.Popen[bytes]) -> AsyncIterator[bytes]:
    """Yield the child's output as it comes, until every writer closed it."""
    assert popen.stdout is not None
    if sys.platform == "win32":
        # Windows pipes cannot be waited on by trio: a thread reads, and the
        # read is abandoned when the pump is cancelled (a grandchild may
        # hold the pipe open after the child exited).
        pipe = cast(io.BufferedReader, popen.stdout)
        while chunk := await trio.to_thread.run_sync(
            pipe.read1, _READ_SIZE, abandon_on_cancel=True
        ):
            yield chunk
        return
    stream = trio.lowlevel.FdStream(os.dup(popen.stdout.fileno()))
    popen.stdout.close()
    async with stream:
        while chunk := await stream.receive_some(_READ_SIZE):
            yield chunk


def state_folder() -> Path:
    """Where RPH keeps the record of what it started."""
    import platformdirs

    return Path(platformdirs.user_state_dir("rph", appauthor=False))


if sys.platform == "win32":
    from ctypes import wintypes

    # From winnt.h: the information class and limit flag that make a job
    # kill its processes when its last handle closes.
    _EXTENDED_LIMIT_INFORMATION = 9
    _KILL_ON_JOB_CLOSE = 0x2000

    class _BasicLimits(ctypes.Structure):
        _fields_ = [
            ("PerProcessUserTimeLimit", ctypes.c_int64),
            ("PerJobUserTimeLimit", ctypes.c_int64),
            ("LimitFlags", wintypes.DWORD),
            ("MinimumWorkingSetSize", ctypes.c_size_t),
            ("MaximumWorkingSetSize", ctypes.c_size_t),
            ("ActiveProcessLimit", wintypes.DWORD),
            ("Affinity", ctypes.c_size_t),
            ("PriorityClass", wintypes.DWORD),
            ("SchedulingClass", wintypes.DWORD),
        ]

    class _ExtendedLimits(ctypes.Structure):
        _fields_ = [
            ("BasicLimitInformation", _BasicLimits),
            ("IoInfo", ctypes.c_uint64 * 6),
            ("ProcessMemoryLimit", ctypes.c_size_t),
            ("JobMemoryLimit", ctypes.c_size_t),
            ("PeakProcessMemoryUsed", ctypes.c_size_t),
            ("PeakJobMemoryUsed", ctypes.c_size_t),
        ]

    class _WindowsJob:
        """A Job Object with kill-on-close: the children die when RPH does.

        Windows has no parent-death signal; a job whose last handle closes
        (RPH exiting in any way) terminates every process assigned to it,
        and the processes they start belong to it too. Best effort: where
        a job cannot be made, the state file still ends the leftovers.
        """

        def __init__(self) -> None:
            self._handle: int | None = None
            kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
            # Handles are pointer-sized: ctypes must not pass them as C ints.
            kernel32.CreateJobObjectW.restype = wintypes.HANDLE
            kernel32.CreateJobObjectW.argtypes = [ctypes.c_void_p, wintypes.LPCWSTR]
            kernel32.SetInformationJobObject.argtypes = [
                wintypes.HANDLE,
                ctypes.c_int,
                ctypes.c_void_p,
                wintypes.DWORD,
            ]
            kernel32.AssignProcessToJobObject.argtypes = [
                wintypes.HANDLE,
                wintypes.HANDLE,
            ]
            self._kernel32 = kernel32

        def assign(self, popen: subprocess.Popen[bytes]) -> None:
            if self._handle is None:
                self._handle = self._create()
            if self._handle:
                process = int(popen._handle)  # type: ignore[attr-defined]
                self._kernel32.AssignProcessToJobObject(self._handle, process)

        def _create(self) -> int:
            handle: int = self._kernel32.CreateJobObjectW(None, None) or 0
            limits = _ExtendedLimits()
            limits.BasicLimitInformation.LimitFlags = _KILL_ON_JOB_CLOSE
            self._kernel32.SetInformationJobObject(
                handle,
                _EXTENDED_LIMIT_INFORMATION,
                ctypes.byref(limits),
                ctypes.sizeof(limits),
            )
            return handle

    _windows_job = _WindowsJob()
